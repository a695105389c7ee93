"""Interactive human evaluation (paper Section 3.4.1): point-wise and pair-wise sessions.

Point-wise: a session talks to one blinded model drawn at random (least-used first); after
`min_turns_pointwise` turns the rater scores seven dimensions on a 1-5 Likert scale.
Pair-wise: each turn two blinded models answer (sides shuffled per turn); the rater picks
A, B or tie, and the chosen reply (on a tie, the one the rater picks) continues the shared
history. Every turn, vote and rating is written to SQLite as it happens.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from importlib.resources import files
from typing import Annotated, Literal

from fastapi import Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, StringConstraints

from esevo_ray.config import JUDGE_DIMENSIONS
from esevo_ray.serving.api import ApiError, app
from esevo_ray.serving.protocol import ERROR_RESPONSES
from esevo_ray.serving.registry import BASE, CURRENT, current_name
from esevo_ray.serving.store import HumanEvalStore

Likert = Annotated[int, Field(ge=1, le=5)]
_rng = random.SystemRandom()


class HumanConfig(BaseModel):
    auth_required: bool
    dimensions: list[str]
    min_turns_pointwise: int
    min_turns_pairwise: int
    max_message_chars: int


class NewSession(BaseModel):
    mode: Literal["pointwise", "pairwise"]
    rater: Annotated[str, StringConstraints(min_length=1, max_length=100)]


class TurnIn(BaseModel):
    message: Annotated[str, StringConstraints(min_length=1)]


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
    rated: bool = False
    turns: list[TurnOut] = []


class VoteIn(BaseModel):
    turn_index: Annotated[int, Field(ge=0)]
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


def _turn_out(t: dict, with_user: bool = False) -> TurnOut:
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


class HumanEvalRoutes:
    """Routes mixed into the ingress; it provides auth, models, conversation, generate."""

    def init_human_eval(self, db_path: str) -> None:
        self.store = HumanEvalStore(db_path)
        self.hcfg = self.scfg.human_eval
        self.session_locks: dict[str, asyncio.Lock] = {}

    def _session(self, session_id: str) -> dict:
        sess = self.store.session(session_id)
        if sess is None:
            raise ApiError(404, f"session {session_id!r} not found", param="session_id")
        return sess

    def _draw(self, mode: str) -> tuple[str, str | None]:
        models = self.models()
        names = self.hcfg.models or [n for n in models if n != BASE]
        names = [current_name(models) if n == CURRENT else n for n in names]
        pool = sorted({n for n in names if n in models})
        need = 1 if mode == "pointwise" else 2
        if len(pool) < need:
            raise ApiError(
                409,
                f"{mode} evaluation needs {need} finished models, have {pool or 'none'}",
                "conflict_error",
            )
        counts = self.store.assignments(mode)
        ranked = sorted(pool, key=lambda n: (counts.get(n, 0), _rng.random()))
        return (ranked[0], None) if need == 1 else (ranked[0], ranked[1])

    async def _reply(self, model_name: str, dialogue: list[dict]) -> tuple[str, bool]:
        model = self.resolve(model_name)
        turns = self.conversation(dialogue)
        max_tokens = min(self.cfg.generation.decoding.max_new_tokens, self.scfg.max_tokens)
        while True:
            try:
                request = self.generation_request(model, turns, max_tokens)
                break
            except ApiError as e:  # a long session: drop the oldest exchange
                if e.code != "context_length_exceeded" or len(turns) <= 3:
                    raise
                turns = [turns[0], *turns[3:]]
        result = await self.generate(request)
        return self.guard(turns, result["text"], "human", model.name)

    @app.get("/human", include_in_schema=False)
    def human_page(self) -> HTMLResponse:
        page = files("esevo_ray.serving").joinpath("static/human_eval.html").read_text()
        return HTMLResponse(page)

    @app.get("/human/api/config", response_model=HumanConfig, responses=ERROR_RESPONSES)
    def human_config(self) -> HumanConfig:
        return HumanConfig(
            auth_required=self.api_key is not None,
            dimensions=list(JUDGE_DIMENSIONS),
            min_turns_pointwise=self.hcfg.min_turns_pointwise,
            min_turns_pairwise=self.hcfg.min_turns_pairwise,
            max_message_chars=self.hcfg.max_message_chars,
        )

    @app.post("/human/api/sessions", response_model=SessionOut, responses=ERROR_RESPONSES)
    def new_session(self, body: NewSession, request: Request) -> SessionOut:
        self.auth(request)
        model_a, model_b = self._draw(body.mode)
        sid = uuid.uuid4().hex
        min_turns = (
            self.hcfg.min_turns_pointwise
            if body.mode == "pointwise"
            else self.hcfg.min_turns_pairwise
        )
        self.store.add_session(sid, body.mode, body.rater, model_a, model_b, min_turns)
        return SessionOut(session_id=sid, mode=body.mode, min_turns=min_turns)

    @app.get(
        "/human/api/sessions/{session_id}", response_model=SessionOut, responses=ERROR_RESPONSES
    )
    def get_session(self, session_id: str, request: Request) -> SessionOut:
        self.auth(request)
        sess = self._session(session_id)
        turns = [_turn_out(t, with_user=True) for t in self.store.turns(session_id)]
        return SessionOut(
            session_id=session_id,
            mode=sess["mode"],
            min_turns=sess["min_turns"],
            rated=self.store.rated(session_id),
            turns=turns,
        )

    @app.post(
        "/human/api/sessions/{session_id}/turns", response_model=TurnOut, responses=ERROR_RESPONSES
    )
    async def post_turn(self, session_id: str, body: TurnIn, request: Request) -> TurnOut:
        self.auth(request)
        sess = self._session(session_id)
        if len(body.message) > self.hcfg.max_message_chars:
            raise ApiError(
                400,
                f"message has {len(body.message)} characters, over the limit of "
                f"{self.hcfg.max_message_chars}",
                param="message",
            )
        async with self.session_locks.setdefault(session_id, asyncio.Lock()):
            turns = self.store.turns(session_id)
            if sess["mode"] == "pairwise" and turns and turns[-1]["choice"] is None:
                raise ApiError(
                    409, f"vote on turn {turns[-1]['turn_index']} first", "conflict_error"
                )
            if sess["mode"] == "pointwise" and self.store.rated(session_id):
                raise ApiError(409, "this session is already rated", "conflict_error")
            dialogue = [*history(turns), {"role": "user", "content": body.message}]
            pair = [sess["model_a"], sess["model_b"]]
            if sess["model_b"] is not None:
                _rng.shuffle(pair)  # blind the sides anew on every turn
                (a, crisis), (b, _) = await asyncio.gather(
                    self._reply(pair[0], dialogue), self._reply(pair[1], dialogue)
                )
            else:
                (a, crisis), b = await self._reply(pair[0], dialogue), None
            index = len(turns)
            self.store.add_turn(session_id, index, body.message, pair[0], a, pair[1], b, crisis)
        return TurnOut(turn_index=index, replies=[a] if b is None else [a, b])

    @app.post(
        "/human/api/sessions/{session_id}/votes", response_model=Ack, responses=ERROR_RESPONSES
    )
    def post_vote(self, session_id: str, body: VoteIn, request: Request) -> Ack:
        self.auth(request)
        sess = self._session(session_id)
        if sess["mode"] != "pairwise":
            raise ApiError(409, "votes belong to pair-wise sessions", "conflict_error")
        cont = body.continue_with or (None if body.choice == "tie" else body.choice)
        if cont is None:
            raise ApiError(400, "a tie needs continue_with ('A' or 'B')", param="continue_with")
        if body.choice != "tie" and cont != body.choice:
            raise ApiError(400, "continue_with must be the winning side", param="continue_with")
        turns = self.store.turns(session_id)
        if body.turn_index >= len(turns):
            raise ApiError(404, f"turn {body.turn_index} not found", param="turn_index")
        turn = turns[body.turn_index]
        if turn["choice"] is not None:
            raise ApiError(409, f"turn {body.turn_index} already has a vote", "conflict_error")
        self.store.add_vote(
            session_id, body.turn_index, turn["model_a"], turn["model_b"], body.choice, cont
        )
        return Ack(turns=len(turns))

    @app.post(
        "/human/api/sessions/{session_id}/ratings", response_model=Ack, responses=ERROR_RESPONSES
    )
    def post_rating(self, session_id: str, body: RatingIn, request: Request) -> Ack:
        self.auth(request)
        sess = self._session(session_id)
        if sess["mode"] != "pointwise":
            raise ApiError(409, "ratings belong to point-wise sessions", "conflict_error")
        n = len(self.store.turns(session_id))
        if n < sess["min_turns"]:
            raise ApiError(
                409, f"rate after {sess['min_turns']} turns; this session has {n}", "conflict_error"
            )
        if self.store.rated(session_id):
            raise ApiError(409, "this session is already rated", "conflict_error")
        self.store.add_ratings(session_id, sess["model_a"], body.model_dump())
        return Ack(turns=n)
