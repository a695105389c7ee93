"""Per-stage time breakdown: phases recorded while a stage is collected, the rest is `other`."""

import pytest

from esevo_ray import profile


def test_records_only_inside_a_collected_stage():
    profile.record("compute", 5.0)  # no stage running: nothing to add to
    with profile.collect() as outer:
        profile.record("startup", 1.5)
        with profile.collect() as inner:
            profile.record("io", 0.5)
        profile.record("compute", 2.0)
    assert outer == {"startup": 1.5, "compute": 2.0, "io": 0.5}
    assert inner == {"startup": 0.0, "compute": 0.0, "io": 0.5}
    with pytest.raises(ValueError, match="unknown phase"):
        profile.record("warmup", 1.0)


def test_breakdown_and_table():
    parts = profile.breakdown({"startup": 2.04, "compute": 5.0, "io": 1.0}, wall=10.0)
    assert parts == {"startup": 2.0, "compute": 5.0, "io": 1.0, "other": 2.0}
    assert profile.breakdown({"compute": 12.0}, wall=10.0)["other"] == 0.0
    text = profile.table(
        {"sft_m0": {"seconds": 10.0, "profile": parts}, "data": {"seconds": 1.0}, "x": {}}
    )
    assert "| sft_m0 | 10.0 | 2.0 | 5.0 | 1.0 | 2.0 |" in text
    assert "| data | 1.0 | 0.0 | 0.0 | 0.0 | 0.0 |" in text
    assert "| **total** | **11.0** | **2.0** | **5.0** | **1.0** | **2.0** |" in text
