"""One batch of seed contexts -> preference pairs (Section 2.2.1 and Appendix A).

Stage 1 (rejected): y = M^t(P_task || C_n).
Stage 2 (chosen): reflect on the user and refine y, as one joint call (Appendix E.1) or as
two calls (Eq. 4 then Eq. 5). A parse failure (or, under guided decoding, a refined response
cut at the schema's cap) is regenerated up to `max_attempts` tries in all, then the golden
response is used; a refined response more than `length_ratio` times longer than the rejected
or the golden one, or the rejected one unchanged, is replaced by the golden response, and so is
the refinement of an empty rejected response, which is not asked for. `chosen_source` records
which.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Sequence
from typing import Any

from esevo_ray import prompts
from esevo_ray.config import GenerationSection
from esevo_ray.generation.engines import Engine, TokenCounter
from esevo_ray.generation.parsing import ParseError, parse_refinement, parse_reflection
from esevo_ray.prompts import REFLECTION_KEYS
from esevo_ray.schema import HUMAN_REFERENCE
from esevo_ray.turns import fit_turns


def seed_of(key: str) -> int:
    """A sampling seed drawn from `key`, whatever a request's batch or actor (both engines
    sample each request with its own)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")


def request_seed(
    base: int, dialogue_id: str, turn_index: int, iteration: int, stage: str, attempt: int
) -> int:
    """The seed of one generation request, by what it is (`seed_of`)."""
    return seed_of(f"{base}:{dialogue_id}:{turn_index}:{iteration}:{stage}:{attempt}")


def fit_context(
    engine: TokenCounter,
    context: list[dict],
    cfg: GenerationSection,
    *,
    system_prompt: str = prompts.TASK_PROMPT,
    refine: bool = True,
    fit_under: Sequence[str] = (),
) -> list[dict]:
    """Drop the oldest turns until every request built on C_n fits the model.

    The task request (`system_prompt`, P_task by default, || C_n) must fit
    `max_context_tokens`, and so must C_n under each prompt of `fit_under` (the dialogue a
    shorter prompt keeps is then no longer than theirs); for preference pairs (`refine`) the
    refinement request, with room
    for the rejected response inside it and the refined answer after it, must fit
    `max_model_len` too; in two-step mode it also holds the reflection, as long as
    `reflection_decoding.max_new_tokens`. An evaluation response (`refine=False`) is only
    the task request. The last turn always stays.
    """
    refine_budget = cfg.refinement_budget()
    analysis = {} if cfg.reflection_mode == "two_step" else None
    # Each prompt once: P_task's own requests are not counted twice per turn dropped.
    under = tuple(dict.fromkeys((system_prompt, *fit_under)))

    def fits(ctx: list[dict]) -> bool:
        return all(
            engine.count_tokens(prompts.task_messages(ctx, p)) <= cfg.max_context_tokens
            for p in under
        ) and (
            not refine
            or engine.count_tokens(prompts.refine_messages(ctx, "", analysis)) <= refine_budget
        )

    context, ok = fit_turns(context, fits)
    # A single turn too long on its own keeps its most recent words, and a word too long on
    # its own (a pasted log, no spaces) its last characters.
    last = context[-1]["content"].split()
    while not ok and len(last) > 8:
        last = last[len(last) // 2 :]
        context = [*context[:-1], {**context[-1], "content": " ".join(last)}]
        ok = fits(context)
    text = context[-1]["content"]
    while not ok and len(text) > 1:
        text = text[len(text) // 2 :]
        context = [*context[:-1], {**context[-1], "content": text}]
        ok = fits(context)
    if not ok:
        tasks = [engine.count_tokens(prompts.task_messages(context, p)) for p in under]
        said = f"the task request takes {max(tasks)} tokens" + (
            " (with the prompt it is fit under as well, P_task)" if len(under) > 1 else ""
        )
        if refine:
            request = engine.count_tokens(prompts.refine_messages(context, "", analysis))
            said += (
                f", the refinement request {request} (budget {refine_budget} from "
                f"generation.max_model_len={cfg.max_model_len})"
            )
        raise ValueError(
            f"the prompts do not fit with the last turn cut to one character: {said}; "
            f"generation.max_context_tokens is {cfg.max_context_tokens}"
        )
    return context


def words(text: str) -> int:
    return len(text.split())


def _wording(text: str) -> list[str]:
    """The words of `text`, whatever their case and the punctuation and spaces around them."""
    return re.findall(r"[\w']+", text.lower())


# A "refinement" that says the response needs none ("N/A", "No changes needed.", "Same as
# the original response.") in place of a response, matched on its words (`_wording`).
_NO_REFINEMENT = re.compile(
    r"n a|na|none|nothing|unchanged|no|"
    r"(no|nothing)( (changes?|refinements?|revisions?|edits?|improvements?))?"
    r"( (is|are))?( (needed|required|necessary|to (change|refine|add)))?|"
    r"(it is |it's )?(the )?same( as)?( the)?( (original|above|rejected|previous))?"
    r"( (response|reply|one))?|keep( it| the (original|response))?( as it is| as is)?"
)
# A short one that talks about the response instead of being one ("Keep the original
# response.", "Not needed.", "The reply is already appropriate.", "Nothing needs to be
# changed."), found in its words. A genuine reply may say alike ("No need to apologize",
# "It is not necessary to have all the answers", "Your initial response is normal"), hence
# the nouns and the places each phrase must have.
_CHANGES = r"changes?|refinements?|revisions?|edits?|improvements?|modifications?"
_ABOUT_THE_RESPONSE = re.compile(
    r"^n a\b|"
    r"\b(the|this|that) (original|target|rejected|previous|above|given|initial) "
    r"(response|reply|answer|is|was)\b|"
    r"\b(the|this|that) (response|reply|answer) (is|was|looks|seems|reads) (already )?"
    r"(appropriate|fine|good|perfect|great|adequate|effective|empathetic|supportive)\b|"
    rf"^(no|not|none|nothing)( ({_CHANGES}|further|more|is|are|really))* "
    r"(needed|necessary|required)\b|"
    rf"\bno ({_CHANGES})( (is|are))? (needed|necessary|required)\b|"
    rf"\b(needs?|requires?) no ({_CHANGES})|"
    rf"\b(does not|doesn't|do not|don't) (need|require) (any )?({_CHANGES})|"
    r"\bnothing (needs to|has to|to) (be )?(changed|refined|revised|improved|change|refine)\b|"
    r"\bno need to (change|refine|revise|edit|improve|modify|alter)"
    r"( (it|anything|the (response|reply|answer)))?$|"
    r"\b(keep|leave) (it|the (original|response|reply|answer)) "
    r"(as it is|as is|unchanged|the same)\b|"
    r"^(it's|it is) (fine|good|perfect|great) as (it )?is$"
)
_ABOUT_MAX_WORDS = 15


def choose(refined: str | None, rejected: str, golden: str, length_ratio: float) -> tuple[str, str]:
    """Appendix A filters: (chosen text, chosen_source).

    A refinement that returns the rejected response unchanged (small models copy it when
    they score it 5/5), or changes only its case or punctuation, makes no pair: DPO learns
    little from it, and its SFT term would train on the model's own answer. It is replaced
    by the golden response, as Appendix A replaces the other unusable ones. So is the
    refinement of an empty rejected response (nothing was refined, and any answer is more
    than twice as long), apart in `golden_empty_rejected` so that a model that stops at once
    shows in the fallback counts. A "refinement" that says none is needed ("N/A", "No
    changes needed.", "The original response is already appropriate."), or holds no word,
    leaves the response unchanged as well.
    """
    if not rejected.strip():
        return golden, "golden_empty_rejected"
    if refined is None:
        return golden, "golden_parse_failure"
    wording = _wording(refined)
    said = " ".join(wording)
    if (
        not wording
        or wording == _wording(rejected)
        or _NO_REFINEMENT.fullmatch(said)
        or (len(wording) <= _ABOUT_MAX_WORDS and _ABOUT_THE_RESPONSE.search(said))
    ):
        return golden, "golden_unchanged"
    if words(refined) > length_ratio * words(rejected) or words(refined) > length_ratio * words(
        golden
    ):
        return golden, "golden_length_rule"
    return refined, "refined"


def _retry(
    engine: Engine,
    cfg: GenerationSection,
    build: list[list[dict] | None],
    parse,
    seed_of,
    json_schema: dict,
) -> tuple[list[Any], list[int], list[int]]:
    """Generate and parse each request (a None one is not made), regenerating failures up to
    `max_attempts` times.

    Returns the parsed values (None where every attempt failed), attempts and output tokens.
    """
    n = len(build)
    parsed: list[Any] = [None] * n
    attempts, tokens = [0] * n, [0] * n
    pending = [i for i, request in enumerate(build) if request is not None]
    for attempt in range(cfg.max_attempts):
        if not pending:
            break
        outs = engine.chat(
            [build[i] for i in pending],
            cfg.reflection_decoding,
            [seed_of(i, attempt) for i in pending],
            json_schema if cfg.guided_json else None,
        )
        still = []
        for i, out in zip(pending, outs, strict=True):
            attempts[i] += 1
            tokens[i] += out.output_tokens
            try:
                parsed[i] = parse(out.text)
            except ParseError:
                still.append(i)
        pending = still
    return parsed, attempts, tokens


def make_pairs(
    engine: Engine, cfg: GenerationSection, rows: list[dict], iteration: int
) -> list[dict]:
    """Turn context rows (CONTEXTS schema) into pair rows (PAIRS schema)."""
    t0 = time.perf_counter()
    seed = cfg.reflection_decoding.seed  # the rejected response's comes from cfg.decoding

    def seed_of(stage: str):
        return lambda i, attempt: request_seed(
            seed, rows[i]["dialogue_id"], rows[i]["turn_index"], iteration, stage, attempt
        )

    contexts, task, rejected = _rejected(engine, cfg, rows, iteration)
    reject_texts = [r.text.strip() for r in rejected]
    n = len(rows)
    asked = [bool(text) for text in reject_texts]  # an empty rejected response is not refined

    reflection_tokens, attempts = [0] * n, [0] * n
    reflections: list[dict | None] = [None] * n
    two_step = cfg.reflection_mode == "two_step"
    if two_step:
        build = [
            prompts.reflect_messages(c) if ask else None
            for c, ask in zip(contexts, asked, strict=True)
        ]
        reflections, attempts, reflection_tokens = _retry(
            engine, cfg, build, parse_reflection, seed_of("reflect"), prompts.REFLECT_SCHEMA
        )
    # Eq. 5 refines with the reflection: a row whose reflection never parsed is not refined
    # (its chosen side is the golden response, golden_parse_failure).
    build = [
        None
        if not asked[i] or two_step and reflections[i] is None
        else prompts.refine_messages(contexts[i], reject_texts[i], reflections[i])
        for i in range(n)
    ]
    # Guided decoding closes the refined response at the schema's cap, mid-sentence: such an
    # answer is regenerated like one that does not parse.
    cap = prompts.REFINE_SCHEMA["properties"]["refined_response"]["maxLength"]
    parse = functools.partial(parse_refinement, max_chars=cap if cfg.guided_json else None)
    refined, refine_attempts, refine_tokens = _retry(
        engine, cfg, build, parse, seed_of("refine"), prompts.REFINE_SCHEMA
    )

    seconds = (time.perf_counter() - t0) / max(len(rows), 1)
    out = []
    for i, row in enumerate(rows):
        ref = refined[i] or {}
        chosen, source = choose(
            ref.get("refined_response"), reject_texts[i], row["golden"], cfg.length_ratio
        )
        out.append(
            {
                **_lineage(row, iteration, engine),
                "prompt": task[i],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": reject_texts[i]}],
                "chosen_source": source,
                **{k: (reflections[i] or ref).get(k, "") for k in REFLECTION_KEYS},
                "evaluation_score": ref.get("evaluation_score"),
                "feedback": ref.get("feedback", ""),
                "attempts": attempts[i] + refine_attempts[i],
                "prompt_tokens": rejected[i].prompt_tokens,
                "rejected_tokens": rejected[i].output_tokens,
                "reflection_tokens": reflection_tokens[i] + refine_tokens[i],
                "generation_seconds": seconds,
            }
        )
    return out


def _rejected(engine: Engine, cfg: GenerationSection, rows: list[dict], iteration: int):
    """y = M^t(P_task || C_n) for each row: (fitted contexts, task requests, completions)."""
    contexts = [fit_context(engine, r["context"], cfg) for r in rows]
    task = [prompts.task_messages(c) for c in contexts]
    seeds = [
        request_seed(cfg.decoding.seed, r["dialogue_id"], r["turn_index"], iteration, "rejected", 0)
        for r in rows
    ]
    return contexts, task, engine.chat(task, cfg.decoding, seeds)


def make_reference_pairs(
    engine: Engine, cfg: GenerationSection, rows: list[dict], iteration: int
) -> list[dict]:
    """{HM, P} pairs (Table 5): the same rejected response as `make_pairs`, chosen := golden.

    No reflection is generated; rows without a golden response must be left out before.
    """
    t0 = time.perf_counter()
    _, task, rejected = _rejected(engine, cfg, rows, iteration)
    seconds = (time.perf_counter() - t0) / max(len(rows), 1)
    return [
        {
            **_lineage(row, iteration, engine),
            "prompt": messages,
            "chosen": [{"role": "assistant", "content": row["golden"]}],
            "rejected": [{"role": "assistant", "content": out.text.strip()}],
            "chosen_source": HUMAN_REFERENCE,
            **dict.fromkeys(REFLECTION_KEYS, ""),
            "feedback": "",
            "attempts": 0,
            "prompt_tokens": out.prompt_tokens,
            "rejected_tokens": out.output_tokens,
            "reflection_tokens": 0,
            "generation_seconds": seconds,
        }
        for row, messages, out in zip(rows, task, rejected, strict=True)
    ]


def _lineage(row: dict, iteration: int, engine: Engine) -> dict:
    """The columns that say which context and which M^t a pair comes from."""
    return {
        "dialogue_id": row["dialogue_id"],
        "turn_index": row["turn_index"],
        "iteration": iteration,
        "source": row["source"],
        "golden": row["golden"],
        "generator_model": engine.model_id,
        "adapter_hash": engine.adapter_hash,
    }
