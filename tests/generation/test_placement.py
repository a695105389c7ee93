"""GPU placement of the engine actors: the rule, the check before start, and Ray's devices."""

import json
import time
from pathlib import Path

import pytest

from esevo_ray.config import ConfigError, load_config
from esevo_ray.generation.pipeline import generate_pairs
from esevo_ray.generation.placement import Placement, PlacementError, check_capacity, resolve
from esevo_ray.parts import PART_GLOB
from tests.ray_processes import result_line


def _gen(*overrides):
    return load_config(None, [f"generation.{o}" for o in overrides]).generation


@pytest.mark.parametrize(
    "overrides, nodes, expected",
    [
        (["engine=vllm"], [0.0], Placement("cpu", 0.0)),
        (["engine=vllm"], [0.0, 4.0], Placement("cuda", 1.0)),  # a head without GPUs
        (["engine=vllm", "tensor_parallel_size=2"], [2.0], Placement("cuda", 2.0, 2)),
        (["engine=hf"], [1.0], Placement("cuda", 1.0)),
        (["engine=hf", "device=cpu"], [8.0], Placement("cpu", 0.0)),
        (["engine=hf", "gpus_per_actor=0.5"], [1.0], Placement("cuda", 0.5)),
        (["engine=hf", "device=cuda"], [0.0], Placement("cuda", 1.0)),
        # vLLM engines sharing a GPU, each within its share: as under device auto
        (["device=cuda", "gpus_per_actor=0.5", "vllm={gpu_memory_utilization: 0.45}"], [1.0],
         Placement("cuda", 0.5)),
    ],
)  # fmt: skip
def test_the_placement_rule(overrides, nodes, expected):
    gen = _gen(*overrides)
    assert resolve(gen, gen.engine, nodes) == expected


def test_capacity_counts_whole_actors_per_node():
    two = Placement("cuda", 2.0, 2)
    check_capacity(two, 2, [2.0, 2.0], "generation")
    with pytest.raises(PlacementError, match=r"GPUs per node: 1, 1\); set generation.device=cpu"):
        check_capacity(two, 1, [1.0, 1.0], "generation")  # 2 GPUs in all, but not on one node
    check_capacity(Placement("cuda", 0.1), 10, [1.0], "generation")
    with pytest.raises(PlacementError, match="lower generation.num_actors"):
        check_capacity(Placement("cuda", 1.0), 3, [2.0], "generation")


@pytest.mark.parametrize(
    "overrides, nodes, expected",
    [
        ([], [0.0], Placement("cpu", 0.0)),
        ([], [0.0, 1.0], Placement("cuda", 1.0)),  # the GPU is reserved, not just used
        (["serve.device=cpu"], [1.0], Placement("cpu", 0.0)),
        (["serve.gpus_per_replica=0.5", "serve.num_replicas=2",
          "serve.vllm={gpu_memory_utilization: 0.45}"], [1.0], Placement("cuda", 0.5)),
    ],
)  # fmt: skip
def test_serve_replicas_follow_the_same_rule(overrides, nodes, expected):
    from esevo_ray.serving.deploy import replica_placement

    assert replica_placement(load_config(None, overrides).serve, nodes) == expected


def test_serve_replicas_that_do_not_fit_name_the_serve_keys():
    from esevo_ray.serving.deploy import replica_placement

    serve = load_config(None, ["serve.num_replicas=2"]).serve
    with pytest.raises(
        PlacementError, match=r"serve: 2 engine actor.*gpus_per_replica=0.*lower serve.num_replicas"
    ):
        replica_placement(serve, [1.0])  # Serve would wait forever for the second GPU


@pytest.mark.parametrize(
    "overrides, nodes, match",
    [
        # device auto turns cuda on a cluster with GPUs, where the rules of device: cuda hold
        (["generation.gpus_per_actor=0"], [1.0], r"generation.gpus_per_actor is 0: .* sees none"),
        (["generation.tensor_parallel_size=2", "generation.gpus_per_actor=1"], [2.0],
         r"tensor_parallel_size 2 needs 2 GPUs per actor, but generation.gpus_per_actor is 1"),
        (["generation.gpus_per_actor=0.5", "generation.num_actors=2"], [1.0],
         r"gpu_memory_utilization 0.92 .* set generation.vllm.gpu_memory_utilization to at "
         r"most 0.5"),
        (["eval.judge.backend=vllm", "eval.judge.gpus_per_actor=0.5"], [1.0],
         r"eval.judge.gpus_per_actor 0.5 shares a GPU .* too little free: set "
         r"eval.judge.gpus_per_actor=1"),
        (["serve.gpus_per_replica=0.5", "serve.num_replicas=2"], [1.0],
         r"set serve.vllm.gpu_memory_utilization to at most 0.5"),
        (["serve.gpus_per_replica=0"], [0.0, 1.0], r"serve.gpus_per_replica is 0"),
    ],
)  # fmt: skip
def test_gpus_that_cannot_hold_the_engine_stop_before_any_actor_starts(overrides, nodes, match):
    from esevo_ray.evaluation.local_judge import KEY
    from esevo_ray.generation.placement import place
    from esevo_ray.serving.deploy import replica_placement

    cfg = load_config(None, overrides)
    with pytest.raises(PlacementError, match=match):
        if overrides[0].startswith("serve."):
            replica_placement(cfg.serve, nodes)
        elif overrides[0].startswith("eval.judge."):
            place(cfg.eval.judge, cfg.eval.judge.backend, 1, KEY, gpus_by_node=nodes)
        else:
            gen = cfg.generation
            place(gen, gen.engine, gen.num_actors, "generation", gpus_by_node=nodes)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["serve.device=cuda", "serve.gpus_per_replica=0"], "gpus_per_replica > 0"),
        (["generation.engine=hf", "generation.tensor_parallel_size=2"], "needs engine vllm"),
        (["generation.device=cpu", "generation.tensor_parallel_size=2"], "needs engine vllm"),
        (["generation.device=cuda", "generation.gpus_per_actor=0"], "gpus_per_actor > 0 "),
        (
            [
                "generation.device=cuda",
                "generation.tensor_parallel_size=2",
                "generation.gpus_per_actor=1",
            ],
            r"gpus_per_actor > 0 and >= tensor_parallel_size \(2\)",
        ),
        (["generation.vllm={tensor_parallel_size: 2}"], "set generation.tensor_parallel_size"),
        (["eval.judge.backend=hf", "eval.judge.tensor_parallel_size=2"], "needs engine vllm"),
    ],
)
def test_inconsistent_placement_keys_fail_at_load(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


@pytest.mark.parametrize(
    "overrides",
    [["generation.gpus_per_actor=2"], ["generation.engine=hf", "generation.gpus_per_actor=2"],
     ["generation.gpus_per_actor=1.5"],
     ["generation.tensor_parallel_size=2", "generation.gpus_per_actor=4"],
     ["eval.judge.backend=vllm", "eval.judge.gpus_per_actor=2"]],
)  # fmt: skip
def test_gpus_an_engine_does_not_use_are_refused_at_load(overrides):
    """They were reserved for each actor and sat idle, kept from the other actors (1.5 GPUs
    Ray refused only once the stage started, after the stages before it)."""
    with pytest.raises(ConfigError, match=r"is more than an engine uses"):
        load_config(None, overrides)
    tp = load_config(None, ["generation.tensor_parallel_size=2", "generation.gpus_per_actor=2"])
    assert tp.generation.gpus_per_actor == 2


@pytest.mark.timeout(120)  # the bug this catches is Ray waiting forever for a GPU
def test_no_gpu_in_the_cluster_stops_the_stage_at_once(
    ray_local, tiny_model, extes_contexts, tmp_path
):
    path, _ = extes_contexts
    cfg = load_config(None, ["generation.engine=hf", "generation.gpus_per_actor=1"])
    with pytest.raises(PlacementError) as err:
        generate_pairs(cfg, path, tmp_path / "pairs", model_path=tiny_model)
    message = str(err.value)
    assert "1 engine actor(s) x 1 GPU(s) each do not fit" in message
    assert "GPUs per node: 0" in message and "set generation.device=cpu" in message
    assert not list((tmp_path / "pairs").glob(PART_GLOB))


@pytest.mark.timeout(120)
def test_a_local_judge_on_cuda_without_gpus_stops_at_once(ray_local, tiny_model):
    from esevo_ray.evaluation.local_judge import LocalJudge

    cfg = load_config(None, ["eval.judge.backend=hf", "eval.judge.device=cuda"]).eval.judge
    with pytest.raises(PlacementError, match="eval.judge: 1 engine actor"):
        LocalJudge(cfg, tiny_model)


@pytest.mark.timeout(300)
def test_declared_gpus_give_each_actor_its_own_device(tiny_model, extes_contexts, tmp_path):
    """In a fresh process: Ray declares 2 GPUs; two hf actors, one GPU each (see the script)."""
    path, n = extes_contexts
    script = Path(__file__).with_name("declared_gpus.py")
    line = result_line(script, tiny_model, path, tmp_path / "pairs", cwd=tmp_path)
    result = json.loads(line.removeprefix("RESULT "))

    placement = result["placement"]
    assert (placement["device"], placement["gpus"], result["rows"]) == ("cpu", 1.0, n)
    actors = placement["actors"]
    assert len({a["pid"] for a in actors}) == 2, actors  # both actors did work
    devices = sorted(a["cuda_visible_devices"] for a in actors)
    assert devices == ["0", "1"], actors  # distinct, each exactly the GPU Ray reserved
    assert all([a["cuda_visible_devices"]] == a["gpu_ids"] for a in actors)
    assert all(a["dtype"] == "float32" for a in actors)  # the dtype each engine ran in
    # The local judge follows the same rule: its own actor with its own GPU.
    judge = result["judge_actor"]
    assert judge["gpu_ids"] == [judge["cuda_visible_devices"]] and result["judge_verdicts"] == 1
    assert result["judge_joined"] == {"device": "cuda", "gpus": 1.0, "tensor_parallel_size": 1}
    # Both stages gave their GPUs back after returning (the script waits for it, else fails).
    assert {"pairs_freed_s", "judge_freed_s"} <= set(result)
    # device auto -> cuda on a cluster with GPUs; a CPU torch is named, not a CUDA crash.
    assert "PlacementError" in result["auto_error"]
    assert "sees no CUDA device" in result["auto_error"]


def test_cpus_per_actor_no_node_holds_stop_at_once_and_fewer_actors_warn(caplog):
    """CPUs were never checked: 4 CPUs per actor on 2-CPU nodes waited without end."""
    import logging

    from esevo_ray.generation.placement import check_cpus

    with pytest.raises(PlacementError, match=r"generation.cpus_per_actor is 4, and no node .*"
                       r"\(2 CPUs, 2 CPUs\): lower generation.cpus_per_actor"):  # fmt: skip
        check_cpus(4, 0, 1, [(2, 0), (2, 0)], "generation")
    # A GPU actor needs its CPUs on a node with the GPU.
    with pytest.raises(PlacementError, match=r"\(16 CPUs \+ 0 GPUs, 2 CPUs \+ 1 GPUs\)"):
        check_cpus(4, 1, 1, [(16, 0), (2, 1)], "generation")
    with caplog.at_level(logging.WARNING, logger="esevo_ray.generation.placement"):
        check_cpus(1, 0, 3, [(2, 0)], "generation")
    assert "2 of the 3 engine actors fit this Ray cluster at once" in caplog.text
    check_cpus(0, 0, 8, [], "generation")  # no CPUs asked: nothing to check


@pytest.mark.timeout(120)  # the bug this catches is Ray waiting for CPUs no node has
def test_cpus_the_cluster_lacks_stop_the_stage_at_once(
    ray_local, tiny_model, extes_contexts, tmp_path
):
    path, _ = extes_contexts
    cfg = load_config(None, ["generation.engine=hf", "generation.cpus_per_actor=64"])
    with pytest.raises(PlacementError, match="generation.cpus_per_actor is 64"):
        generate_pairs(cfg, path, tmp_path / "pairs", model_path=tiny_model)
    assert not list((tmp_path / "pairs").glob(PART_GLOB))


def test_an_actor_waiting_for_cpus_other_work_holds_is_said(ray_local, caplog):
    """A job whose actor waits for CPUs another job holds logged nothing until it started."""
    import logging

    import ray

    from esevo_ray.generation.placement import place

    @ray.remote(num_cpus=2)
    class Holder:
        def ready(self) -> bool:
            return True

    holder = Holder.remote()
    ray.get(holder.ready.remote(), timeout=120)  # CPUs an earlier test still holds: a failure
    deadline = time.monotonic() + 30  # the cluster's view of free resources lags a little
    while ray.available_resources().get("CPU", 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    cfg = load_config(None, ["generation.engine=hf"]).generation
    try:
        with caplog.at_level(logging.WARNING, logger="esevo_ray.generation.placement"):
            place(cfg, "hf", 1, "generation", cpus=1)
    finally:
        ray.kill(holder)
    assert "generation: one engine actor needs 1 CPU (0 free) now" in caplog.text
