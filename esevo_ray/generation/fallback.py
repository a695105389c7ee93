"""The share of pairs that fell back to the golden response, and what a stage does about it.

A pair whose `chosen_source` is not "refined" trains on the human reference instead of a
self-refined response (Appendix A's fallbacks). A few are expected; a stage where most pairs
fall back is the loop quietly training on references, so above
`generation.max_fallback_fraction` the stage logs a warning with the counts per source
(`fallback_policy: warn`) or fails (`fail`). The entry is recorded in the pairs manifest and
in the run manifest, and `fallback_lines` puts it in the loop's final summary.
"""

from __future__ import annotations

import logging
from typing import Any

from esevo_ray.config import ConfigError, GenerationSection

logger = logging.getLogger(__name__)

REFINED = "refined"


class FallbackError(ConfigError):
    """Too many golden fallbacks under `generation.fallback_policy: fail`."""


def fallback_entry(counts: dict[str, int], gen: GenerationSection) -> dict[str, Any]:
    """Counts per chosen_source, the fallback share, the threshold and whether it is exceeded."""
    rows = sum(counts.values())
    fallbacks = rows - counts.get(REFINED, 0)
    fraction = fallbacks / rows if rows else 0.0
    return {
        "counts": dict(sorted(counts.items())),
        "rows": rows,
        "fallbacks": fallbacks,
        "fraction": round(fraction, 4),
        "threshold": gen.max_fallback_fraction,
        "policy": gen.fallback_policy,
        "guided_json": gen.guided_json,
        "exceeded": fraction > gen.max_fallback_fraction,
    }


def describe(entry: dict[str, Any], label: str) -> str:
    """One line: how many pairs fell back, per source, against the threshold."""
    counts = ", ".join(f"{s} {n}" for s, n in entry["counts"].items() if s != REFINED) or "none"
    over = "above" if entry["exceeded"] else "within"
    return (
        f"{label}: {entry['fallbacks']} of {entry['rows']} pairs ({entry['fraction']:.0%}) fell "
        f"back to the golden response ({counts}), {over} "
        f"generation.max_fallback_fraction={entry['threshold']:g}"
    )


def _advice(entry: dict[str, Any]) -> str:
    fixes = []
    if entry["counts"].get("golden_parse_failure") and not entry.get("guided_json"):
        fixes.append("set generation.guided_json=true (small models need it to write JSON)")
    if entry["counts"].get("golden_parse_failure"):
        fixes.append(
            "raise generation.reflection_decoding.max_new_tokens if answers are cut off (a "
            "small model's refined responses of markup count here too: a larger model helps)"
        )
    fixes.append("or accept it: raise generation.max_fallback_fraction")
    if entry["policy"] == "fail":
        fixes[-1] += " or set generation.fallback_policy=warn"
    return "; ".join(fixes)


def enforce_fallbacks(entry: dict[str, Any], label: str) -> None:
    """Log a warning (policy warn) or raise FallbackError (fail) when the share is exceeded."""
    if not entry["exceeded"]:
        return
    message = f"{describe(entry, label)}: {_advice(entry)}"
    if entry["policy"] == "fail":
        raise FallbackError(message)
    logger.warning(message)


def fallback_lines(stages: dict[str, dict]) -> list[str]:
    """Summary lines for the pairs stages of a run manifest (`manifest["stages"]`).

    Every stage with a fallback entry gets one line; an exceeded threshold starts "WARNING".
    """
    lines = []
    for name, info in stages.items():
        entry = info.get("fallback")
        if entry:
            prefix = "WARNING " if entry["exceeded"] else ""
            lines.append(prefix + describe(entry, name))
    return lines
