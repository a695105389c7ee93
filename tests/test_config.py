import re
from pathlib import Path

import pytest

from esevo_ray.config import ConfigError, RunConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.dpo.lora.r == 8 and cfg.dpo.lora.alpha == 16


def test_gpu_configs_carry_the_paper_hyperparameters():
    for path in CONFIGS:
        if not path.stem.endswith("-l40"):  # the paper's backbones (smollm2-gpu: own rates)
            continue
        cfg = load_config(path)
        assert cfg.sft.learning_rate == 5e-6 and cfg.sft.warmup_ratio == 0.01
        assert cfg.sft.per_device_batch_size == 4 and cfg.sft.gradient_accumulation_steps == 2
        assert cfg.sft.num_epochs == 2 and cfg.sft.early_stopping_patience == 3
        d = cfg.generation.decoding
        assert (d.temperature, d.top_p, d.top_k, d.repetition_penalty) == (0.9, 0.8, 50, 1.2)
        assert (cfg.dpo.beta, cfg.dpo.gamma) == (0.1, 1.0)
        assert cfg.dpo.scaling.use_gpu and cfg.generation.engine == "vllm"
        assert "GB" in path.read_text().split("name:")[0], "memory estimate missing"


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndpo:\n  betta: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "dpo.betta" in str(e.value) and str(path) in str(e.value)


def test_overrides_apply_and_validate(tmp_path):
    cfg = load_config(
        None, ["dpo.beta=0.5", "generation.decoding.top_k=7", "data.seed_sources=[esconv]"]
    )
    assert cfg.dpo.beta == 0.5 and cfg.generation.decoding.top_k == 7
    with pytest.raises(ConfigError, match="generation.num_actors"):
        load_config(None, ["generation.num_actors=0"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, ["dpo.beta"])
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(None, ["nope=1"])
    for bad in ("name=a/b", "name="):  # the key and the override named, not the whole config
        with pytest.raises(ConfigError, match=rf"  name: .* \(from the override '{bad}'\)"):
            load_config(None, [bad])


def test_a_misspelled_key_is_traced_to_its_override_with_the_nearest_key(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  max_eval_dialogs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, ["data.max_train_dialogs=10", "genration.engine=hf", "dpo.beta=x"])
    lines = str(e.value).splitlines()
    assert lines[0] == f"invalid config {path} with its overrides:"
    assert (
        "  unknown key 'data.max_eval_dialogs'; did you mean 'data.max_eval_dialogues'?" in lines
    )  # in the file: no override named
    assert (
        "  unknown key 'data.max_train_dialogs' (from the override 'data.max_train_dialogs=10'); "
        "did you mean 'data.max_train_dialogues'?"
    ) in lines
    assert any(x.startswith("  unknown key 'genration' (from the override 'genration.engine=hf')"
                            "; did you mean 'generation'?") for x in lines)  # fmt: skip
    assert any(
        x.startswith("  dpo.beta:") and "(from the override 'dpo.beta=x')" in x for x in lines
    )


def test_only_the_override_that_set_a_value_is_blamed_for_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("serve:\n  max_tokens: 5000\n")
    with pytest.raises(ConfigError) as e:  # a check of the whole section, not of the port
        load_config(path, ["serve.port=9000"])
    assert "max_tokens (5000) must be below" in str(e.value)
    assert "from the override" not in str(e.value)
    with pytest.raises(ConfigError, match=r"seed_sources.1: .* \(from the override 'data.seed"):
        load_config(None, ["data.seed_sources=[esconv, bogus]"])  # an item inside its value


def test_a_yaml_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ndata: [\n")
    with pytest.raises(
        ConfigError, match=rf'(?s)not valid YAML.*in "{re.escape(str(path))}", line 3'
    ):
        load_config(path)


def test_an_alias_inside_what_it_names_is_a_config_error(tmp_path):
    """It ended in a RecursionError traceback."""
    path = tmp_path / "loop.yaml"
    path.write_text("name: x\nserve:\n  vllm: &a {a: *a}\n")
    with pytest.raises(ConfigError, match=r"loop.yaml holds a YAML alias inside what it names"):
        load_config(path)


def test_a_key_given_twice_is_refused_but_a_merged_key_may_be_overridden(tmp_path):
    """PyYAML keeps the last of two equal keys: a second `dpo:` block replaced the first
    one whole, with what it merged in (GPUs, bf16), and nothing said so."""
    path = tmp_path / "twice.yaml"
    head = "sft: &train\n  learning_rate: 1.0e-5\n  bf16: true\ndpo:\n  <<: *train\n"
    path.write_text(head + "  learning_rate: 2.0e-5\n")
    cfg = load_config(path)
    assert (cfg.dpo.learning_rate, cfg.dpo.bf16) == (2.0e-5, True)
    path.write_text(head + "dpo:\n  beta: 0.2\n")
    with pytest.raises(ConfigError, match=r"(?s)key 'dpo' is given twice \(first on line 4\)"
                       r".*line 6"):  # fmt: skip
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_env_vars_expand_in_paths(monkeypatch, caplog):
    monkeypatch.setenv("ESEVO_MODELS", "/models")
    monkeypatch.delenv("ESEVO_NOT_SET", raising=False)
    cfg = load_config(
        None, ["model.path=${ESEVO_MODELS}/m", "serve.crisis_text=Call $ESEVO_MODELS"]
    )
    assert cfg.model.path == "/models/m"
    assert cfg.serve.crisis_text == "Call $ESEVO_MODELS"  # text, not a path: kept as written
    monkeypatch.setenv("HOME", "/home/someone")  # not a folder named "~" in the working dir
    assert load_config(None, ["output_dir=~/runs"]).output_dir == "/home/someone/runs"
    # An unset variable: refused where the run would be written, named elsewhere.
    with pytest.raises(
        ConfigError, match=r"output_dir '\$\{ESEVO_NOT_SET\}/runs': \$ESEVO_NOT_SET is not set"
    ):
        load_config(None, ["output_dir=${ESEVO_NOT_SET}/runs"])
    with pytest.raises(
        ConfigError, match=r"output_dir 'runs/\$\{ESEVO_MODELS': '\$\{ESEVO_MODELS' has no"
    ):
        load_config(None, ["output_dir=runs/${ESEVO_MODELS"])
    cfg = load_config(None, ["data.extes_path=$ESEVO_NOT_SET/ExTES.json"])
    assert cfg.data.extes_path == "$ESEVO_NOT_SET/ExTES.json"
    assert "data.extes_path '$ESEVO_NOT_SET/ExTES.json': $ESEVO_NOT_SET is not set" in caplog.text


def test_digest_changes_with_config():
    assert RunConfig().digest() == RunConfig().digest()
    assert RunConfig().digest() != load_config(None, ["dpo.beta=0.2"]).digest()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dpo.trl={beta: 0.3}", "trl.beta and beta set the same TRL setting"),
        ("sft.trl={num_train_epochs: 1}", "trl.num_train_epochs and num_epochs"),
        ("dpo.trl={loss_weights: [1, 2]}", "trl.loss_weights and gamma"),
        ("dpo.trl={rpo_alpha: 1.0}", r"unknown DPOConfig keys \['rpo_alpha'\]"),
        ("sft.trl={bogus: 1}", r"unknown SFTConfig keys \['bogus'\]"),
        ("dpo.gamma=-0.5", "dpo.gamma: Input should be greater than or equal to 0"),
    ],
)
def test_training_settings_are_checked_when_the_config_loads(override, message):
    # A typo here used to surface only when DPO started, after data, SFT and generation.
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_a_known_trl_key_passes_through():
    cfg = load_config(None, ["dpo.trl={label_smoothing: 0.1}"])
    assert cfg.dpo.trl == {"label_smoothing": 0.1}


def test_an_override_of_one_stage_leaves_a_merged_twin_alone(tmp_path):
    # `dpo: {<<: *train}` makes dpo.lora the very dict of sft.lora in the loaded YAML.
    path = tmp_path / "merged.yaml"
    path.write_text(
        "sft: &train\n  lora: {r: 8}\n  scaling: {num_workers: 1}\ndpo:\n  <<: *train\n"
    )
    cfg = load_config(path, ["dpo.lora.r=16", "sft.scaling.num_workers=2"])
    assert (cfg.sft.lora.r, cfg.dpo.lora.r) == (8, 16)
    assert (cfg.sft.scaling.num_workers, cfg.dpo.scaling.num_workers) == (2, 1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.path=@models/x", r"'model.path=@models/x': the value is not valid YAML"),
        ("generation.vllm={a: 1", "the value is not valid YAML"),
        ("sft.eval_steps=0", "sft.eval_steps: Input should be greater than or equal to 1"),
        ("data.max_eval_dialogues=-1", "data.max_eval_dialogues: Input should be greater"),
        ("data.alpaca_samples=-1", "data.alpaca_samples: Input should be greater"),
        ("dpo.lora.r=0", "dpo.lora.r: Input should be greater"),
        ("generation.reflection_decoding.max_new_tokens=5000", "leave no room for the refine"),
        # MiniLM's layer 6 is no default for another encoder (roberta-large's is 17)
        ("eval.bertscore_model=/m/roberta-large", "set eval.bertscore_num_layers too"),
        # a run folder outside output_dir (name=.. with output_dir=/runs is /)
        ("name=..", "name: .*must be a folder name"),
        ("name=.", "name: .*must be a folder name"),
        ("name=001", r"\(got 1\).*; quote it as YAML text: \"name='001'\""),
        # accepted once, these failed only when the judge or the trainer used them
        ("eval.judge.top_p=5", "eval.judge.top_p: Input should be less"),
        ("eval.judge.max_tokens=0", "eval.judge.max_tokens: Input should be greater"),
        ("eval.judge.dimensions=[]", "eval.judge.dimensions: List should have at least 1"),
        ("eval.judge.timeout_s=-1", "eval.judge.timeout_s: Input should be greater"),
        ("sft.learning_rate=.inf", "sft.learning_rate: Input should be a finite number"),
        ("dpo.beta=.inf", "dpo.beta: Input should be a finite number"),
        # vLLM would get these twice, inside an actor
        (
            "generation.vllm={max_model_len: 4096}",
            r"generation.vllm may not set max_model_len "
            r"\(set generation.max_model_len\)",
        ),
        ("serve.vllm={enable_lora: false}", r"serve.vllm may not set enable_lora \(set by"),
        # accepted, then the replica reserved one GPU and vLLM failed in it, restarted by Serve
        (
            "serve.vllm={tensor_parallel_size: 2}",
            r"serve: .*vllm.tensor_parallel_size 2: a "
            "replica serves its engine on one GPU",
        ),
        # generation ran in bf16 while training, merging and its record said model.dtype
        ("generation.vllm={dtype: bfloat16}", r"may not set dtype \(set model.dtype\)"),
        ("generation.vllm={a: 1, a: 2}", "key 'a' is given twice"),
        # a local judge with no room left for the request judged the last turn alone
        (
            "eval.judge={backend: vllm, max_tokens: 2048, max_model_len: 2048}",
            r"max_tokens \(2048\) leaves no room for the request",
        ),
        ("eval.judge.dimensions=[empathy, empathy]", "dimensions names one twice"),
        # M1 for m1 left the model out of the human study without a word
        ("serve.human_eval.models=[m0, M1, m01]", r"\['M1', 'm01'\] are not served names"),
    ],
)
def test_bad_values_are_config_errors_that_name_them(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_two_step_room_is_checked_as_fit_context_counts_it():
    """2 x 1000 + 40 fits 2048 by 8 tokens, but not with the reflection's JSON margin: every
    context would then fail to fit at generation time instead of at load."""
    tokens = ["generation.reflection_decoding.max_new_tokens=1000",
              "generation.decoding.max_new_tokens=40", "generation.max_context_tokens=1000"]  # fmt: skip
    assert load_config(None, tokens).generation.refinement_budget() > 0  # joint: room enough
    with pytest.raises(ConfigError, match=r"2 x .*\(1000\) \+ .*\(40\) \+ 16 leave no room"):
        load_config(None, [*tokens, "generation.reflection_mode=two_step"])


def test_a_folder_given_as_config_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)


def test_another_bertscore_encoder_with_its_layer_loads_and_survives_a_round_trip():
    cfg = load_config(
        None, ["eval.bertscore_model=/m/roberta-large", "eval.bertscore_num_layers=17"]
    )
    again = type(cfg).model_validate(cfg.model_dump(mode="json"))  # as Ray workers rebuild it
    assert again.eval.bertscore_num_layers == 17


def test_the_human_eval_page_takes_no_message_the_chat_api_refuses():
    with pytest.raises(ConfigError, match=r"max_message_chars \(2000\) must not exceed max_chars"):
        load_config(None, ["serve.max_chars=1000"])
    assert load_config(None, ["serve.max_chars=1000", "serve.human_eval.max_message_chars=1000"])


@pytest.mark.parametrize(
    "override", ["eval.judge_samples=off", "sft.learning_rate=on", "serve.port=true",
                 "data.max_train_dialogues=yes", "generation.decoding.temperature=false"],
)  # fmt: skip
def test_a_boolean_is_no_number(override):
    """pydantic read true as 1 and false as 0: `eval.judge_samples=off` loaded as 0, which
    judges every context, the opposite of what was typed."""
    key = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: .*a boolean where none is allowed"):
        load_config(None, [override])


def test_a_text_or_choice_field_keeps_saying_what_it_takes():
    with pytest.raises(ConfigError, match=r"name: Input should be a valid string .*quote it"):
        load_config(None, ["name=no"])
    with pytest.raises(ConfigError, match=r"serve.dtype: Input should be 'auto', 'bfloat16'"):
        load_config(None, ["serve.dtype=true"])


def test_booleans_stay_where_a_field_takes_them():
    cfg = load_config(None, ["sft.bf16=true", "dpo.gradient_checkpointing=yes",
                             "sft.trl={packing: true}", "generation.vllm={enforce_eager: true}"])  # fmt: skip
    assert cfg.sft.bf16 is True and cfg.dpo.gradient_checkpointing is True
    assert cfg.sft.trl == {"packing": True} and cfg.generation.vllm == {"enforce_eager": True}


def test_a_field_of_several_types_is_one_line_under_its_own_key():
    """`sft.bf16=Auto` gave two lines under keys no config has, `sft.bf16.bool` and
    `sft.bf16.literal['auto']`; a rule over a whole section printed all of it as "got"."""
    with pytest.raises(ConfigError) as e:
        load_config(None, ["sft.bf16=Auto"])
    lines = str(e.value).splitlines()[1:]
    assert lines == [
        "  sft.bf16: Input should be a valid boolean, unable to interpret input, or Input "
        "should be 'auto' (got 'Auto') (from the override 'sft.bf16=Auto')"
    ]
    with pytest.raises(ConfigError) as e:
        load_config(None, ["generation.decoding.max_new_tokens=5000"])
    assert "must not exceed max_model_len (2048)" in str(e.value)
    assert "got {" not in str(e.value) and len(str(e.value)) < 300
