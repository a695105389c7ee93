"""The base of every config section: unknown keys and mutation are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A run configuration that cannot be used, with the file and key at fault."""


class Section(BaseModel):
    # inf is no setting: a learning rate or beta of .inf would load and fail mid-run.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
