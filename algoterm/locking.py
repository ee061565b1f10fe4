"""Row locks, one way for every app.

Every lock is `SELECT ... FOR UPDATE OF <the model's own table>`: a query that joins a related row (an order's user,
a position's account) never locks that row by accident, and several rows are locked in primary-key order so two
transactions locking the same set cannot deadlock. Each app's services lock through these helpers (usually through
a small named wrapper of their own, such as `order_lock`).
"""

from __future__ import annotations

from typing import TypeVar

from django.db import models

ModelT = TypeVar("ModelT", bound=models.Model)


def rows_locked(queryset: models.QuerySet[ModelT], *, nowait: bool = False, skip_locked: bool = False):
    """The queryset's rows locked FOR UPDATE of their own table only, in primary-key order.

    Must run inside a transaction (`transaction.atomic`), like any `select_for_update`.
    """
    return queryset.select_for_update(of=("self",), nowait=nowait, skip_locked=skip_locked).order_by("pk")


def row_locked(queryset: models.QuerySet[ModelT], **lookup) -> ModelT:
    """One row, re-read and locked FOR UPDATE of its own table. Raises the model's DoesNotExist."""
    return queryset.select_for_update(of=("self",)).get(**lookup)
