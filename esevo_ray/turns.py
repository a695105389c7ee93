"""Fitting a dialogue context into a token budget: one rule for every stage.

Generation (P_task and the refinement request), training (prompt + answer within
max_length) and the local judge all drop the oldest turns first, a whole exchange at a time,
and always keep the last turn, so every stage sees the same recent part of a dialogue.
"""

from __future__ import annotations

from collections.abc import Callable


def fit_turns(turns: list[dict], fits: Callable[[list[dict]], bool]) -> tuple[list[dict], bool]:
    """The longest recent part of `turns` for which `fits` holds, and whether it does.

    Turns are dropped from the front two at a time (one seeker/supporter exchange), one at
    a time when only two are left; the last turn always stays, even when it alone does not
    fit (False: the caller decides what to do then). `fits` is called once per length tried.
    """
    start = 0
    while start < len(turns) - 1:
        if fits(turns[start:]):
            return turns[start:], True
        start += 2 if start + 2 < len(turns) else 1
    return turns[start:], fits(turns[start:])


def drop_oldest_turns(turns: list[dict], fits: Callable[[list[dict]], bool]) -> list[dict]:
    """`fit_turns`, without whether the last turn alone fits."""
    return fit_turns(turns, fits)[0]
