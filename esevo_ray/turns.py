"""Fitting a dialogue context into a token budget: one rule for every stage.

Generation (P_task and the refinement request), training (prompt + answer within
max_length) and the local judge all drop the oldest turns first, a whole exchange at a time,
and always keep the last turn, so every stage sees the same recent part of a dialogue.
"""

from __future__ import annotations

from collections.abc import Callable


def drop_oldest_turns(turns: list[dict], fits: Callable[[list[dict]], bool]) -> list[dict]:
    """The longest recent part of `turns` for which `fits` holds.

    Turns are dropped from the front two at a time (one seeker/supporter exchange), one at
    a time when only two are left; the last turn always stays, even when it alone does not
    fit (the caller decides what to do then).
    """
    start = 0
    while start < len(turns) - 1 and not fits(turns[start:]):
        start += 2 if start + 2 < len(turns) else 1
    return turns[start:]
