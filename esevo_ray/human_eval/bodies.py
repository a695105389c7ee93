"""Request and response bodies of the human-evaluation API."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

# Strict: JSON true or "4" is not a score (pydantic would read them as 1 and 4).
Likert = Annotated[int, Field(ge=1, le=5, strict=True)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class HumanConfig(BaseModel):
    auth_required: bool
    dimensions: list[str]
    # What each dimension asks (the paper's Appendix D), shown beside it on the rating form.
    criteria: dict[str, str]
    min_turns_pointwise: int
    min_turns_pairwise: int
    max_message_chars: int


class NewSession(BaseModel):
    mode: Literal["pointwise", "pairwise"]
    rater: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class TurnIn(BaseModel):
    message: Text


class TurnOut(BaseModel):
    turn_index: int
    replies: list[str]
    user: str | None = None
    choice: str | None = None
    continue_with: str | None = None


class SessionOut(BaseModel):
    session_id: str
    mode: Literal["pointwise", "pairwise"]
    min_turns: int
    rater: str | None = None  # so that a page resuming it shows whose session it is
    rated: bool = False
    turns: list[TurnOut] = []


class VoteIn(BaseModel):
    turn_index: Annotated[int, Field(ge=0, strict=True)]
    choice: Literal["A", "B", "tie"]
    # Which reply continues the dialogue; required on a tie, else it must equal `choice`.
    continue_with: Literal["A", "B"] | None = None


class RatingIn(BaseModel):
    coherence: Likert
    understanding: Likert
    empathy: Likert
    engagement: Likert
    informativeness: Likert
    helpfulness: Likert
    overall: Likert


class Ack(BaseModel):
    ok: bool = True
    turns: int


def turn_out(t: dict, with_user: bool = False) -> TurnOut:
    """A stored turn as the rater's page sees it: replies by side, never model names."""
    replies = [t["reply_a"]] if t["reply_b"] is None else [t["reply_a"], t["reply_b"]]
    return TurnOut(
        turn_index=t["turn_index"],
        replies=replies,
        user=t["user_text"] if with_user else None,
        choice=t.get("choice"),
        continue_with=t.get("continue_with"),
    )


def history(turns: list[dict]) -> list[dict]:
    """The shared dialogue: each user message, then the reply that continues it."""
    out = []
    for t in turns:
        side = t.get("continue_with") or "A"
        out += [
            {"role": "user", "content": t["user_text"]},
            {"role": "assistant", "content": t["reply_a" if side == "A" else "reply_b"]},
        ]
    return out
