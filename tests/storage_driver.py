"""Run by test_storage.py in a fresh process, connected to a two-node cluster whose second
node mounts an empty folder of its own over HIDDEN. Prints one JSON line.

    python tests/storage_driver.py ADDRESS MODEL CONTEXTS SHARED HIDDEN
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(address: str, model: str, contexts: str, shared: str, hidden: str) -> dict:
    import ray

    from esevo_ray.config import load_config
    from esevo_ray.generation.pipeline import generate_pairs
    from esevo_ray.storage import StorageError, check_shared

    ray.init(address=address)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    shared_dir, hidden_dir = Path(shared), Path(hidden)
    out: dict = {
        "nodes": len(nodes),
        "worker": [
            n["NodeID"][:8] for n in nodes if "node:__internal_head__" not in n["Resources"]
        ],
        "head": [n["NodeID"][:8] for n in nodes if "node:__internal_head__" in n["Resources"]],
        "shared": check_shared("probe", writes=[shared_dir / "out"], reads=[model, contexts]),
    }
    try:
        check_shared("probe", writes=[hidden_dir / "out"], reads=[model, hidden_dir / "data.bin"])
    except StorageError as e:
        out["hidden"] = str(e)
    cfg = load_config(None, [
        "generation.engine=hf", "generation.max_context_tokens=1000", "model.dtype=float32",
        "generation.num_actors=2", "generation.cpus_per_actor=1", "generation.batch_size=1",
        "generation.decoding.max_new_tokens=4", "generation.reflection_decoding.max_new_tokens=4",
    ])  # fmt: skip
    try:
        generate_pairs(cfg, contexts, hidden_dir / "pairs", model_path=model)
    except StorageError as e:
        out["pairs"] = str(e)
    out["files"] = sorted(p.name for d in (shared_dir, hidden_dir) for p in d.rglob("*"))
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:6])))
