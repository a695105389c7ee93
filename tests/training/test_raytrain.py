"""The name of a stage's Ray Train run: what it trains decides it, and nothing else."""

from __future__ import annotations

from esevo_ray.io import write_parquet
from esevo_ray.models import build_tiny_adapter
from esevo_ray.training.common import TrainJob
from esevo_ray.training.raytrain import run_name
from esevo_ray.training.sft import sft_job
from tests.training.tables import sft_table


def test_a_stage_on_the_same_inputs_is_the_same_run(make_cfg, sft_dir, tiny_model, tmp_path):
    cfg = make_cfg()
    job, out = sft_job(cfg, sft_dir), tmp_path / "m0" / "adapter"
    name = run_name(cfg, job, out)
    assert name.startswith(f"{cfg.name}-sft-") and name == run_name(make_cfg(), job, out)
    # How the run is carried out does not change what it trains: it resumes under them.
    for how in ("sft.scaling.max_failures=2", "sft.scaling.inject_failure_at_step=3",
                "sft.logging_steps=7", "sft.scaling.cpus_per_worker=2",
                "dpo.learning_rate=0.5"):  # fmt: skip
        assert run_name(make_cfg(how), job, out) == name, how
    # What it trains does (a setting, the dtype, the data's bytes, the init adapter), and so
    # does the folder it writes (another run directory is another run).
    others = {run_name(make_cfg(o), job, out) for o in ("sft.learning_rate=0.5",
              "model.dtype=auto", "sft.scaling.num_workers=2")}  # fmt: skip
    others.add(run_name(cfg, job, tmp_path / "other" / "m0" / "adapter"))
    adapter = build_tiny_adapter(tiny_model, tmp_path / "init")
    others.add(run_name(cfg, TrainJob("sft", job.model_path, job.data_path, str(adapter)), out))
    write_parquet(sft_table(5), sft_dir / "sft.parquet")
    others.add(run_name(cfg, job, out))
    assert name not in others and len(others) == 6
