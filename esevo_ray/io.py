"""Atomic file and Parquet writes: an output is either complete or absent."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from esevo_ray.errors import UsageError


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write one Parquet file atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def check_replaceable(path: str | Path, *, holds: str, what: str) -> None:
    """Raise UsageError if `path` is a folder with files but without `holds`: not an earlier
    `what` but something else (a whole run given as --out, say) that replacing would delete."""
    path = Path(path)
    if path.is_file() or (path.is_dir() and any(path.iterdir()) and not (path / holds).exists()):
        raise UsageError(
            f"{path} exists and is not a {what} folder (it has no {holds}); "
            "choose an empty or new folder, nothing in it is replaced"
        )


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `path` only if the block succeeds.

    A caller writing to a folder the user named calls check_replaceable first, before its
    work, so that what `path` holds is known to be an earlier version of its output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def emit_json(report: dict, out: str | Path | None = None) -> None:
    """Print a JSON report and, if `out` is given, also write it there atomically."""
    import json

    text = json.dumps(report, indent=2)
    if out:
        atomic_write_text(out, text)
    print(text)
