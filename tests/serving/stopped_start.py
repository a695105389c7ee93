"""Run by test_app.py in a fresh process: `esevo serve` stopped while its replicas start.

In its own Ray instance, since it starts and stops Serve, which the session's instance runs
for the other serving tests. `serve.run` raises KeyboardInterrupt after Serve's controller
and proxy started, as Ctrl-C during a deploy of minutes does. Prints one line:
"RESULT <proxies> <applications>" as Serve reports them afterwards.

    python tests/serving/stopped_start.py MODEL ROOT
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(model: Path, root: Path) -> str:
    import ray
    from ray import serve

    from esevo_ray.config import load_config
    from esevo_ray.serving.deploy import start_app
    from tests.ray_processes import free_port
    from tests.serving.conftest import make_adapter, serve_overrides

    run_dir = root / "runs" / "demo"
    make_adapter(model, run_dir / "m0" / "adapter", seed=1)
    cfg = load_config(None, serve_overrides(model, free_port(), root / "db.sqlite", "hf"))
    ray.init(address="local", num_cpus=2, include_dashboard=False)

    def interrupted(*args, **kwargs):
        assert serve.status().proxies, "Serve had not started"
        raise KeyboardInterrupt

    serve.run = interrupted
    try:
        start_app(cfg, run_dir)
    except KeyboardInterrupt:
        pass
    status = serve.status()
    return f"RESULT {len(status.proxies)} {len(status.applications)}"


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), Path(sys.argv[2])), flush=True)
