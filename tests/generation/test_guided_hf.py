"""`generation.guided_json` on the hf engine: xgrammar constrains decoding to the JSON schema.

A tiny random model never writes parseable JSON by itself; under the constraint every
reflection and refinement parses, so pairs are refined instead of golden fallbacks.
"""

import dataclasses
import json

import pytest

from esevo_ray import prompts
from esevo_ray.config import DecodingSection, load_config
from esevo_ray.generation.engines import HfEngine
from esevo_ray.generation.pairs import make_pairs
from esevo_ray.generation.parsing import parse_reflection

ROWS = [
    {
        "dialogue_id": f"d{i}",
        "turn_index": 1,
        "source": "esconv",
        "context": [{"role": "user", "content": text}],
        "golden": "That sounds hard. What happened?",
    }
    for i, text in enumerate(["I failed my exam and I feel terrible.", "My partner left me."])
]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return HfEngine(tiny_model)


def _gen(mode: str, guided: bool):
    overrides = {
        "generation.engine": "hf", "generation.reflection_mode": mode,
        "generation.guided_json": guided, "generation.max_attempts": 1,
        "generation.decoding.max_new_tokens": 8,
        # Room for a whole answer: the schema caps its strings at ~850 characters.
        "generation.reflection_decoding.max_new_tokens": 700,
        # The two-step refinement request holds a reflection as long as that, besides the
        # conversation (long in the tiny tokenizer's tokens) and its answer.
        "generation.max_model_len": 4096,
        # Random text is long: keep the length rule from replacing what parsed.
        "generation.length_ratio": 1000,
    }  # fmt: skip
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()]).generation


def _recording(engine, monkeypatch) -> dict[str, list]:
    """The engine's completions by system prompt, with the seeds they were asked with."""
    seen: dict[str, list] = {}
    chat = engine.chat

    def recorded(conversations, decoding, seeds, *args, **kwargs):
        outs = chat(conversations, decoding, seeds, *args, **kwargs)
        for c, seed, out in zip(conversations, seeds, outs, strict=True):
            seen.setdefault(c[0]["content"], []).append((seed, out))
        return outs

    monkeypatch.setattr(engine, "chat", recorded)
    return seen


CAP = prompts.REFINE_SCHEMA["properties"]["refined_response"]["maxLength"]


@pytest.mark.parametrize("mode", ["joint", "two_step"])
def test_guided_json_makes_hf_reflections_parse(engine, mode, monkeypatch):
    """Every constrained answer parses. A random model's strings run to their caps, so a
    refined response often ends at its cap, cut there: that one is no refinement."""
    seen = _recording(engine, monkeypatch)
    pairs = make_pairs(engine, _gen(mode, guided=True), ROWS, iteration=1)
    refine = prompts.REFINE_WITH_REFLECTION_PROMPT if mode == "two_step" else prompts.REFINE_PROMPT
    answers = [json.loads(out.text, strict=False) for _, out in seen[refine]]
    assert len(answers) == len(ROWS)  # one try each, every one valid JSON
    for p, answer in zip(pairs, answers, strict=True):
        cut = len(answer["refined_response"]) >= CAP
        assert p["chosen_source"] == ("golden_parse_failure" if cut else "refined"), answer
        assert p["attempts"] == (2 if mode == "two_step" else 1)
        if not cut:
            assert p["chosen"][0]["content"] == answer["refined_response"].strip()
            assert 1 <= p["evaluation_score"] <= 5
            assert all(p[k] for k in prompts.REFLECTION_KEYS)
    if mode == "two_step":  # the reflections parsed whatever became of the refinements
        assert all(parse_reflection(out.text) for _, out in seen[prompts.REFLECT_PROMPT])


def test_a_failed_refinement_is_asked_again_with_a_new_seed_and_kept(engine, monkeypatch):
    """Appendix A's regeneration: the first answer of each row is unusable (cut by the token
    budget; then one cut at the schema's cap), the second is kept as the refinement."""
    seen = _recording(engine, monkeypatch)
    chat = engine.chat
    answers = iter([
        '{"understanding": {"user_profile": "a stud',  # cut by the token budget
        '{"refined_response": "' + "x" * CAP + '"}',  # cut at the schema's cap
        '{"evaluation_score": 4, "refined_response": "That sounds so hard."}',
        '{"evaluation_score": 3, "refined_response": "I am here with you."}',
    ])  # fmt: skip

    def answering(conversations, *args, **kwargs):
        outs = chat(conversations, *args, **kwargs)
        if conversations[0][0]["content"] != prompts.REFINE_PROMPT:
            return outs
        return [dataclasses.replace(o, text=next(answers)) for o in outs]

    monkeypatch.setattr(engine, "chat", answering)
    cfg = _gen("joint", guided=True).model_copy(update={"max_attempts": 2})
    pairs = make_pairs(engine, cfg, ROWS, iteration=1)
    assert [p["chosen"][0]["content"] for p in pairs] == [
        "That sounds so hard.", "I am here with you."
    ]  # fmt: skip
    assert [p["chosen_source"] for p in pairs] == ["refined", "refined"]
    assert [p["attempts"] for p in pairs] == [2, 2]
    seeds = [seed for seed, _ in seen[prompts.REFINE_PROMPT]]
    assert len(seeds) == 4 and len(set(seeds)) == 4  # each try of each row its own seed


def test_without_the_constraint_the_same_model_falls_back(engine):
    pairs = make_pairs(engine, _gen("joint", guided=False), ROWS, iteration=1)
    assert [p["chosen_source"] for p in pairs] == ["golden_parse_failure"] * len(ROWS)


def test_two_step_never_refines_without_a_reflection(engine, monkeypatch):
    """Eq. 5 refines with the reflection: where it never parsed, the row is a golden
    fallback, and no refinement request (least of all the joint one) is sent for it."""
    systems = []
    chat = engine.chat

    def recorded(conversations, *args, **kwargs):
        systems.extend(c[0]["content"] for c in conversations)
        return chat(conversations, *args, **kwargs)

    monkeypatch.setattr(engine, "chat", recorded)
    pairs = make_pairs(engine, _gen("two_step", guided=False), ROWS, iteration=1)
    assert [p["chosen_source"] for p in pairs] == ["golden_parse_failure"] * len(ROWS)
    assert all(p["attempts"] == 1 for p in pairs)  # the one reflection attempt
    refine = {prompts.REFINE_PROMPT, prompts.REFINE_WITH_REFLECTION_PROMPT}
    assert not refine & set(systems)
    assert systems.count(prompts.REFLECT_PROMPT) == len(ROWS)


@pytest.mark.parametrize("mode", ["joint", "two_step"])
def test_an_empty_rejected_response_is_not_refined(engine, mode, monkeypatch):
    """A model that stops at once has nothing to refine: the row is asked for no reflection
    or refinement, and its chosen side is the golden response, counted apart."""
    chat, asked = engine.chat, []

    def answering(conversations, *args, **kwargs):
        outs = chat(conversations, *args, **kwargs)
        if conversations[0][0]["content"] == prompts.TASK_PROMPT:  # the rejected responses
            return [dataclasses.replace(outs[0], text=" \n"), *outs[1:]]
        asked.extend(c[-1]["content"] for c in conversations)
        return outs

    monkeypatch.setattr(engine, "chat", answering)
    pairs = make_pairs(engine, _gen(mode, guided=True), ROWS, iteration=1)
    assert pairs[0]["chosen_source"] == "golden_empty_rejected"
    assert pairs[0]["chosen"][0]["content"] == ROWS[0]["golden"]
    assert pairs[0]["rejected"][0]["content"] == "" and pairs[0]["attempts"] == 0
    assert pairs[1]["chosen_source"] != "golden_empty_rejected"
    # Only the second row's conversation was sent on (once per step).
    assert asked and not any(ROWS[0]["context"][0]["content"] in text for text in asked)
    assert sum(ROWS[1]["context"][0]["content"] in text for text in asked) == (
        2 if mode == "two_step" else 1
    )


def test_constrained_text_follows_the_schema_key_order(engine):
    msgs = prompts.reflect_messages(ROWS[0]["context"])
    decoding = DecodingSection(max_new_tokens=400)
    [out] = engine.chat([msgs], decoding, [7], prompts.REFLECT_SCHEMA)
    obj = json.loads(out.text, strict=False)  # strict=False: random text has control chars
    assert list(obj) == list(prompts.REFLECT_SCHEMA["properties"])
    assert all(len(v) <= 100 for v in obj.values())  # maxLength holds
    assert out.text.startswith('{"user_profile":"')  # compact, as vLLM without whitespace
    assert parse_reflection(out.text)


def test_reflection_decoding_seed_seeds_the_reflection_requests(engine, monkeypatch):
    seeds: dict[str, list[int]] = {}
    chat = engine.chat

    def recorded(conversations, decoding, request_seeds, *args, **kwargs):
        seeds.setdefault(conversations[0][0]["content"], []).extend(request_seeds)
        return chat(conversations, decoding, request_seeds, *args, **kwargs)

    monkeypatch.setattr(engine, "chat", recorded)
    runs = []
    for seed in (0, 123):
        seeds.clear()
        cfg = _gen("joint", guided=True).model_copy(
            update={"reflection_decoding": DecodingSection(max_new_tokens=700, seed=seed)}
        )
        make_pairs(engine, cfg, ROWS, iteration=1)
        runs.append(dict(seeds))
    task, refine = prompts.TASK_PROMPT, prompts.REFINE_PROMPT
    assert runs[0][task] == runs[1][task]  # the rejected response: generation.decoding.seed
    assert runs[0][refine] != runs[1][refine]
