"""Cluster files parse and point at configs and entry points that exist."""

import re
from pathlib import Path

import pytest
import yaml

from esevo_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "cluster").glob("*"))
REFS = re.compile(r"(jobs/[\w-]+\.py|configs/[\w.-]+\.yaml)")


def test_cluster_folder_has_the_expected_recipes():
    names = {p.name for p in FILES}
    assert {
        "kuberay-rayjob.yaml",
        "kuberay-raycluster.yaml",
        "ray-up-gpu.yaml",
        "runtime-env.yaml",
        "single-l40.sh",
    } <= names


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix == ".yaml"], ids=lambda p: p.name)
def test_yaml_parses_and_references_exist(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs)
    for ref in REFS.findall(path.read_text()):
        assert (REPO / ref).exists(), f"{path.name} references missing {ref}"
        if ref.startswith("configs/"):
            load_config(REPO / ref)


def test_kuberay_manifests_are_rayjob_and_raycluster():
    job = yaml.safe_load((REPO / "cluster/kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"].startswith("ray.io/")
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["python", "jobs/self_evolve.py"] and (REPO / entry[1]).exists()
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]["HF_HUB_OFFLINE"] == "1"
    gpu = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cluster = yaml.safe_load((REPO / "cluster/kuberay-raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == "2.60.0"


def test_shell_recipe_references_exist():
    text = (REPO / "cluster/single-l40.sh").read_text()
    for ref in REFS.findall(text):
        assert (REPO / ref).exists(), ref
    assert "RAY_AUTH_MODE=token" in text and "127.0.0.1" in text


def test_jobs_are_thin_and_document_their_launch_command():
    for job in sorted((REPO / "jobs").glob("*.py")):
        text = job.read_text()
        assert "ray job submit" in text, f"{job.name} lacks its launch command"
        assert len(text.splitlines()) < 40, f"{job.name} holds logic that belongs in the package"
