"""The base of every config section: unknown keys and mutation are errors."""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class ConfigError(ValueError):
    """A run configuration that cannot be used, with the file and key at fault."""


def _admits(annotation: Any, kinds: tuple[type, ...]) -> bool:
    """Whether a field of type `annotation` takes values of one of `kinds` as such."""
    if annotation in kinds or annotation is Any:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return any(type(arg) in kinds for arg in typing.get_args(annotation))
    return any(_admits(arg, kinds) for arg in typing.get_args(annotation))


class Section(BaseModel):
    # inf is no setting: a learning rate or beta of .inf would load and fail mid-run.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1 and false as 0, and YAML reads yes/no/on/off as true and
        false: `eval.judge_samples=off` was 0, "judge every context". (A text or choice
        field refuses a boolean itself, saying what it takes.)"""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if _admits(annotation, (int, float)) and not _admits(annotation, (bool,)):
                raise ValueError(
                    "a boolean where none is allowed (YAML reads true/false, yes/no and on/off "
                    "as booleans)"
                )
        return value
