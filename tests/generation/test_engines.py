"""vLLM serves M^t either as merged weights or as a LoRA request: the same model either way."""

from dataclasses import replace

import pytest

from esevo_ray.config import DecodingSection
from esevo_ray.generation.engines import EngineOptions, VllmEngine
from esevo_ray.models import build_tiny_adapter

GREEDY = DecodingSection(temperature=0, max_new_tokens=8)
MESSAGES = [
    [{"role": "user", "content": "I feel sad about my exam."}],
    [{"role": "user", "content": "hello"}],
]


def _texts(engine):
    return [c.text for c in engine.chat(MESSAGES, GREEDY, [1, 2])]


def test_vllm_lora_request_matches_merged_weights(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ESEVO_CACHE_DIR", str(tmp_path / "cache"))
    # Rank 16: over vLLM's default max_lora_rank, so the engine must read it from the adapter.
    adapter = build_tiny_adapter(tiny_model, tmp_path / "a", seed=3, rank=16)
    merged = EngineOptions(dtype="float32", max_model_len=1024, lora_mode="merge")
    as_request = _texts(VllmEngine(tiny_model, adapter, replace(merged, lora_mode="adapter")))
    merged_engine = VllmEngine(tiny_model, adapter, merged)
    assert merged_engine.adapter_hash and (tmp_path / "cache" / "merged").exists()
    assert as_request == _texts(merged_engine)
    assert as_request != _texts(VllmEngine(tiny_model, options=merged))


def test_hf_engine_treats_a_vanishing_temperature_as_greedy(tiny_model):
    from esevo_ray.generation.engines import HfEngine

    engine = HfEngine(tiny_model)
    tiny = DecodingSection(temperature=2.3e-234, max_new_tokens=GREEDY.max_new_tokens)
    # A request seen in the wild (schemathesis): sampling at this temperature overflowed.
    assert [c.text for c in engine.chat(MESSAGES, tiny, [1, 2])] == _texts(engine)


def test_a_temperature_vllm_raises_is_raised_alike_on_the_hf_engine():
    """vLLM samples any temperature in (1e-5, 0.01) at 0.01; the HF engine sampled at the
    temperature asked: another distribution for the same setting."""
    import torch

    from esevo_ray.generation.engines import sampling_processors

    logits = torch.tensor([[2.0, 1.0, 0.0]])

    def warped(temperature: float) -> torch.Tensor:
        decoding = DecodingSection(temperature=temperature, top_k=0, top_p=1.0)
        return sampling_processors(decoding, [0])[0](None, logits.clone())

    assert torch.equal(warped(0.001), warped(0.01))
    assert not torch.equal(warped(0.02), warped(0.01))


def test_hf_engine_samples_each_row_from_its_own_seed(tiny_model):
    """As on vLLM, a sampled reply depends on its seed, not on the rows batched with it (a
    resumed stage batches the rows left to do otherwise)."""
    from esevo_ray.generation.engines import HfEngine

    engine = HfEngine(tiny_model)
    sampled = DecodingSection(temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=12)
    longer = [{"role": "user", "content": "I failed my driving test again and they laughed."}]
    alone = engine.chat([MESSAGES[1]], sampled, [7])[0].text
    assert engine.chat(MESSAGES, sampled, [3, 7])[1].text == alone
    assert engine.chat([longer, MESSAGES[1]], sampled, [5, 7])[1].text == alone
    others = {engine.chat([MESSAGES[1]], sampled, [seed])[0].text for seed in (8, 9, 10)}
    assert others - {alone}  # other seeds, other draws: it samples


def test_row_sampler_draws_from_the_rows_distribution():
    """argmax(logits + its Gumbel noise) over many seeds lands on each token as often as
    softmax(logits) says, and never on a masked one."""
    import math

    import torch

    from esevo_ray.generation.engines import RowSampler

    n = 4000
    logits = torch.tensor([math.log(0.7), math.log(0.2), math.log(0.1), -math.inf])
    chosen = RowSampler(list(range(n)))(None, logits.repeat(n, 1)).argmax(dim=-1)
    share = torch.bincount(chosen, minlength=4) / n
    assert share[3] == 0
    assert torch.allclose(share[:3], torch.tensor([0.7, 0.2, 0.1]), atol=0.03), share


def test_the_repetition_penalty_counts_a_rows_own_tokens_not_its_padding():
    """transformers' penalty on a left-padded row also lowers the pad token (often a stop
    token): the row's distribution then depends on the longer prompts beside it."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from esevo_ray.generation.engines import RowRepetitionPenalty

    pad = 0
    own = torch.tensor([[5, 3, 5]])  # the row alone, unpadded
    padded = torch.tensor([[pad, pad, 5, 3, 5], [7, 2, 9, 4, 6]])  # beside a longer prompt
    scores = torch.randn(2, 10, generator=torch.Generator().manual_seed(0))
    alone = RepetitionPenaltyLogitsProcessor(1.5)(own, scores[:1].clone())
    ours = RowRepetitionPenalty(1.5, [2, 0])(padded, scores.clone())
    torch.testing.assert_close(ours[:1], alone)  # the pad token (0) is left alone
    torch.testing.assert_close(ours[1:], RepetitionPenaltyLogitsProcessor(1.5)(
        padded[1:], scores[1:].clone()))  # fmt: skip
    assert not torch.equal(RepetitionPenaltyLogitsProcessor(1.5)(padded, scores.clone())[:1],
                           alone)  # fmt: skip


def test_chat_wants_one_seed_per_conversation(tiny_model):
    from esevo_ray.generation.engines import HfEngine

    engine = HfEngine(tiny_model)
    with pytest.raises(ValueError, match="2 conversations but 1 seeds"):
        engine.chat(MESSAGES, GREEDY, [1])
    assert engine.chat([], GREEDY, []) == []


def test_vllm_guided_json_is_compact(tiny_model):
    """No whitespace between JSON tokens under a schema: vLLM takes the flag from the engine's
    config only, and a model free to pad a guided answer fills the token budget with it."""
    import json
    import re

    from esevo_ray import prompts

    engine = VllmEngine(tiny_model, options=EngineOptions(dtype="float32", max_model_len=1024))
    msgs = [prompts.reflect_messages([{"role": "user", "content": t}]) for t in ("sad", "hi")]
    sampled = DecodingSection(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=400)
    finished = 0
    for out in engine.chat(msgs, sampled, [5, 6], prompts.REFLECT_SCHEMA):
        skeleton = re.sub(r'"(?:[^"\\]|\\.)*"', '""', out.text)  # string contents removed
        assert not re.search(r"\s", skeleton), out.text
        assert out.text.startswith('{"user_profile":"')
        if out.output_tokens < sampled.max_new_tokens:  # finished, not cut off
            obj = json.loads(out.text, strict=False)
            assert list(obj) == list(prompts.REFLECT_SCHEMA["properties"])
            finished += 1
    assert finished, "no answer finished within the token budget: the JSON went unchecked"


@pytest.mark.parametrize("temperature", [0.0, 1e-6, 9e-6])
def test_a_temperature_below_greedy_below_decodes_greedily_on_vllm(temperature):
    """vLLM raises a temperature in (0, 0.01) to 0.01 before its greedy check: 1e-6 sampled
    on vLLM, while the HF engine decoded it greedily."""
    from vllm.sampling_params import SamplingType

    from esevo_ray.generation.engines import sampling_params

    params = sampling_params(DecodingSection(temperature=temperature), seed=3)
    assert params.sampling_type == SamplingType.GREEDY and params.temperature == 0.0
    assert sampling_params(DecodingSection(temperature=0.02), seed=3).temperature == 0.02
