"""The base of every config section: unknown keys and mutation are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A run configuration that cannot be used, with the file and key at fault."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
