"""`iters.mapped`: the items mapped (None dropped), the return value passed on, and a stop passed to
the generator doing the work, as `yield from` would (an export's GGUF writer closes its file so)."""

from __future__ import annotations

import pytest

from dpo_engine.iters import drain, mapped


def _counting(n: int, log: list):
    try:
        for i in range(n):
            yield i
        return "done"
    except GeneratorExit:
        log.append("closed")
        raise
    except KeyError:
        log.append("thrown")
        raise


def test_items_are_mapped_none_dropped_and_the_return_value_passed_on():
    seen = []
    assert drain(mapped(_counting(5, []), lambda i: None if i % 2 else i * 10), seen.append) == "done"
    assert seen == [0, 20, 40]


def test_closing_or_throwing_into_the_mapped_generator_stops_the_inner_one():
    log = []
    outer = mapped(_counting(5, log), lambda i: i)
    assert next(outer) == 0
    outer.close()
    assert log == ["closed"]
    outer = mapped(_counting(5, log), lambda i: i)
    next(outer)
    with pytest.raises(KeyError):
        outer.throw(KeyError("stop"))
    assert log == ["closed", "closed"]  # the inner generator is closed, whatever was thrown
