"""The one context-budget rule: drop whole exchanges from the front, keep the last turn."""

from esevo_ray.turns import drop_oldest_turns


def _turns(n):
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": str(i)} for i in range(n)]


def test_drops_whole_exchanges_until_it_fits():
    turns = _turns(7)
    kept = drop_oldest_turns(turns, lambda t: len(t) <= 4)
    assert [m["content"] for m in kept] == ["4", "5", "6"]  # 7 -> 5 -> 3 turns, a user first
    assert drop_oldest_turns(turns, lambda t: True) == turns


def test_the_last_turn_always_stays():
    turns = _turns(4)
    assert drop_oldest_turns(turns, lambda t: False) == turns[-1:]
    assert drop_oldest_turns(turns[:1], lambda t: False) == turns[:1]
    assert drop_oldest_turns([], lambda t: False) == []
