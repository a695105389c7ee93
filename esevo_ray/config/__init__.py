"""Typed run configuration: one YAML file per run, validated before anything starts.

Every section forbids unknown keys, so a typo fails on the driver in a second, naming
the key and the file, instead of after Ray workers have started.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from difflib import get_close_matches
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, field_validator

from esevo_ray.config.base import ConfigError, Section
from esevo_ray.config.evaluation import JUDGE_DIMENSIONS, EvalSection, JudgeDimension, JudgeSection
from esevo_ray.config.sections import (
    DataSection,
    DecodingSection,
    EvolveSection,
    GenerationSection,
    ModelSection,
)
from esevo_ray.config.serving import DEFAULT_CRISIS_TEXT, HumanEvalSection, ServeSection
from esevo_ray.config.training import (
    NOT_TRAINED,
    DpoSection,
    LoraSection,
    ScalingSection,
    TrainSection,
)

__all__ = [
    "ConfigError", "Section", "ModelSection", "DataSection", "DecodingSection",
    "GenerationSection", "EvolveSection", "LoraSection", "ScalingSection", "TrainSection",
    "DpoSection", "NOT_TRAINED", "JudgeDimension", "JUDGE_DIMENSIONS", "JudgeSection",
    "EvalSection", "DEFAULT_CRISIS_TEXT", "HumanEvalSection", "ServeSection", "RunConfig",
    "load_config", "save_config", "apply_overrides", "parse_override",
]  # fmt: skip

logger = logging.getLogger(__name__)


class RunConfig(Section):
    name: str = "esevo"
    output_dir: str = "runs"
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    generation: GenerationSection = GenerationSection()
    sft: TrainSection = TrainSection()
    dpo: DpoSection = DpoSection()
    evolve: EvolveSection = EvolveSection()
    eval: EvalSection = EvalSection()
    serve: ServeSection = ServeSection()

    @field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not name or "/" in name or "\\" in name or "\0" in name or name in (".", ".."):
            raise ValueError(
                "must be a folder name: not empty, not '.' or '..', without '/', '\\' or NUL"
            )
        return name

    def digest(self) -> str:
        """A short stable hash of the resolved config, recorded in manifests."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last
    silently, so a second `dpo:` block would replace the first (and what it merged in) whole.
    Keys a `<<` merge brings in may still be overridden by the mapping's own."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: construct_mapping names it
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line {first})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def _load_yaml(stream) -> Any:
    return yaml.load(stream, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into a key path and a YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        return parts, _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        example = f"'{key}=\"{raw}\"'" if '"' not in raw else "key='...'"
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}); "
                          f"quote it as a YAML string, e.g. {example}") from None  # fmt: skip


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each `a.b.c=value` in `data`. Sections on the way are copied first: a YAML merge
    (`dpo: {<<: *train}`) shares them between sections, and an override of one must not
    change the other."""
    for text in overrides:
        parts, value = parse_override(text)
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
            node[part] = node = dict(child)
        node[parts[-1]] = value
    return data


_ENV_VAR = re.compile(r"\$(\w+)|\$\{([^}]*)\}")
_UNCLOSED = re.compile(r"\$\{[^}]*$")  # `${VAR` with no `}`: expandvars keeps it as text


def _is_path_key(key: str) -> bool:
    return key == "path" or key.endswith(("_path", "_dir", "_model"))


def _expand_env(node: Any, where: str = "") -> Any:
    """Expand `$VAR` / `${VAR}` and a leading `~` in path values (`path`, `*_path`, `*_dir`,
    `*_model` keys: model and data folders, output_dir, ...); other text (a crisis message,
    say) is kept as written.

    Raises:
        ConfigError: a variable in `output_dir` is not set, or its `${` is not closed: the
            run would be written into a folder named after it. Elsewhere such a path is left
            as written, with a warning naming the key (the path is checked where it is used).
    """
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, where) for v in node]
    if not isinstance(node, str) or not _is_path_key(where.rsplit(".", 1)[-1]):
        return node
    unset = [
        f"${a or b} is not set" for a, b in _ENV_VAR.findall(node) if (a or b) not in os.environ
    ]
    if unclosed := _UNCLOSED.search(node):
        unset.append(f"{unclosed.group()!r} has no closing brace")
    if unset and where == "output_dir":
        raise ConfigError(f"output_dir {node!r}: {unset[0]}")
    if unset:
        logger.warning("%s %r: %s, the path is kept as written", where, node, unset[0])
    return os.path.expanduser(os.path.expandvars(node))  # not a folder named "~"


def _section_keys(loc: tuple) -> list[str]:
    """The keys of the config section at `loc` (a path of keys from the root), [] where
    that is not a section."""
    model: Any = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) else None
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return list(model.model_fields)


def _key_path(loc: tuple, data: Any) -> tuple:
    """`loc` without pydantic's union branch tags ("bool", "literal['auto']"): the keys of
    the config `data`, or fields of its sections (one missing there)."""
    model: Any = RunConfig
    node, out = data, []
    for part in loc:
        fields = (
            model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        )
        present = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        )
        if not present and part not in fields:
            continue  # a branch of a field of several types
        field = fields.get(part) if isinstance(part, str) else None
        model = field.annotation if field is not None else None
        node = node[part] if present else None
        out.append(part)
    return tuple(out)


def _describe(err: ValidationError, source: str, overrides: list[str], data: Any) -> str:
    """One line per key at fault: the dotted key, from the file or from an override (named),
    for an unknown key the closest known ones, and for a field of several types what each
    wants."""
    given = [(text.split("=", 1)[0].strip(), text) for text in overrides]
    lines = [f"invalid config {source}" + (" with its overrides:" if overrides else ":")]
    said: dict[str, int] = {}  # key -> its line, to which another branch's message is added
    for e in err.errors():
        loc = _key_path(e["loc"], data)
        where = ".".join(str(p) for p in loc) or "<root>"
        unknown = e["type"] == "extra_forbidden"
        texts = [
            text
            for key, text in given
            # the key itself, a value inside it, or (unknown) a section misspelled above it;
            # a rule over a section's keys blames no one key of it
            if key == where
            or where.startswith(f"{key}.")
            or (unknown and key.startswith(f"{where}."))
        ]
        origin = f" (from the override {texts[-1]!r})" if texts else ""
        if unknown:
            near = get_close_matches(str(loc[-1]), _section_keys(loc[:-1]), n=1)
            prefix = ".".join(str(p) for p in loc[:-1])
            maybe = ", ".join(f"'{prefix}.{k}'" if prefix else f"'{k}'" for k in near)
            lines.append(
                f"  unknown key '{where}'{origin}" + (f"; did you mean {maybe}?" if near else "")
            )
            continue
        if where in said:  # another branch of a field of several types
            lines[said[where]] = lines[said[where]].replace(" (got ", f", or {e['msg']} (got ", 1)
            continue
        got = e.get("input")
        # YAML reads 2024-06-01 as a date, 001 as a number, yes as true: text is quoted.
        typed = e["type"] == "string_type" and isinstance(got, int | float | dt.date)
        raw = texts[-1].split("=", 1)[1].strip() if texts else str(got)
        hint = f"; quote it as YAML text: \"{where}='{raw}'\"" if typed else ""
        shown = "" if _section_keys(loc) else f" (got {got!r})"  # not the whole section
        said[where] = len(lines)
        lines.append(f"  {where}: {e['msg']}{shown}{origin}{hint}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config, apply `key.sub=value` overrides, validate.

    Raises:
        ConfigError: the file is missing or not a mapping, or a key or value is invalid;
            the message names the file and the key.
    """
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        source = str(path)
        try:
            # A stream: YAML errors then name the file, not "<unicode string>".
            with open(path, encoding="utf-8") as f:
                loaded = _load_yaml(f)
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {path}") from e
        except OSError as e:  # a folder, no permission, ...
            raise ConfigError(f"config {path} cannot be read: {e.strerror or e}") from e
        except (yaml.YAMLError, UnicodeDecodeError) as e:  # the latter: not UTF-8 text
            raise ConfigError(f"config {path} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping, got {type(loaded).__name__}")
        data = loaded
    try:
        data = _expand_env(apply_overrides(data, overrides or []))
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, source, overrides or [], data)) from None
    except RecursionError:  # `x: &a [*a]`: an alias inside what it names
        raise ConfigError(f"config {source} holds a YAML alias inside what it names") from None


def save_config(cfg: RunConfig, path: Path) -> None:
    from esevo_ray.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
