"""The human-evaluation API and page, as a FastAPI router the Serve application mounts.

Point-wise: a session talks to one blinded model drawn at random (least-used first); after
`min_turns_pointwise` turns the rater scores seven dimensions on a 1-5 Likert scale.
Pair-wise: each turn two blinded models answer (sides shuffled per turn); the rater picks
A, B or tie, and the chosen reply (on a tie, the one the rater picks) continues the shared
history. Every turn, vote and rating is written to SQLite as it happens.

The routes reach the models through `Host` (the application's auth, model names and a
guarded reply); the application provides the `HumanEval` by overriding the dependency
`human_eval_service`.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import uuid
from collections import Counter
from collections.abc import Awaitable
from importlib.resources import files
from pathlib import Path
from typing import Protocol, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from esevo_ray.api_errors import ApiError
from esevo_ray.config import JUDGE_DIMENSIONS, HumanEvalSection
from esevo_ray.human_eval.bodies import (
    Ack,
    HumanConfig,
    NewSession,
    RatingIn,
    SessionOut,
    TurnIn,
    TurnOut,
    VoteIn,
    history,
    turn_out,
)
from esevo_ray.human_eval.store import HumanEvalStore
from esevo_ray.layout import model_index

_rng = random.SystemRandom()
T = TypeVar("T")


class Host(Protocol):
    """What the human evaluation needs from the application that serves the models."""

    key_digest: str | None  # the API key's digest; None: no key, loopback clients only

    def auth(self, request: Request) -> None: ...

    def served_names(self) -> list[str]: ...

    def resolve_name(self, name: str) -> str | None:
        """The served model `name` refers to (following aliases), or None."""

    async def reply(self, model: str, dialogue: list[dict]) -> tuple[str, bool]:
        """The model's guarded reply to `dialogue`, and whether the crisis guard fired."""


class HumanEval:
    """Sessions over a store: model draws, per-session locks, the session lookup."""

    def __init__(self, host: Host, db_path: str | Path, settings: HumanEvalSection):
        self.host = host
        self.store = HumanEvalStore(db_path)
        self.settings = settings
        self.locks: dict[str, asyncio.Lock] = {}
        # Turns of each session asked for and not yet stored (waiting, replying, storing).
        self.replying: Counter[str] = Counter()
        # Sessions start in the route threadpool: a draw and its insert go together, or raters
        # starting at once all read the same counts and get the same model.
        self.drawing = threading.Lock()

    def session(self, session_id: str) -> dict:
        sess = self.store.session(session_id)
        if sess is None:
            raise ApiError(
                404, f"session {session_id!r} not found", "not_found_error", param="session_id"
            )
        return sess

    def open_session(self, mode: str, rater: str) -> tuple[str, int]:
        """A new session of `mode` on a drawn model (or pair): (its id, its minimum turns)."""
        sid, min_turns = uuid.uuid4().hex, self.min_turns(mode)
        with self.drawing:
            model_a, model_b = self.draw(mode)
            self.store.add_session(sid, mode, rater, model_a, model_b, min_turns)
        return sid, min_turns

    def draw(self, mode: str) -> tuple[str, str | None]:
        """The least-used finished model for a point-wise session; for a pair-wise one, the
        least-used pair, then the pair of least-used models, so that every pair is compared
        about as often. Ties are broken at random. The models `serve.human_eval.models` names
        are drawn only once all of them are served: drawn from those served so far, the
        others' sessions went to them."""
        names = self.settings.models or [
            n for n in self.host.served_names() if model_index(n) is not None
        ]
        resolved = {n: self.host.resolve_name(n) for n in names}
        if self.settings.models and (missing := [n for n, r in resolved.items() if r is None]):
            raise ApiError(
                409,
                f"serve.human_eval.models names {missing}, not served now (an iteration not "
                "finished yet, or its adapter missing): sessions start once every one is "
                "served, or leave them out of serve.human_eval.models",
                "conflict_error",
            )
        pool = sorted({r for r in resolved.values() if r is not None})
        need = 1 if mode == "pointwise" else 2
        if len(pool) < need:
            raise ApiError(
                409,
                f"{mode} evaluation needs {need} finished models, have {pool or 'none'}",
                "conflict_error",
            )
        counts = self.store.assignments(mode)
        if need == 1:
            return min(pool, key=lambda n: (counts.get(n, 0), _rng.random())), None
        pairs = self.store.pair_assignments()
        return min(
            itertools.combinations(pool, 2),  # each pair once, its names sorted
            key=lambda p: (pairs.get(p, 0), counts.get(p[0], 0) + counts.get(p[1], 0),
                           _rng.random()),
        )  # fmt: skip

    def min_turns(self, mode: str) -> int:
        s = self.settings
        return s.min_turns_pointwise if mode == "pointwise" else s.min_turns_pairwise


# The human evaluation criteria (the paper's Appendix D), in the raters' words.
CRITERIA = {
    "coherence": "Is the response logical, clear, and consistent with the ongoing conversation?",
    "understanding": "Does it accurately interpret your emotions and needs, so that the "
    "response fits the context?",
    "empathy": "Does it show care and sensitivity toward your emotions?",
    "engagement": "Do you feel encouraged to continue the conversation?",
    "informativeness": "Does it give clear, useful information that helps address your "
    "concerns or ease your distress?",
    "helpfulness": "Does it meet your needs with practical, actionable support?",
    "overall": "Overall quality: emotional support, informativeness and the interaction as "
    "a whole.",
}


def human_eval_service() -> HumanEval:
    """The HumanEval behind the routes: the mounting application overrides this dependency."""
    raise RuntimeError("the human_eval router is mounted without overriding human_eval_service")


router = APIRouter(prefix="/human")
Service = Depends(human_eval_service)


def _authorized(request: Request, ev: HumanEval = Service) -> None:
    """The API key, checked before the body: a request without it is told so (401), not
    what its body lacks."""
    ev.host.auth(request)


Authorized = Depends(_authorized)


@router.get("", include_in_schema=False)
def human_page() -> HTMLResponse:
    return HTMLResponse(
        files("esevo_ray.human_eval").joinpath("static/human_eval.html").read_text()
    )


@router.get("/api/config", response_model=HumanConfig)
def human_config(ev: HumanEval = Service) -> HumanConfig:
    return HumanConfig(
        auth_required=ev.host.key_digest is not None,
        dimensions=list(JUDGE_DIMENSIONS),
        criteria={d: CRITERIA[d] for d in JUDGE_DIMENSIONS},
        min_turns_pointwise=ev.settings.min_turns_pointwise,
        min_turns_pairwise=ev.settings.min_turns_pairwise,
        max_message_chars=ev.settings.max_message_chars,
    )


@router.post("/api/sessions", response_model=SessionOut, dependencies=[Authorized])
def new_session(body: NewSession, ev: HumanEval = Service) -> SessionOut:
    sid, min_turns = ev.open_session(body.mode, body.rater)
    return SessionOut(session_id=sid, mode=body.mode, min_turns=min_turns)


@router.get("/api/sessions/{session_id}", response_model=SessionOut, dependencies=[Authorized])
def get_session(session_id: str, ev: HumanEval = Service) -> SessionOut:
    sess = ev.session(session_id)
    return SessionOut(
        session_id=session_id,
        mode=sess["mode"],
        min_turns=sess["min_turns"],
        rater=sess["rater"],
        rated=ev.store.rated(session_id),
        turns=[turn_out(t, with_user=True) for t in ev.store.turns(session_id)],
    )


async def both(a: Awaitable[T], b: Awaitable[T]) -> tuple[T, T]:
    """Both results; when one fails, the other is cancelled (its generation aborted) and the
    failure raised, as the turn fails anyway."""
    tasks = [asyncio.ensure_future(a), asyncio.ensure_future(b)]
    try:
        first, second = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return first, second


@router.post("/api/sessions/{session_id}/turns", response_model=TurnOut, dependencies=[Authorized])
async def post_turn(session_id: str, body: TurnIn, ev: HumanEval = Service) -> TurnOut:
    # The store commits with a full sync, off the event loop that also serves every stream.
    sess = await asyncio.to_thread(ev.session, session_id)
    limit = ev.settings.max_message_chars
    if len(body.message) > limit:
        raise ApiError(
            400,
            f"message has {len(body.message)} characters, over the limit of {limit}",
            param="message",
        )
    ev.replying[session_id] += 1
    try:
        index, a, b = await _turn(ev, session_id, sess, body.message)
    finally:
        ev.replying[session_id] -= 1
        if not ev.replying[session_id]:
            del ev.replying[session_id]
    return TurnOut(turn_index=index, replies=[a] if b is None else [a, b])


async def _turn(ev: HumanEval, session_id: str, sess: dict, message: str):
    """One turn of a session: its replies made and stored, under the session's lock.
    (its index, reply A, reply B or None)"""
    async with ev.locks.setdefault(session_id, asyncio.Lock()):
        turns = await asyncio.to_thread(ev.store.turns, session_id)
        if sess["mode"] == "pairwise" and turns and turns[-1]["choice"] is None:
            raise ApiError(409, f"vote on turn {turns[-1]['turn_index']} first", "conflict_error")
        if sess["mode"] == "pointwise" and await asyncio.to_thread(ev.store.rated, session_id):
            raise ApiError(409, "this session is already rated", "conflict_error")
        dialogue = [*history(turns), {"role": "user", "content": message}]
        pair = [sess["model_a"], sess["model_b"]]
        if sess["model_b"] is not None:
            _rng.shuffle(pair)  # blind the sides anew on every turn
            (a, crisis_a), (b, crisis_b) = await both(
                ev.host.reply(pair[0], dialogue), ev.host.reply(pair[1], dialogue)
            )
            crisis = crisis_a or crisis_b  # either side's reply may fire the guard
        else:
            (a, crisis), b = await ev.host.reply(pair[0], dialogue), None
        index = len(turns)
        await asyncio.to_thread(
            ev.store.add_turn, session_id, index, message, pair[0], a, pair[1], b, crisis
        )
    return index, a, b


@router.post("/api/sessions/{session_id}/votes", response_model=Ack, dependencies=[Authorized])
def post_vote(session_id: str, body: VoteIn, ev: HumanEval = Service) -> Ack:
    if ev.session(session_id)["mode"] != "pairwise":
        raise ApiError(409, "votes belong to pair-wise sessions", "conflict_error")
    cont = body.continue_with or (None if body.choice == "tie" else body.choice)
    if cont is None:
        raise ApiError(400, "a tie needs continue_with ('A' or 'B')", param="continue_with")
    if body.choice != "tie" and cont != body.choice:
        raise ApiError(400, "continue_with must be the winning side", param="continue_with")
    turns = ev.store.turns(session_id)
    if body.turn_index >= len(turns):
        raise ApiError(404, f"turn {body.turn_index} not found", "not_found_error", "turn_index")
    turn = turns[body.turn_index]
    if turn["choice"] is not None:
        raise ApiError(409, f"turn {body.turn_index} already has a vote", "conflict_error")
    ev.store.add_vote(
        session_id, body.turn_index, turn["model_a"], turn["model_b"], body.choice, cont
    )
    return Ack(turns=len(turns))


@router.post("/api/sessions/{session_id}/ratings", response_model=Ack, dependencies=[Authorized])
async def post_rating(session_id: str, body: RatingIn, ev: HumanEval = Service) -> Ack:
    sess = await asyncio.to_thread(ev.session, session_id)
    if sess["mode"] != "pointwise":
        raise ApiError(409, "ratings belong to point-wise sessions", "conflict_error")
    if ev.replying[session_id]:  # the rater has not seen the reply being made
        raise ApiError(409, "a reply is still on its way: rate once it is shown", "conflict_error")
    # No turn starts while the rating is stored; a second rating (a double click) waits for
    # the first and is then told the session is rated.
    async with ev.locks.setdefault(session_id, asyncio.Lock()):
        n = len(await asyncio.to_thread(ev.store.turns, session_id))
        if n < sess["min_turns"]:
            raise ApiError(
                409, f"rate after {sess['min_turns']} turns; this session has {n}", "conflict_error"
            )
        if await asyncio.to_thread(ev.store.rated, session_id):
            raise ApiError(409, "this session is already rated", "conflict_error")
        scores = body.model_dump()
        await asyncio.to_thread(ev.store.add_ratings, session_id, sess["model_a"], scores)
    return Ack(turns=n)
