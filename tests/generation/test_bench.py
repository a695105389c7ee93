"""The generation benchmark's baselines run what the pipeline runs."""

from esevo_ray import schema
from esevo_ray.generation import bench

from .conftest import gen_cfg


def test_the_baselines_decode_greedily_at_temperature_0(tiny_model, extes_contexts):
    """generate(do_sample=True, temperature=0) raises; the engines read it as greedy."""
    path, _ = extes_contexts
    rows = schema.read_table(path, schema.CONTEXTS).to_pylist()[:2]
    cfg = gen_cfg(**{"generation.decoding.temperature": 0, "generation.batch_size": 2})
    naive = bench._naive(cfg, rows, tiny_model)
    direct = bench._direct(cfg, rows, tiny_model)
    assert len(naive) == 3 and len(direct) == 1  # start-up, then one per context / batch
    assert sum(tokens for _, tokens in naive) > 0 and direct[0][1] > 0


def test_fewer_contexts_than_two_batches_are_refused_before_any_run(tiny_model, extes_contexts):
    """One batch left no batch after the first to time: the steady tok/s and both ratios
    came out NaN, which every GPU config (batch 256) gave at the default -n 128."""
    import pytest

    from esevo_ray.errors import UsageError

    path, _ = extes_contexts
    cfg = gen_cfg(**{"generation.batch_size": 256})
    with pytest.raises(UsageError, match=r"-n 128.*fewer than two batches.*use -n 512 or more"):
        bench.bench_generate(cfg, path, tiny_model, n=128, repeats=1)
