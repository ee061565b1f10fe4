"""Bench-only URLconf: the product's routes plus one floor endpoint, `/api/bench-floor`.

Mounted only by bench/bench_orders.py's server process (it sets ROOT_URLCONF to this module); never part of the
product's routes. The floor does what every API request must do, and nothing more: the same middleware, the same
JWT authentication (token check, user row, revocation lookup) and role check as POST /api/orders, the JSON body
parsed, then one INSERT (POST) or one indexed SELECT (GET) in the `bench_floor` table the bench creates.
"""

import json

from django.db import connection
from django.urls import path
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from algoterm import urls as product_urls
from algoterm.api.permissions import IsTrader

FLOOR_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS bench_floor (
    id bigserial PRIMARY KEY,
    user_id varchar(40) NOT NULL,
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS bench_floor_user ON bench_floor (user_id, id);
"""


class FloorApi(APIView):
    """Authentication classes are the REST default, as for every product route."""

    def get_permissions(self):
        if self.request.method == "POST":
            return [IsAuthenticated(), IsTrader()]
        return [IsAuthenticated()]

    def get(self, request: Request) -> Response:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, created_at FROM bench_floor WHERE user_id = %s ORDER BY id DESC LIMIT 1", [request.user.pk]
            )
            row = cursor.fetchone()
        return Response({"id": row[0] if row else None, "created_at": row[1] if row else None})

    def post(self, request: Request) -> Response:
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO bench_floor (user_id, body) VALUES (%s, %s::jsonb) RETURNING id, created_at",
                [request.user.pk, json.dumps(request.data)],
            )
            row = cursor.fetchone()
        return Response({"id": row[0], "created_at": row[1]}, status=status.HTTP_201_CREATED)


urlpatterns = [path("api/bench-floor", FloorApi.as_view(), name="bench-floor"), *product_urls.urlpatterns]

handler400 = product_urls.handler400
handler403 = product_urls.handler403
handler404 = product_urls.handler404
handler500 = product_urls.handler500
