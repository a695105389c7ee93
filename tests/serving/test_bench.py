"""The serving benchmark's clients and the soak, briefly, against the live application."""

from __future__ import annotations

import pytest

from tests.serving.conftest import API_KEY


def test_bench_serve_on_loopback(served):
    from esevo_ray.serving.bench import bench_serve
    from esevo_ray.serving.loadgen import Load

    report = bench_serve(
        Load(served.url, "m0", clients=2, duration_s=1.0, max_tokens=4, api_key=API_KEY)
    )
    assert report["requests"] > 0 and report["errors"] == 0, report
    assert report["output_tokens"] >= report["requests"]  # from each stream's usage chunk
    assert 0 < report["ttft_p50_s"] <= report["latency_p99_s"]
    with pytest.raises(ValueError, match="loopback"):
        Load("http://192.0.2.1:8000", duration_s=0.1)


def test_soak_counts_provoked_disconnects_apart_from_errors(served):
    from esevo_ray.serving.bench import soak
    from esevo_ray.serving.loadgen import Load

    report = soak(
        Load(served.url, "m0", clients=4, duration_s=3.0, max_tokens=32, api_key=API_KEY,
             stream_every=2, disconnect_every=2)
    )  # fmt: skip
    assert report["errors"] == 0, report
    assert report["disconnected_early"] > 0 and report["streamed"] > 0 and report["plain"] > 0
    assert report["rss_before_mb"] > 0 and report["rss_after_mb"] > 0
