import json

import pytest

from esevo_ray.config import load_config
from esevo_ray.pipeline.manifest import Manifest, RunConflict


def test_manifest_records_stages_and_refuses_a_changed_config(tmp_path):
    cfg = load_config(None, ["name=t"])
    m = Manifest.open(tmp_path, cfg)
    out = tmp_path / "out.txt"
    m.start("data", {"src": "x"})
    assert not m.done("data")
    out.write_text("ok")
    m.finish("data", {"out": str(out)}, {"rows": 3})
    saved = json.loads((tmp_path / "manifest.json").read_text())
    assert saved["stages"]["data"]["status"] == "done" and saved["stages"]["data"]["rows"] == 3
    assert saved["config_digest"] == cfg.digest() and "ray" in saved["versions"]

    again = Manifest.open(tmp_path, cfg)
    assert again.done("data") and again.data["resumed"] == 1
    out.unlink()
    assert not again.done("data"), "a stage whose output vanished is not done"

    with pytest.raises(RunConflict, match="--new-run"):
        Manifest.open(tmp_path, load_config(None, ["name=t", "dpo.beta=0.3"]))
