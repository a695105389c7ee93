"""The generation benchmark's baselines run what the pipeline runs."""

import pytest

from esevo_ray import schema
from esevo_ray.generation import bench

from .conftest import gen_cfg


def test_the_baselines_decode_greedily_at_temperature_0(tiny_model, extes_contexts):
    """generate(do_sample=True, temperature=0) raises; the engines read it as greedy."""
    path, _ = extes_contexts
    rows = schema.read_table(path, schema.CONTEXTS).to_pylist()[:2]
    cfg = gen_cfg(**{"generation.decoding.temperature": 0, "generation.batch_size": 2})
    naive, _ = bench._naive(cfg, rows, tiny_model)
    direct, _ = bench._direct(cfg, rows, tiny_model)
    assert len(naive) == 2 and len(direct) == 1  # one per context / batch
    assert sum(tokens for _, tokens in naive) > 0 and direct[0][1] > 0


def test_the_naive_loop_answers_the_contexts_the_engines_answer(tiny_model, extes_contexts,
                                                                monkeypatch):  # fmt: skip
    """It sent each context whole, the engines each fit to generation.max_context_tokens: its
    longer prompts cost it prefill, and the pipeline's lead over it came out larger."""
    from transformers import GenerationMixin

    path, _ = extes_contexts
    rows = schema.read_table(path, schema.CONTEXTS).to_pylist()[:3]
    long = {**rows[0], "context": [{"role": ("user", "assistant")[i % 2], "content": "word " * 60}
                                   for i in range(9)]}  # fmt: skip
    # P_task takes about 520 of the tiny tokenizer's tokens.
    cfg = gen_cfg(**{"generation.max_context_tokens": 700, "generation.decoding.max_new_tokens": 4})
    prompts, generate = [], GenerationMixin.generate

    def recorded(self, *args, **kwargs):
        prompts.append(kwargs["input_ids"].shape[1])
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", recorded)
    bench._naive(cfg, [long, *rows[1:]], tiny_model)
    assert len(prompts) == 3 and max(prompts) <= 700, prompts
    assert prompts[0] > 600  # the long context is cut, not dropped


def test_steady_state_of_several_actors_leaves_out_each_ones_first_batch():
    """Two actors, each 768 tokens every 10 s (153.6 tok/s): the second actor's first batch,
    made before the first one arrived, was counted as made after it (228 tok/s)."""
    batches = [(10.0, 768), (10.1, 768), (20.0, 768), (20.1, 768)]
    assert bench.steady(batches)["tok_per_s"] == pytest.approx(2304 / 10.1)  # one actor's rule
    two = bench.steady(batches, paced_tokens=2 * 768)
    assert two["tok_per_s"] == pytest.approx(152.1, abs=0.1)
    assert two["startup_s"] == 10.0 and two["total_tok_per_s"] == pytest.approx(4 * 768 / 20.1)


def test_fewer_contexts_than_two_batches_are_refused_before_any_run(tiny_model, extes_contexts):
    """One batch left no batch after the first to time: the steady tok/s and both ratios
    came out NaN, which every GPU config (batch 256) gave at the default -n 128."""
    from esevo_ray.errors import UsageError

    path, _ = extes_contexts
    cfg = gen_cfg(**{"generation.batch_size": 256})
    with pytest.raises(UsageError, match=r"-n 128.*fewer than two batches.*use -n 512 or more"):
        bench.bench_generate(cfg, path, tiny_model, n=128, repeats=1)
    # Two actors, one batch each: no actor had a batch after its first (0 tok/s came out).
    two = gen_cfg(**{"generation.batch_size": 2, "generation.num_actors": 2})
    with pytest.raises(UsageError, match=r"for each of generation.num_actors=2.*use -n 8 or more"):
        bench.bench_generate(two, path, tiny_model, n=4, repeats=1)
