"""Model discovery in a run directory, the loopback/API-key rule and the Serve config file."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest
import yaml

from esevo_ray.config import ConfigError, load_config
from esevo_ray.serving.loadgen import Load
from esevo_ray.serving.registry import (
    check_host_key,
    current_name,
    http_url,
    is_loopback,
    resolve,
    scan_models,
)

REPO = Path(__file__).resolve().parents[2]


def _adapter(path: Path, finished: bool = True) -> None:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    if finished:
        (path / "adapter_model.safetensors").write_bytes(b"weights")


def test_scan_finds_finished_iterations_in_order(tmp_path):
    assert list(scan_models(None)) == ["base"]
    assert current_name(scan_models(tmp_path)) is None
    _adapter(tmp_path / "m0" / "adapter")
    _adapter(tmp_path / "m2" / "adapter")
    _adapter(tmp_path / "m10" / "adapter")
    _adapter(tmp_path / "m11" / "adapter", finished=False)  # still training
    _adapter(tmp_path / "mx" / "adapter")
    _adapter(tmp_path / "eval" / "adapter")  # not a model folder
    models = scan_models(tmp_path)
    assert list(models) == ["base", "m0", "m2", "m10"]
    assert models["base"].adapter is None
    assert models["m2"].adapter == str(tmp_path / "m2" / "adapter")
    assert current_name(models) == "m10"
    assert resolve(models, "current") == models["m10"]
    assert resolve(models, "m11") is None


def test_rewritten_adapter_gets_a_new_key(tmp_path):
    _adapter(tmp_path / "m0" / "adapter")
    key = scan_models(tmp_path)["m0"].key
    weights = tmp_path / "m0" / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(b"new weights")
    import os

    os.utime(weights, ns=(1, 10**18))
    assert scan_models(tmp_path)["m0"].key != key


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("::ffff:127.0.0.1", True),  # an IPv4 client as a socket bound to "::" sees it
        ("::ffff:10.0.0.5", False),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_an_ipv4_client_of_a_dual_stack_server_is_on_loopback():
    """Serve's proxy on "::" sees 127.0.0.1 as ::ffff:127.0.0.1: no key is needed for it."""
    try:
        server = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::", 0))
    except OSError as e:
        pytest.skip(f"no dual-stack IPv6 socket here: {e}")
    with server:
        server.listen(1)
        with socket.create_connection(("127.0.0.1", server.getsockname()[1])):
            conn, (peer, *_) = server.accept()
            conn.close()
    assert peer == "::ffff:127.0.0.1" and is_loopback(peer)


def test_urls_and_the_load_generator_take_ipv6_hosts():
    assert http_url("::1", 8000) == "http://[::1]:8000"
    assert http_url("127.0.0.1", 8000) == "http://127.0.0.1:8000"
    Load(http_url("::1", 8000), "m0")  # loopback: accepted
    for url in ("http://10.0.0.5:8000", "http://127.example.org:8000"):
        with pytest.raises(ValueError, match="loopback"):
            Load(url, "m0")


def test_non_loopback_host_needs_a_key(monkeypatch):
    monkeypatch.delenv("ESEVO_SERVE_API_KEY", raising=False)
    check_host_key(load_config(None).serve)  # loopback default: no key needed
    public = load_config(None, ["serve.host=0.0.0.0"]).serve
    with pytest.raises(ConfigError, match=r"serve.host='0.0.0.0'.*\$ESEVO_SERVE_API_KEY"):
        check_host_key(public)
    monkeypatch.setenv("ESEVO_SERVE_API_KEY", "secret")
    check_host_key(public)


def test_esevo_serve_refuses_a_public_host_without_key(monkeypatch, tmp_path):
    from esevo_ray.cli.serve import add_parsers

    monkeypatch.delenv("ESEVO_SERVE_API_KEY", raising=False)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("name: demo\n")
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--config", str(cfg), "--host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="not a loopback address"):
        args.func(args)


def test_serving_a_run_that_is_not_there_is_refused(tmp_path):
    """Not the base model alone, with a database made in a folder of its own."""
    from esevo_ray.errors import UsageError
    from esevo_ray.serving.deploy import build_application

    cfg = load_config(None, [f"output_dir={tmp_path / 'runs'}", "name=demo"])
    with pytest.raises(UsageError, match=r"at .*runs/demo \(<output_dir>/<name> of the config\)"):
        build_application(cfg)
    with pytest.raises(UsageError, match=r"at .*given-one \(the run_dir given\)"):
        build_application(cfg, tmp_path / "given-one")  # cluster/serve.yaml's args.run_dir
    with pytest.raises(UsageError, match=r"at .*elsewhere \(serve.run_dir\)"):
        build_application(cfg.model_copy(update={"serve": cfg.serve.model_copy(
            update={"run_dir": str(tmp_path / "elsewhere")})}))  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_serve_config_file_is_valid():
    from ray.serve.schema import ServeDeploySchema

    from esevo_ray.serving.deploy import build_app

    data = yaml.safe_load((REPO / "cluster" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(data)
    (app,) = schema.applications
    module, attr = app.import_path.split(":")
    assert module == build_app.__module__ and attr == build_app.__name__
    assert (REPO / app.args["config"]).exists()
    assert schema.http_options.host == "127.0.0.1"
