"""The application for the human-evaluation tests, on the transformers fallback engine.

The pages and the session rules do not depend on the engine, and this package is where the
fallback (no vLLM) runs end to end. The application is mounted below a route prefix, as
beside other Serve applications (cluster/serve.yaml): the page finds its API under it.
"""

from __future__ import annotations

import pytest

from tests.serving.conftest import Served, start_served


@pytest.fixture(scope="package")
def served(ray_local, tiny_model, tmp_path_factory) -> Served:
    yield from start_served(tiny_model, tmp_path_factory.mktemp("human_eval"), "hf", "/esc")
