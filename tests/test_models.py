from transformers import AutoModelForCausalLM, AutoTokenizer

from esevo_ray.models import adapter_hash


def test_tiny_model_loads_and_speaks_chatml(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "I feel sad."}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4
    assert model.config.head_dim == 64


def test_adapter_hash_tracks_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"one")
    h1 = adapter_hash(tmp_path / "a")
    (tmp_path / "a" / "adapter_model.safetensors").write_bytes(b"two")
    assert adapter_hash(tmp_path / "a") != h1 and adapter_hash(None) == ""


def test_default_model_converts_from_packaged_gguf(tmp_path, monkeypatch):
    import torch

    from esevo_ray.models import GGUF_FILE, gguf_source, prepare_default_model

    monkeypatch.setenv("ESEVO_CACHE_DIR", str(tmp_path))
    out = prepare_default_model(dtype="float32")
    assert out.is_relative_to(tmp_path) and (out / "model.safetensors").exists()
    assert "quantization_config" not in (out / "config.json").read_text()
    converted = AutoModelForCausalLM.from_pretrained(out)
    src = gguf_source()
    original = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=GGUF_FILE)
    ids = AutoTokenizer.from_pretrained(out)("I lost my job today.", return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, original(ids).logits)
    assert prepare_default_model() == out  # second call reuses the folder
    # SmolLM2's pre-tokenizer splits digits first: "\n\n" stays one token before "1".
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("\n\n1.")["input_ids"] == [1116, 33, 30]
    assert tokenizer.decode(tokenizer("Top 10:\n  1. eat")["input_ids"]) == "Top 10:\n  1. eat"
    # A folder of an older conversion (before the stamp) is converted again.
    (out / "esevo_conversion.json").unlink()
    (out / "tokenizer.json").write_text("{}")
    assert prepare_default_model() == out
    assert AutoTokenizer.from_pretrained(out)("\n\n1.")["input_ids"] == [1116, 33, 30]


def test_merged_models_are_cached_per_base_folder_and_adapter_config(tmp_path, monkeypatch):
    """Two bases of one name, or one adapter under another LoRA scale, are other models:
    each gets its own merged folder, never another's weights."""
    import json

    from safetensors.torch import load_file

    from esevo_ray.models import build_tiny_adapter, build_tiny_model, merge_adapter

    monkeypatch.setenv("ESEVO_CACHE_DIR", str(tmp_path / "cache"))
    base_a = build_tiny_model(tmp_path / "a" / "base", seed=0)
    base_b = build_tiny_model(tmp_path / "b" / "base", seed=1)
    adapter = build_tiny_adapter(base_a, tmp_path / "adapter", seed=1)
    merged_a, merged_b = merge_adapter(base_a, adapter), merge_adapter(base_b, adapter)
    assert merged_a != merged_b and merge_adapter(base_a, adapter) == merged_a  # cached

    def embed(folder):
        return load_file(folder / "model.safetensors")["model.embed_tokens.weight"]

    assert not (embed(merged_b) == embed(base_a)).all()  # B's merge is not A's base
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 64}))
    assert merge_adapter(base_a, adapter) not in (merged_a, merged_b)


def test_actors_merging_one_adapter_at_once_merge_it_once(tmp_path, monkeypatch):
    """Each engine actor loaded the base model to merge the same adapter, together: host
    memory held the model once per actor (and each wrote a copy, all but one deleted)."""
    import threading

    import transformers

    from esevo_ray.models import build_tiny_adapter, build_tiny_model, merge_adapter

    monkeypatch.setenv("ESEVO_CACHE_DIR", str(tmp_path / "cache"))
    base = build_tiny_model(tmp_path / "base", seed=0)
    adapter = build_tiny_adapter(base, tmp_path / "adapter", seed=1)
    loads, load = [], transformers.AutoModelForCausalLM.from_pretrained

    def counted(*args, **kwargs):
        loads.append(args[0])
        threading.Event().wait(0.5)  # the others arrive while this one merges
        return load(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", counted)
    merged: list = []
    threads = [threading.Thread(target=lambda: merged.append(merge_adapter(base, adapter)))
               for _ in range(3)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(set(merged)) == 1 and len(merged) == 3
