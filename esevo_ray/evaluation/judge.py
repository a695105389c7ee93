"""LLM-as-a-judge (paper Table 7) against any OpenAI-compatible chat endpoint.

Requests run on a bounded thread pool under a shared rate limit. Transport errors (timeouts,
429, 5xx) are retried with exponential backoff; an unparseable verdict is asked again up to
`parse_retries` times and then recorded as missing (score None), never as a number.

`judge_file` resumes: a scores file written before with the same judge and settings lends
its verdicts, and only the rest is asked for; one it would not keep whole (another judge or
settings, responses since changed, fewer contexts sampled) is first moved aside to
`<name>.superseded-<time>`, so no verdict is lost. A request that failed for good (the
endpoint down past its retries) is written as missing and then stops the command with an
error, so that running it again asks for just those.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from esevo_ray import profile
from esevo_ray.config import JudgeSection
from esevo_ray.errors import JudgeError, UsageError
from esevo_ray.evaluation.judge_prompts import judge_messages, request_seed
from esevo_ray.evaluation.verdicts import Verdict, VerdictError, parse_verdict
from esevo_ray.models import resolve_model
from esevo_ray.schema import EVAL_RESPONSES, JUDGE_SCORES, conform, read_table

logger = logging.getLogger(__name__)

_FATAL_STATUS = {401, 403, 404}
REQUEST_FAILED = "request failed"  # the error of a verdict whose request failed for good
# The error of a verdict whose request the endpoint refused (a 4xx such as 400: a content
# filter, or a parameter it does not take).
REQUEST_REJECTED = "request rejected"
# A run stops at once when its first FAILURES_TO_STOP requests are all rejected, or all
# failed for good (an endpoint not there: a wrong port, a server not started), and none was
# answered: asking for every other verdict would fail as well, slowly, through the retries.
# An endpoint that stops answering later stops the run after FAILURES_TO_STOP x concurrency
# requests in a row failed for good (those in flight as it went down fail together).
FAILURES_TO_STOP = 3
# How the judge is called, not what it answers: a scores file written under other values
# of these still lends its verdicts.
_TRANSPORT = {
    "base_url", "api_key_env", "concurrency", "requests_per_second", "timeout_s",
    "max_retries", "backoff_s",
}  # fmt: skip
# Recorded, but a verdict does not depend on them: `judge_model` names the model that
# answered (an endpoint's `model`, or --model), and a local judge's place is not its answer.
_NAMING_AND_PLACE = {"model", "device", "gpus_per_actor", "tensor_parallel_size"}
# What only a local judge reads: an endpoint judge's verdicts do not depend on them.
_LOCAL_ONLY = {"local_model", "guided_json", "max_model_len"}
# Which verdicts are asked for, not what one says: files that differ only in them still
# compare (Table 7, the intervals) on the verdicts they share.
_ASKED = {"dimensions", "seed", "parse_retries"}
_SETTINGS_KEY = b"esevo.judge"  # file metadata: the settings its verdicts were made under
_JUDGED_KEY = b"esevo.judged"  # and a digest of each judged (context, response)
_PARTIAL_KEY = b"esevo.partial"  # b"1" while the judging that writes the file is unfinished


class RateLimiter:
    """Spaces request starts at least 1/rate seconds apart, across threads."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class JudgeClient:
    """One judge model behind an OpenAI-compatible endpoint."""

    def __init__(
        self,
        cfg: JudgeSection,
        *,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
    ):
        from openai import OpenAI

        from esevo_ray.evaluation.endpoint import base_url as api_base
        from esevo_ray.evaluation.endpoint import shown_url

        self.cfg = cfg
        url, self.model = base_url or cfg.base_url, model or cfg.model
        if not url or not self.model:
            raise UsageError(
                "the judge needs an endpoint and a model: set eval.judge.base_url "
                "and eval.judge.model, or pass --endpoint and --model"
            )
        # A server's root URL means its /v1, as for `esevo eval`; shown without a key in it.
        self.base_url = shown_url(api_base(url))
        key = api_key or os.environ.get(cfg.api_key_env)
        if not key:
            logger.info("$%s is not set; sending a placeholder API key", cfg.api_key_env)
        self._client = OpenAI(
            base_url=api_base(url), api_key=key or "EMPTY", max_retries=0, timeout=cfg.timeout_s
        )
        self._limiter = RateLimiter(cfg.requests_per_second)
        self._replies = {"accepted": 0, "rejected": 0, "failed": 0}
        self._in_row = 0  # requests failed for good since the last one answered
        self._replies_lock = threading.Lock()

    def complete(self, messages: list[dict], seed: int | None = None) -> str:
        """One chat completion sampled with `seed`, retrying transport errors with
        exponential backoff.

        Raises:
            JudgeError: the endpoint rejects the key, model or URL (401, 403, 404), or its
                first FAILURES_TO_STOP requests were all rejected, or all failed past their
                retries, and none was answered.
            openai.APIError: a transport error that outlasted the retries, or another 4xx.
        """
        import openai

        from esevo_ray.evaluation.endpoint import (
            MalformedReply,
            NoText,
            create_with_retries,
            rejected,
        )

        cfg = self.cfg
        extra = None if cfg.top_k is None else {"top_k": cfg.top_k}
        request = dict(
            model=self.model, messages=messages, temperature=cfg.temperature, top_p=cfg.top_p,
            max_tokens=cfg.max_tokens, extra_body=extra, seed=seed,
        )  # fmt: skip
        try:
            text = create_with_retries(
                self._client, request, max_retries=cfg.max_retries, backoff_s=cfg.backoff_s,
                before=self._limiter.wait,
            )  # fmt: skip
        except NoText:  # answered, but with nothing to read: a verdict that does not parse
            text = ""
        except (openai.APIError, MalformedReply) as e:
            where = f"judge endpoint {self.base_url} model {self.model!r}"
            # None: no HTTP answer (a connection error, a timeout, a malformed reply)
            status = e.status_code if isinstance(e, openai.APIStatusError) else None
            if status is not None:
                where = f"{where}: HTTP {status}"
            if status in _FATAL_STATUS:
                raise JudgeError(f"{where}: {e.message}") from e
            if status is not None and rejected(status):
                if self._none_accepted_after("rejected"):
                    raise JudgeError(
                        f"{where}: it rejected the first {FAILURES_TO_STOP} requests and "
                        f"accepted none ({e.message}){rejection_hint(e.message)}"
                    ) from e
            elif self._none_accepted_after("failed"):
                raise JudgeError(
                    f"{where}: its first {FAILURES_TO_STOP} requests all failed after "
                    f"{cfg.max_retries + 1} attempts each and none was answered ({e}); is it "
                    "running, at this URL?"
                ) from e
            elif (in_row := self._failed_in_row()) >= FAILURES_TO_STOP * cfg.concurrency:
                raise JudgeError(
                    f"{where}: the last {in_row} requests all failed after "
                    f"{cfg.max_retries + 1} attempts each ({e}); it stopped answering: run the "
                    "same command again once it answers, to ask for the verdicts left"
                ) from e
            raise
        with self._replies_lock:
            self._replies["accepted"] += 1
            self._in_row = 0
        return text

    def _failed_in_row(self) -> int:
        """Count a request that failed for good; the failures since the last answer."""
        with self._replies_lock:
            self._in_row += 1
            return self._in_row

    def _none_accepted_after(self, outcome: str) -> bool:
        """Count a request that ended in `outcome` ("rejected" or "failed"); True when
        FAILURES_TO_STOP did and no request was accepted."""
        with self._replies_lock:
            self._replies[outcome] += 1
            return self._replies["accepted"] == 0 and self._replies[outcome] >= FAILURES_TO_STOP

    def judge(self, dimension: str, context: list[dict], response: str) -> Verdict:
        """Score one response on one dimension; missing (None) after repeated bad replies."""
        import openai

        from esevo_ray.evaluation.endpoint import MalformedReply, rejected

        messages = judge_messages(dimension, context, response, self.cfg.penalty)
        error = None
        for attempt in range(1, self.cfg.parse_retries + 2):
            try:
                text = self.complete(messages, request_seed(self.cfg.seed, messages, attempt))
            except (openai.APIError, MalformedReply) as e:
                if isinstance(e, openai.APIStatusError) and rejected(e.status_code):
                    error = f"{REQUEST_REJECTED}: {e.message}"  # "Error code: 400 - ..."
                    return Verdict(None, None, attempt, error)
                return Verdict(None, None, attempt, f"{REQUEST_FAILED}: {e}")
            try:
                score, explanation = parse_verdict(text)
                return Verdict(score, explanation, attempt)
            except VerdictError as e:
                error = f"unparseable verdict: {e}"
                logger.debug("%s (attempt %d)", error, attempt)
        return Verdict(None, None, self.cfg.parse_retries + 1, error)


def sample_keys(table: pa.Table, n: int | None, seed: int) -> list[tuple[str, int]]:
    """`n` (dialogue_id, turn_index) keys drawn by `seed`; the same for every model's file."""
    keys = sorted(
        set(
            zip(
                table.column("dialogue_id").to_pylist(),
                table.column("turn_index").to_pylist(),
                strict=True,
            )
        )
    )
    if n is None or n >= len(keys):
        return keys
    return sorted(random.Random(seed).sample(keys, n))


def judge_responses(
    table: pa.Table,
    client: JudgeClient,
    *,
    dimensions: Sequence[str],
    n_samples: int | None,
    seed: int,
    known: dict[tuple, Verdict] | None = None,
    save: Callable[[pa.Table], None] | None = None,
) -> pa.Table:
    """Judge the responses of `n_samples` contexts (all models in the table) on `dimensions`.

    `known`: verdicts already at hand, by (dialogue_id, turn_index, model, dimension); they
    are not asked for again. `save`: called with the verdicts at hand so far, every tenth of
    the way and when the judging stops on an error or an interrupt (then re-raised), so a
    run stopped part-way keeps what it was told.
    """
    chosen = set(sample_keys(table, n_samples, seed))
    rows = [r for r in table.to_pylist() if (r["dialogue_id"], r["turn_index"]) in chosen]
    rows.sort(key=lambda r: (r["model"], r["dialogue_id"], r["turn_index"]))
    tasks = [(row, dim) for row in rows for dim in dimensions]
    known = known or {}
    have = {i: known[k] for i, task in enumerate(tasks) if (k := _task_key(*task)) in known}
    todo = [task for i, task in enumerate(tasks) if i not in have]
    logger.info(
        "judging %d responses x %d dimensions with %s: %d verdicts to ask for, %d at hand",
        len(rows), len(dimensions), client.model, len(todo), len(have),
    )  # fmt: skip
    asking = [i for i in range(len(tasks)) if i not in have]
    told: dict[int, Verdict] = {}  # by position in `todo`, as they come

    def at_hand() -> dict[int, Verdict]:
        return {**have, **{asking[j]: v for j, v in told.items()}}

    def so_far() -> None:
        # Also with nothing new: the verdicts kept from an earlier file (moved aside when it
        # held others too) are then in `out`, not only in the superseded copy.
        if save is not None and (told or have):
            got = at_hand()
            order = sorted(got)
            save(_table([tasks[i] for i in order], [got[i] for i in order], client.model))

    try:
        _ask(client, todo, told, so_far)
    except BaseException:
        so_far()
        raise
    got = at_hand()
    verdicts = [got[i] for i in range(len(tasks))]
    missing = sum(v.score is None for v in verdicts)
    if missing:
        logger.warning("%d of %d verdicts missing", missing, len(verdicts))
    return _table(tasks, verdicts, client.model)


def _task_key(row: dict, dimension: str) -> tuple:
    return row["dialogue_id"], row["turn_index"], row["model"], dimension


def _ask(
    client: JudgeClient,
    tasks: list[tuple[dict, str]],
    told: dict[int, Verdict],
    progress: Callable[[], None],
) -> None:
    """Put the verdict of each of `tasks` into `told` (by position) as it comes: batched on
    a local engine, else on a thread pool, calling `progress` every tenth of the way."""
    if not tasks:
        return
    if hasattr(client, "judge_many"):  # a local engine judges whole batches
        verdicts = client.judge_many(
            [(dim, row["context"], row["response"] or "") for row, dim in tasks]
        )
        told.update(enumerate(verdicts))
        return
    with ThreadPoolExecutor(max_workers=client.cfg.concurrency) as pool:
        futures = {
            pool.submit(client.judge, dim, row["context"], row["response"] or ""): i
            for i in _in_turns(tasks)
            for row, dim in [tasks[i]]
        }
        step = max(1, len(futures) // 10)
        try:
            for n, future in enumerate(as_completed(futures), 1):
                told[futures[future]] = future.result()
                if n % step == 0 or n == len(futures):
                    logger.info("judged %d/%d", n, len(futures))
                    if n < len(futures):
                        progress()
        except BaseException:  # an unusable endpoint, or an interrupt: stop at once
            pool.shutdown(cancel_futures=True)
            # Verdicts that came meanwhile are kept with the others (paid for already).
            for future, i in futures.items():
                if future.done() and not future.cancelled() and future.exception() is None:
                    told.setdefault(i, future.result())
            raise


def _in_turns(tasks: list[tuple[dict, str]]) -> list[int]:
    """The positions of `tasks` in the order to ask: one dimension of each response in turn,
    so that the first requests, which stop the run when they all fail, are about different
    responses (one the endpoint cannot judge, too long say, is only missing verdicts)."""
    asked: Counter[tuple] = Counter()  # tasks of each response so far
    ranked = []
    for i, (row, _) in enumerate(tasks):
        key = _response_key(row)
        asked[key] += 1
        ranked.append((asked[key], i))
    return [i for _, i in sorted(ranked)]


def _table(tasks: list[tuple[dict, str]], verdicts: list[Verdict], judge_model: str) -> pa.Table:
    out = [
        {
            "dialogue_id": row["dialogue_id"],
            "turn_index": row["turn_index"],
            "model": row["model"],
            "dimension": dim,
            "score": v.score,
            "explanation": v.explanation,
            "attempts": v.attempts,
            "error": v.error,
            "judge_model": judge_model,
        }
        for (row, dim), v in zip(tasks, verdicts, strict=True)
    ]
    return conform(pa.Table.from_pylist(out, schema=JUDGE_SCORES), JUDGE_SCORES)


def judge_file(
    responses: str | Path,
    out: str | Path,
    cfg: JudgeSection,
    *,
    n_samples: int | None,
    base_url: str | None = None,
    model: str | None = None,
    local_model: str | Path | None = None,
    dtype: str = "auto",
) -> pa.Table:
    """Judge a responses.parquet (EVAL_RESPONSES) and write the JUDGE_SCORES parquet `out`.

    With `cfg.backend` "vllm" or "hf" the judge is `cfg.local_model` (else `local_model`,
    else the prepared default model) loaded locally in `dtype` (`model.dtype`); with
    "endpoint" it is `base_url`/`model` (else the config's). Verdicts of an earlier `out` by
    the same judge and settings are kept, not asked for again; an earlier `out` holding
    others is moved aside first (`_earlier`).

    Raises:
        JudgeError: the endpoint refuses the key, model or URL; or, after `out` is written,
            some requests failed for good (running again asks for those).
        UsageError: `out` is `responses`, or something other than a scores file.
    """
    from esevo_ray.io import set_aside, write_parquet

    out = Path(out)
    if out.resolve() == Path(responses).resolve():
        raise UsageError(f"the scores file {out} would replace the responses it judges")
    written = _written(out)  # before a local judge loads: a scores file, if anything
    with profile.timed("io"):
        table = read_table(responses, EVAL_RESPONSES)
        # The responses judged now: those of the sampled contexts, drawn once here.
        sampled = set(sample_keys(table, n_samples, cfg.seed))
        keys = zip(table["dialogue_id"].to_pylist(), table["turn_index"].to_pylist(), strict=True)
        table = table.filter(pa.array([k in sampled for k in keys], pa.bool_()))
    with profile.timed("startup"):  # a local judge loads its model here
        client = _client(cfg, base_url, model, local_model, dtype)
    judged, settings = _judged(table), _settings(cfg, client.model)

    def write(scores: pa.Table, partial: bool = False) -> None:
        """`out`, with the judge's settings and the responses it judged (for a rerun), and
        whether the judging is unfinished."""
        keys = scores.select(["dialogue_id", "turn_index", "model"]).to_pylist()
        kept = {_response_key(r) for r in keys}
        record = json.dumps(sorted([*k, d] for k, d in judged.items() if k in kept))
        metadata = {_SETTINGS_KEY: settings, _JUDGED_KEY: record}
        if partial:
            metadata[_PARTIAL_KEY] = b"1"
        write_parquet(scores.replace_schema_metadata(metadata), out)

    known, why = _earlier(out, written, settings, judged)
    if why:  # its other verdicts would be lost
        aside = set_aside(out, "superseded")
        logger.warning("%s: %s; moved to %s, its verdicts still valid kept", out, why, aside)
    with profile.timed("compute"):
        scores = judge_responses(
            table, client, dimensions=cfg.dimensions, n_samples=None, seed=cfg.seed,
            known=known, save=lambda so_far: write(so_far, partial=True),
        )  # fmt: skip
    with profile.timed("io"):
        write(scores)
    errors = pc.fill_null(scores["error"], "")
    refused = scores.filter(pc.starts_with(errors, REQUEST_REJECTED))
    if refused.num_rows:  # missing verdicts, like unparseable ones: sending again won't help
        first = refused["error"][0].as_py()
        logger.warning(
            "judge %s: the endpoint rejected %d of %d requests (%s)%s",
            client.model, refused.num_rows, scores.num_rows, first[:200], rejection_hint(first),
        )  # fmt: skip
    failed = scores.filter(pc.starts_with(errors, REQUEST_FAILED))
    if failed.num_rows:
        raise JudgeError(
            f"judge {client.model}: {failed.num_rows} of {scores.num_rows} requests failed "
            f"for good ({failed['error'][0].as_py()[:200]}); the other verdicts are kept in "
            f"{out}: run the same command again to ask for the {failed.num_rows} left"
        )
    return scores


# The judge prompt's format, which verdicts depend on as on any setting: 2 since the judged
# response is JSON-escaped like the history's turns. A file that does not record it was
# judged under format 1 (`_defining`), so its verdicts are not mixed with later ones.
PROMPT_FORMAT = 2


def verdict_settings(cfg: JudgeSection) -> dict:
    """The settings a verdict depends on: every one but the transport's, and the prompt's
    format."""
    return {**cfg.model_dump(mode="json", exclude=_TRANSPORT), "prompt_format": PROMPT_FORMAT}


def _settings(cfg: JudgeSection, judge_model: str) -> str:
    """What a verdict depends on: the judge model and `verdict_settings`."""
    return json.dumps({"judge_model": judge_model, **verdict_settings(cfg)}, sort_keys=True)


def _defining(settings: dict) -> dict:
    """Recorded settings (`judged_under`'s) less those no verdict depends on."""
    ignored = _NAMING_AND_PLACE | (_LOCAL_ONLY if settings.get("backend") == "endpoint" else set())
    kept = {k: v for k, v in settings.items() if k not in ignored}
    if kept:
        kept.setdefault("prompt_format", 1)  # recorded before the format was
    if isinstance(kept.get("dimensions"), list):  # verdicts are kept by dimension
        kept["dimensions"] = sorted(kept["dimensions"])
    return kept


def differing_settings(recorded: Sequence[dict], *, asked: bool = False) -> list[str]:
    """The settings in which judge files' recorded settings (`judged_under`, or
    `verdict_settings` with `judge_model`) disagree such that their verdicts do not compare:
    with `asked`, also those that choose which verdicts are asked for. A setting some of
    them do not record (a file written before it existed) is taken as the same."""
    defining = [_defining(s) for s in recorded if s]
    keys = {k for s in defining for k in s if asked or k not in _ASKED}
    return sorted(
        k for k in keys if len({json.dumps(s[k], sort_keys=True) for s in defining if k in s}) > 1
    )


def _response_key(row: dict) -> tuple:
    return row["dialogue_id"], row["turn_index"], row["model"]


def _judged(table: pa.Table) -> dict[tuple, str]:
    """A digest of each response and its context, by (dialogue_id, turn_index, model)."""
    return {
        _response_key(r): hashlib.sha256(
            json.dumps([r["context"], r["response"]], sort_keys=True).encode()
        ).hexdigest()[:16]
        for r in table.select(
            ["dialogue_id", "turn_index", "model", "context", "response"]
        ).to_pylist()
    }


def _metadata(path: str | Path) -> dict:
    """A scores file's Parquet metadata; {} for a missing or unreadable file."""
    try:
        return pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError):  # FileNotFoundError is an OSError
        return {}


def judged_under(path: str | Path) -> dict:
    """The settings a scores file's verdicts were made under (the judge model and
    `verdict_settings`); {} for a file without them."""
    try:
        return json.loads(_metadata(path).get(_SETTINGS_KEY) or "{}")
    except ValueError:
        return {}


def changed_since_judged(path: str | Path, responses: pa.Table) -> int:
    """How many of the responses a scores file judged are no longer among `responses` as
    they were judged (changed, or gone): a model evaluated again after its judging (`esevo
    eval` alone rewrites responses.parquet beside the scores). 0 for a file that does not
    record what it judged."""
    try:
        recorded = json.loads(_metadata(path).get(_JUDGED_KEY) or "[]")
    except ValueError:
        return 0
    return len(recorded) - len(_unchanged(recorded, _judged(responses)))


def _unchanged(recorded: list[list], judged: dict[tuple, str]) -> set[tuple]:
    """The keys of a scores file's recorded [dialogue_id, turn_index, model, digest] whose
    response `judged` (digests by key, `_judged`) still holds as it was judged."""
    return {(d, t, m) for d, t, m, digest in recorded if judged.get((d, t, m)) == digest}


def is_partial(path: str | Path) -> bool:
    """Whether a scores file holds the verdicts of a judging that stopped part-way."""
    return _metadata(path).get(_PARTIAL_KEY) == b"1"


def _written(out: Path) -> dict[bytes, bytes] | None:
    """The metadata of the scores file at `out`; None when there is none.

    Raises:
        UsageError: `out` is something else (a folder, a file that is not Parquet, another
            Parquet file).
    """
    try:
        written = pq.read_schema(out)
    except FileNotFoundError:
        return None
    except (pa.ArrowInvalid, OSError) as e:
        why = f"{type(e).__name__}: {e}"
    else:
        if set(JUDGE_SCORES.names) <= set(written.names):
            return written.metadata or {}
        why = f"its columns are {', '.join(written.names[:8])}"
    raise UsageError(
        f"{out} exists and is not a judge scores file ({why}); choose another output, "
        "nothing there is replaced"
    )


def _earlier(
    out: Path, written: dict[bytes, bytes] | None, settings: str, judged: dict[tuple, str]
) -> tuple[dict[tuple, Verdict], str | None]:
    """What a scores file written before at `out` (its metadata `written`, `_written`) means
    for judging the responses `judged` (their digests, by key) under `settings`.

    Returns:
        Its verdicts with a score on the same context and response by the same judge and
        settings (a missing one is asked for again), and why it must be moved aside before
        it is replaced: it holds verdicts this judging will not carry over (another judge
        or settings, a response since changed or no longer judged). None when there is no
        file, or every verdict of it stays.
    """
    if written is None:
        return {}, None
    try:
        made = json.loads(written.get(_SETTINGS_KEY) or b"{}")
    except ValueError:
        made = {}
    if _defining(made) != _defining(json.loads(settings)):
        return {}, "it holds the verdicts of another judge or other settings"
    recorded = json.loads(written.get(_JUDGED_KEY, b"[]"))
    same = _unchanged(recorded, judged)
    known = {
        (*_response_key(r), r["dimension"]): Verdict(
            r["score"], r["explanation"], r["attempts"], r["error"]
        )
        for r in read_table(out, JUDGE_SCORES).to_pylist()
        if _response_key(r) in same and r["score"] is not None
    }
    dropped = len(recorded) - len(same)
    return known, (f"{dropped} of the responses it judged changed or are not judged now"
                   if dropped else None)  # fmt: skip


def rejection_hint(message: str) -> str:
    """What to change for a rejection whose message names a setting of eval.judge."""
    if "top_k" in message:
        return "; this endpoint takes no top_k (api.openai.com): set eval.judge.top_k=null"
    return ""


def _client(
    cfg: JudgeSection,
    base_url: str | None,
    model: str | None,
    local_model: str | Path | None,
    dtype: str,
):
    if cfg.backend == "endpoint":
        return JudgeClient(cfg, base_url=base_url, model=model)
    from esevo_ray.evaluation.local_judge import LocalJudge

    # eval.judge.local_model, else the run's base model (the prepared default when unset)
    path = resolve_model(cfg.local_model or (str(local_model) if local_model else None))
    return LocalJudge(cfg, path, dtype=dtype)
