import time

import pytest

from algoterm import ids


def test_ids_have_prefix_and_opaque_fixed_length_body():
    value = ids.new_id("ord")
    assert value.startswith("ord_") and len(value) == 4 + ids.BODY_LENGTH
    assert ids.is_valid(value, "ord") and not ids.is_valid(value, "usr")


def test_unknown_prefix_is_refused():
    with pytest.raises(ValueError):
        ids.new_id("xyz")


def test_ids_are_unique_and_not_sequential():
    values = [ids.new_id("trd") for _ in range(50_000)]
    assert len(set(values)) == len(values)
    bodies = [int(value[4:], 36) for value in values[:1000]]
    steps = {b - a for a, b in zip(bodies, bodies[1:])}
    assert len(steps) > 990  # no constant increment to guess the next id from


def test_later_ids_sort_later():
    earlier = ids.new_id("ord")
    time.sleep(0.005)
    assert ids.new_id("ord") > earlier


def test_compact_form_fits_a_kite_tag_and_round_trips():
    value = ids.new_id("ord")
    compact = ids.to_compact(value)
    assert len(compact) == 20 and compact.isalnum()
    assert ids.from_compact(compact) == value
    assert ids.from_compact("not-an-id") is None
