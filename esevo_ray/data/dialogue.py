"""The canonical dialogue model and the paper's Appendix A preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field

SEEKER = "seeker"
SUPPORTER = "supporter"
# Chat roles the model sees: the seeker is the user, the supporter is the assistant.
CHAT_ROLE = {SEEKER: "user", SUPPORTER: "assistant"}


class DataError(ValueError):
    """A record that cannot be read, with file, record and field named in the message."""


@dataclass
class Turn:
    role: str
    text: str
    strategy: str | None = None


@dataclass
class Dialogue:
    dialogue_id: str
    source: str
    turns: list[Turn]
    split: str = "train"
    situation: str = ""
    emotion_type: str = ""
    problem_type: str = ""
    meta: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        return {
            "dialogue_id": self.dialogue_id,
            "source": self.source,
            "split": self.split,
            "situation": self.situation,
            "emotion_type": self.emotion_type,
            "problem_type": self.problem_type,
            "turns": [{"role": t.role, "text": t.text, "strategy": t.strategy} for t in self.turns],
        }


STRATEGY_JOIN = " + "


def merge_runs(turns: list[Turn]) -> list[Turn]:
    """Join consecutive turns of the same role. A joined supporter turn carries each of its
    parts' strategies, in order and once each ("Question + Affirmation and Reassurance"):
    in ESConv's test split 367 of the 452 joined runs mix strategies."""
    out: list[Turn] = []
    for t in turns:
        if out and out[-1].role == t.role:
            prev = out[-1]
            labels = [*(prev.strategy or "").split(STRATEGY_JOIN), t.strategy or ""]
            strategy = STRATEGY_JOIN.join(dict.fromkeys(x for x in labels if x)) or None
            out[-1] = Turn(prev.role, f"{prev.text} {t.text}", strategy)
        else:
            out.append(Turn(t.role, t.text, t.strategy))
    return out


def normalise(turns: list[Turn]) -> list[Turn]:
    """Appendix A: merge same-speaker runs, start with the seeker, end with the supporter.

    After merging, roles alternate strictly; trimming a leading supporter turn and a trailing
    seeker turn makes every dialogue a sequence of (seeker, supporter) exchanges.
    """
    turns = merge_runs(turns)
    if turns and turns[0].role == SUPPORTER:
        turns = turns[1:]
    if turns and turns[-1].role == SEEKER:
        turns = turns[:-1]
    return turns


def normalised(d: Dialogue) -> Dialogue:
    return Dialogue(
        d.dialogue_id,
        d.source,
        normalise(d.turns),
        d.split,
        d.situation,
        d.emotion_type,
        d.problem_type,
        d.meta,
    )


def context_rows(
    d: Dialogue, *, drop_greetings: bool = False, greetings: tuple[int, int] = (1, 2)
) -> list[dict]:
    """Expand a normalised dialogue into turn-level examples (C_n, golden response).

    One example per supporter turn. With `drop_greetings` (Appendix A, for preference data),
    the supporter replies of the first `greetings[0]` and the last `greetings[1]` exchanges
    (seeker message + supporter reply) are not targets; they still serve as context.
    """
    first, last = greetings
    if first < 0 or last < 0:
        raise ValueError(f"greeting exchanges to skip must be >= 0, got {greetings}")
    targets = [i for i, t in enumerate(d.turns) if t.role == SUPPORTER]
    if drop_greetings:
        targets = targets[first : len(targets) - last]
    rows = []
    for i in targets:
        context = [{"role": CHAT_ROLE[t.role], "content": t.text} for t in d.turns[:i]]
        rows.append(
            {
                "dialogue_id": d.dialogue_id,
                "source": d.source,
                "split": d.split,
                "turn_index": i,
                "context": context,
                "golden": d.turns[i].text,
                "strategy": d.turns[i].strategy,
                "situation": d.situation,
                "emotion_type": d.emotion_type,
                "problem_type": d.problem_type,
            }
        )
    return rows
