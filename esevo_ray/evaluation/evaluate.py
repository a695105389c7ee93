"""One model on the ESConv evaluation split: responses.parquet, metrics.json and a manifest.

The model is either a local folder (plus an optional LoRA adapter), answered through the Ray
Data engine pipeline, or an OpenAI-compatible endpoint (a served M^t), answered over HTTP
with the same prompt, decoding settings and per-context seeds.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from esevo_ray.config import RunConfig, save_config
from esevo_ray.errors import UsageError
from esevo_ray.evaluation.backbones import resolve_backbone
from esevo_ray.evaluation.endpoint import ChatEndpoint, endpoint_responses, is_endpoint
from esevo_ray.evaluation.metrics import score_responses
from esevo_ray.io import atomic_write_text, check_replaceable

logger = logging.getLogger(__name__)


def default_name(model: str | Path, adapter: str | Path | None = None) -> str:
    """A label for a local model: the adapter's folder (or its parent's for `.../adapter`)."""
    if adapter is None:
        return Path(model).name
    adapter = Path(adapter)
    return (
        adapter.parent.name if adapter.name == "adapter" and adapter.parent.name else adapter.name
    )


def evaluate_model(
    cfg: RunConfig,
    model: str | Path,
    contexts: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    adapter: str | Path | None = None,
    served_model: str | None = None,
    api_key_env: str = "ESEVO_EVAL_API_KEY",
    concurrency: int = 4,
    tokenizer: str | Path | None = None,
    sampling_extras: bool = True,
    bertscore: bool = True,
) -> dict:
    """Generate responses of `model` to the evaluation contexts and score them into `out`.

    Args:
        model: a local Hugging Face model folder, or an http(s) URL of a chat endpoint.
        served_model: the model name at the endpoint (required with a URL).
        concurrency, api_key_env, tokenizer, sampling_extras: endpoint only, see
            `esevo_ray.evaluation.endpoint`.
    Returns:
        The manifest written to `out/manifest.json` (model, source, rows, scores, seconds).
    Raises:
        UsageError: an adapter with an endpoint, an endpoint without `served_model`, or an
            `out` that is not an evaluation folder (`io.check_replaceable`).
        FileNotFoundError: no contexts file, or no model folder.
        EndpointError: the endpoint failed for good.
    """
    contexts, out = Path(contexts), Path(out)
    if not contexts.exists():
        raise FileNotFoundError(f"no evaluation contexts at {contexts}")
    from esevo_ray.evaluation.responses import PARTS

    check_replaceable(out, holds=PARTS, what="model evaluation")  # its files would be replaced
    if bertscore:  # its encoder's settings checked now, not once every response is made
        resolve_backbone(cfg.eval.bertscore_model, cfg.eval.bertscore_num_layers)
    t0 = time.perf_counter()
    if is_endpoint(model):
        if adapter is not None:
            raise UsageError(
                f"--adapter applies to a local model folder, not to the endpoint {model}: "
                "serve M^t there and name it with --served-model"
            )
        if not served_model:
            raise UsageError(f"--served-model is required with the endpoint {model}")
        name = name or served_model
        endpoint = ChatEndpoint(
            str(model), served_model, api_key_env=api_key_env, sampling_extras=sampling_extras
        )
        responses = endpoint_responses(
            cfg, contexts, out, endpoint, model_name=name, concurrency=concurrency,
            tokenizer=tokenizer,
        )  # fmt: skip
        source = {"endpoint": endpoint.url, "served_model": served_model}
    else:
        name, responses, source = _local_responses(cfg, model, contexts, out, name, adapter)
    metrics = score_responses(responses, out, cfg, bertscore=bertscore)
    return _write_manifest(cfg, out, name, source, contexts, metrics, time.perf_counter() - t0)


def _write_manifest(
    cfg: RunConfig, out: Path, name: str, source: dict, contexts: Path, metrics: dict, seconds
) -> dict:
    manifest = {
        "model": name,
        **source,
        "contexts": str(contexts),
        "rows": metrics["settings"]["n"],
        "decoding": cfg.generation.decoding.model_dump(),
        "config_digest": cfg.digest(),
        "seconds": round(seconds, 2),
        "scores": metrics["scores"],
    }
    save_config(cfg, out / "config.yaml")
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2))
    logger.info("evaluated %s on %d contexts into %s", name, manifest["rows"], out)
    return manifest


def _local_responses(
    cfg: RunConfig,
    model: str | Path,
    contexts: Path,
    out: Path,
    name: str | None,
    adapter: str | Path | None,
) -> tuple[str, Path, dict]:
    """Responses of a local model folder (+ adapter): (name, responses path, source)."""
    from esevo_ray.evaluation.responses import PARTS, generate_responses
    from esevo_ray.models import adapter_hash, resolve_model
    from esevo_ray.parts import recorded_producer

    path = resolve_model(str(model))
    name = name or default_name(path, adapter)
    responses = generate_responses(
        cfg, contexts, out, model_path=path, adapter=adapter, model_name=name
    )
    source = {
        "model_path": str(path),
        "adapter": str(adapter) if adapter else None,
        "adapter_hash": adapter_hash(adapter),
        "engine": recorded_producer(responses.parent / PARTS).get("engine"),  # as it ran
    }
    return name, responses, source
