"""Golden fallbacks are loud: a warning (or a failed stage) above max_fallback_fraction."""

import json
import logging

import pytest

from esevo_ray.config import load_config
from esevo_ray.generation.fallback import (
    FallbackError,
    enforce_fallbacks,
    fallback_entry,
    fallback_lines,
)
from esevo_ray.generation.pipeline import generate_pairs

from .conftest import gen_cfg


def _cfg(**extra):
    return gen_cfg(**{"generation.batch_size": 3, "generation.max_attempts": 1, **extra})


def _gen(**overrides):
    return load_config(None, [f"generation.{k}={v}" for k, v in overrides.items()]).generation


def test_entry_counts_every_source_that_is_not_refined():
    counts = {"refined": 3, "golden_parse_failure": 4, "golden_length_rule": 1}
    entry = fallback_entry(counts, _gen(max_fallback_fraction=0.6))
    assert (entry["rows"], entry["fallbacks"], entry["fraction"]) == (8, 5, 0.625)
    assert entry["exceeded"] and entry["threshold"] == 0.6 and entry["policy"] == "warn"
    assert not fallback_entry(counts, _gen(max_fallback_fraction=0.625))["exceeded"]
    assert not fallback_entry({}, _gen(max_fallback_fraction=0))["exceeded"]  # no rows


def test_fail_policy_names_the_counts_and_the_keys_to_change(caplog):
    entry = fallback_entry({"golden_parse_failure": 2}, _gen(fallback_policy="fail"))
    with pytest.raises(FallbackError) as err:
        enforce_fallbacks(entry, "pairs iteration 1")
    text = str(err.value)
    for part in ("2 of 2 pairs (100%)", "golden_parse_failure 2", "generation.guided_json=true",
                 "generation.max_fallback_fraction", "generation.fallback_policy=warn"):  # fmt: skip
        assert part in text, text
    with caplog.at_level(logging.WARNING):
        enforce_fallbacks(fallback_entry({"golden_parse_failure": 2}, _gen()), "pairs")
    assert "golden_parse_failure 2" in caplog.text


def test_pairs_stage_warns_then_fails_in_strict_mode(
    ray_local, tiny_model, extes_contexts, tmp_path, caplog
):
    path, n = extes_contexts
    out = tmp_path / "pairs"
    # The tiny model writes no JSON unguided: every pair falls back to the golden response.
    with caplog.at_level(logging.WARNING, logger="esevo_ray.generation.fallback"):
        manifest = generate_pairs(_cfg(), path, out, model_path=tiny_model, iteration=1)
    entry = manifest["fallback"]
    assert entry == {
        "counts": {"golden_parse_failure": n}, "rows": n, "fallbacks": n, "fraction": 1.0,
        "threshold": 0.5, "policy": "warn", "guided_json": False, "exceeded": True,
    }  # fmt: skip
    assert f"{n} of {n} pairs (100%)" in caplog.text
    assert f"golden_parse_failure {n}" in caplog.text
    assert json.loads((out / "manifest.json").read_text())["fallback"] == entry

    # The same finished pairs, strict: the stage fails, and its manifest says why.
    strict = _cfg(**{"generation.fallback_policy": "fail"})
    with pytest.raises(FallbackError, match=f"golden_parse_failure {n}"):
        generate_pairs(strict, path, out, model_path=tiny_model, iteration=1)
    assert json.loads((out / "manifest.json").read_text())["fallback"]["policy"] == "fail"

    # A threshold the stage stays within: no warning, and the summary line says so.
    ok = _cfg(**{"generation.fallback_policy": "fail", "generation.max_fallback_fraction": 1})
    assert not generate_pairs(ok, path, out, model_path=tiny_model)["fallback"]["exceeded"]
    stages = {"pairs_m1": {"fallback": entry}, "dpo_m1": {"seconds": 1.0}, "pairs_m2": {}}
    [line] = fallback_lines(stages)
    assert line.startswith(f"WARNING pairs_m1: {n} of {n} pairs (100%)")
