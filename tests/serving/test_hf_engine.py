"""The transformers serving engine, driven directly: one request on the model at a time, and
the finish reason vLLM would give."""

from __future__ import annotations

import asyncio
import threading

import pytest

from esevo_ray.config import DecodingSection


@pytest.fixture(scope="module")
def engine(tiny_model):
    from esevo_ray.serving.engine import EngineSettings, HfServeEngine

    return HfServeEngine(EngineSettings(str(tiny_model), "hf"))


def _request(max_tokens: int, seed: int = 0, **decoding) -> dict:
    return {
        "messages": [{"role": "user", "content": "hello"}],
        "decoding": {"temperature": 1.0, "max_new_tokens": max_tokens, **decoding},
        "seed": seed,
    }


async def _reply(engine, request: dict, adapter=None) -> dict:
    async for out in engine.stream(request, adapter):
        return out
    raise AssertionError("the engine yielded nothing")


def test_a_cancelled_request_keeps_the_model_until_its_generate_ends(engine, monkeypatch):
    # Count the threads inside the real `chat` (a client that disconnects cancels its call,
    # but a thread cannot be stopped).
    active, most, guard = 0, 0, threading.Lock()
    chat = engine.base.chat

    def counted(*args, **kwargs):
        nonlocal active, most
        with guard:
            active += 1
            most = max(most, active)
        try:
            return chat(*args, **kwargs)
        finally:
            with guard:
                active -= 1

    monkeypatch.setattr(engine.base, "chat", counted)

    async def main():
        # The random tiny model never ends on its own: 1,000 tokens take about a second.
        long = asyncio.create_task(_reply(engine, _request(1000)))
        while active == 0:
            await asyncio.sleep(0.001)
        long.cancel()
        await asyncio.sleep(0.05)  # the cancellation has reached the engine
        counted_meanwhile = engine.unfinished()
        short = await _reply(engine, _request(4))
        with pytest.raises(asyncio.CancelledError):
            await long
        return counted_meanwhile, short

    counted_meanwhile, short = asyncio.run(main())
    assert most == 1, "a second request ran on the model beside a cancelled one"
    assert counted_meanwhile == 1
    assert engine.unfinished() == 0 and short["output_tokens"] == 4


def test_a_reply_ending_on_its_last_allowed_token_finishes_with_stop(engine):
    # Near-uniform sampling over the vocabulary: some seed ends on the stop token early.
    def at(max_tokens, seed):
        request = _request(max_tokens, seed, temperature=20.0, top_k=0, top_p=1.0)
        return asyncio.run(_reply(engine, request))

    ended = next((s, r) for s in range(50) if (r := at(300, s))["finish"] == "stop")
    seed, reply = ended
    again = at(reply["output_tokens"], seed)
    assert again["text"] == reply["text"]
    assert again["output_tokens"] == reply["output_tokens"]
    assert again["finish"] == "stop"  # as vLLM: the stop token came, not the length cap
    assert at(reply["output_tokens"] - 1, seed)["finish"] == "length"


def test_adapters_are_loras_on_the_one_model_and_answer_as_their_merged_models(
    tiny_model, tmp_path
):
    """An adapter costs its LoRA weights, not a model: with max_adapters 4, an 8B model on
    one GPU would otherwise be held five times."""
    from esevo_ray.generation.engines import HfEngine
    from esevo_ray.models import build_tiny_adapter
    from esevo_ray.serving.engine import EngineSettings, HfServeEngine

    def size(model) -> int:
        return sum(p.numel() for p in model.parameters())

    engine = HfServeEngine(EngineSettings(str(tiny_model), "hf"))
    plain = size(engine.base.model)
    paths = [build_tiny_adapter(tiny_model, tmp_path / f"a{i}", seed=i) for i in (1, 2)]
    # Serve's model ids hold characters PEFT refuses in an adapter's name.
    handles = [asyncio.run(engine.load(f"m{i}@1733.5", str(p))) for i, p in enumerate(paths)]
    assert size(engine.base.model) - plain < plain / 2

    greedy = _request(8, temperature=0)
    messages, decoding = greedy["messages"], DecodingSection(**greedy["decoding"])

    def merged(path=None) -> str:
        return HfEngine(tiny_model, path).chat([messages], decoding, [0])[0].text

    for handle, path in zip(handles, paths, strict=True):
        assert asyncio.run(_reply(engine, greedy, handle))["text"] == merged(path)
    assert asyncio.run(_reply(engine, greedy))["text"] == merged()  # the base, adapters off

    # Serve's LRU drops an adapter (calling __del__): its weights go at the next request,
    # and a request that still holds it gets it back.
    first, second = handles
    first.__del__()
    asyncio.run(_reply(engine, greedy))
    assert engine.adapters() == [second.name]
    assert asyncio.run(_reply(engine, greedy, first))["text"] == merged(paths[0])
    first.__del__()
    second.__del__()
    assert asyncio.run(_reply(engine, greedy))["text"] == merged()
    assert engine.adapters() == [] and size(engine.base.model) == plain


def test_an_adapter_that_fails_to_load_leaves_the_model_as_it_was(tiny_model, tmp_path):
    """PEFT adds an adapter's layers before it loads their weights: another base model's
    adapter (a tensor of another shape) failed to load and left its layers on, so the base
    model (and every adapter after) answered through them, and each retry added more."""
    import shutil

    from safetensors.torch import load_file, save_file

    from esevo_ray.models import build_tiny_adapter
    from esevo_ray.serving.engine import EngineSettings, HfServeEngine

    engine = HfServeEngine(EngineSettings(str(tiny_model), "hf"))
    good = build_tiny_adapter(tiny_model, tmp_path / "good", seed=1)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    weights = load_file(bad / "adapter_model.safetensors")
    key = next(k for k in sorted(weights) if "lora_B" in k)
    weights[key] = weights[key].new_ones(weights[key].shape[0] + 8, weights[key].shape[1])
    save_file(weights, bad / "adapter_model.safetensors")

    greedy = _request(8, temperature=0)
    base = asyncio.run(_reply(engine, greedy))["text"]
    plain = sum(p.numel() for p in engine.base.model.parameters())
    handle = None
    for _ in range(2):  # on the plain model, then beside an attached adapter
        with pytest.raises(RuntimeError, match="size mismatch"):
            asyncio.run(engine.load("m9@1", str(bad)))
        assert engine.adapters() == ([handle.name] if handle else [])
        assert asyncio.run(_reply(engine, greedy))["text"] == base
        if handle is None:
            handle = asyncio.run(engine.load("m1@1", str(good)))
            with_good = asyncio.run(_reply(engine, greedy, handle))["text"]
    assert asyncio.run(_reply(engine, greedy, handle))["text"] == with_good
    handle.__del__()
    asyncio.run(_reply(engine, greedy))
    assert sum(p.numel() for p in engine.base.model.parameters()) == plain


def test_a_cancelled_adapter_load_keeps_the_model_until_attached_then_drops_it(
    tiny_model, tmp_path, monkeypatch
):
    """A client gone while its adapter loads: the model must not serve another request
    while PEFT swaps its layers, and the adapter no one holds must not stay attached."""
    from esevo_ray.models import build_tiny_adapter
    from esevo_ray.serving.engine import EngineSettings, HfServeEngine

    engine = HfServeEngine(EngineSettings(str(tiny_model), "hf"))
    path = build_tiny_adapter(tiny_model, tmp_path / "a", seed=1)
    started, attach = threading.Event(), engine._attach

    def slow_attach(*args):
        started.set()
        threading.Event().wait(0.3)
        attach(*args)

    monkeypatch.setattr(engine, "_attach", slow_attach)

    async def main():
        load = asyncio.create_task(engine.load("m1@1", str(path)))
        while not started.is_set():
            await asyncio.sleep(0.001)
        load.cancel()
        with pytest.raises(asyncio.CancelledError):
            await load
        return engine.adapters(), engine.lock.locked()

    attached, locked = asyncio.run(main())
    assert len(attached) == 1 and not locked  # the load ended with its thread, lock freed
    asyncio.run(_reply(engine, _request(2)))
    assert engine.adapters() == []


def test_a_stop_sequence_ends_generation_and_its_tokens_are_counted(engine):
    """As on vLLM: `generate` ends at the token that completes the stop sequence, which is
    counted. The reply used to run to max_tokens holding the model, and its usage was the
    re-encoded text before the stop (fewer tokens than were generated)."""

    def greedy(max_tokens: int, stop=None) -> dict:
        request = {**_request(max_tokens, temperature=0.0), "stop": stop}
        return asyncio.run(_reply(engine, request))

    full = greedy(40)["text"]
    stop = full[len(full) // 3 : len(full) // 3 + 3]
    reply = greedy(400, [stop])
    assert reply["text"] == full[: full.find(stop)] and reply["finish"] == "stop"
    # Greedy: the reply cut at k tokens is the first k tokens of the whole one.
    completes = next(k for k in range(1, 41) if stop in greedy(k)["text"])
    assert reply["output_tokens"] == completes
    # As vLLM, only the reply is searched: the prompt ends with "\n", and a stop "\n" + the
    # reply's start ended transformers' stop_strings at once.
    across = "\n" + full[:2]
    expected = full[: full.find(across)] if across in full else full
    assert greedy(40, [across])["text"] == expected
