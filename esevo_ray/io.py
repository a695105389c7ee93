"""Atomic file and Parquet writes: an output is either complete or absent.

A write goes to a temporary sibling, is flushed to disk, then renamed over the target, and
the folder's entry is flushed too, so a crash (of the process or of the node) leaves the old
version or the new one, never a torn file. Outputs get the permissions the umask gives any
new file, as a plain `open` would (temporary files start owner-only).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from esevo_ray.errors import UsageError

logger = logging.getLogger(__name__)


def files_digest(files: list[Path], named: bool = False) -> str:
    """A hash of the files' bytes (a single file's: the same as run manifests have always
    recorded), and of their names when `named`."""
    digest = hashlib.sha256()
    for file in files:
        if named:
            digest.update(file.name.encode())
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def set_aside(path: str | Path, why: str) -> Path:
    """Rename `path` to `<name>.<why>-<UTC time>` beside it (with a count when that is
    taken), so that whatever replaces it deletes nothing; the new path."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = path.with_name(f"{path.name}.{why}-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.{why}-{stamp}-{n}"), n + 1
    path.rename(target)
    return target


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for every thread at once)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str | Path) -> None:
    """Flush a file, or a folder's entries, to disk (where the filesystem syncs folders)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):  # some filesystems cannot sync a folder: nothing lost
            raise
    finally:
        os.close(fd)


def _publish_file(tmp: str | Path, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_umask())
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _beside(path: Path) -> dict[str, Any]:
    """`tempfile.mkstemp`/`mkdtemp` arguments for the temporary sibling of an atomic write
    to `path`: hidden, `.<name>.<8 random characters>.tmp` (`_TEMP_NAME`)."""
    return {"prefix": f".{path.name}.", "suffix": ".tmp", "dir": path.parent}


_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # what `_beside` names


def _last_touched(path: Path) -> float:
    """The newest modification time of `path` and, for a folder, of anything in it (a file
    written into a folder does not touch the folder)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for folder, _, files in os.walk(path):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
    return newest


# Held (flock) by `atomic_dir` in its temporary folder while the block runs: a write that
# is still going on, however long since it last wrote (a report computing its intervals).
_WRITER_LOCK = ".writer.lock"


def _being_written(folder: Path) -> bool:
    """Whether the `atomic_dir` block that made `folder` still runs."""
    import fcntl

    try:
        fd = os.open(folder / _WRITER_LOCK, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def remove_leftovers(root: str | Path, older_than_s: float = 600.0) -> list[Path]:
    """Remove the temporary files and folders that writes under `root` left behind when their
    process was killed before publishing them (a folder of adapter weights, say), those in
    which nothing changed for `older_than_s` and whose writer is gone (`esevo report`'s, say,
    may run beside the loop); the paths removed. For a driver that holds `root`."""
    found = []
    for folder, subfolders, files in os.walk(root):  # a folder gone meanwhile is skipped
        found += [Path(folder, name) for name in sorted(subfolders + files)
                  if _TEMP_NAME.fullmatch(name)]  # fmt: skip
        subfolders[:] = [name for name in subfolders if not _TEMP_NAME.fullmatch(name)]
    now, removed = time.time(), []
    for path in found:
        try:
            if now - _last_touched(path) < older_than_s or _being_written(path):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # published or cleaned up meanwhile
            continue
        except OSError as e:  # not ours to remove (another user's, say): left as it is
            logger.warning("%s: left in place, it cannot be removed (%s)", path, e)
            continue
        removed.append(path)
    return removed


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """`write(tmp)` to a hidden sibling of `path`, published as `path` only once whole and
    flushed (a kill leaves `path` as it was and a temporary file `remove_leftovers` clears)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(**_beside(path))
    os.close(fd)
    try:
        write(tmp)
        _publish_file(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write one Parquet file atomically (temp file in the same folder, then rename)."""
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _check_parents(path: Path, named: str) -> None:
    """Raise UsageError (naming `named`) if a folder above `path` is a file."""
    if (above := next((p for p in path.parents if p.exists()), None)) and not above.is_dir():
        raise UsageError(f"{named}: {above} is a file, so nothing can be written under it")


def check_replaceable(path: str | Path, *, holds: str | tuple[str, ...], what: str) -> None:
    """Raise UsageError if `path` is a file, or a folder with files but none of `holds`
    (names, or glob patterns): not an earlier `what` but something else (a whole run given as
    --out, say) that writing there would replace or mix with."""
    path, marks = Path(path), (holds,) if isinstance(holds, str) else holds
    _check_parents(path, str(path))
    # A write of ours that a kill left unfinished is no one else's content.
    own = [p for p in path.iterdir() if not _TEMP_NAME.fullmatch(p.name)] if path.is_dir() else []
    if path.is_file() or (own and not any(any(path.glob(m)) for m in marks)):
        raise UsageError(
            f"{path} exists and is not a {what} folder (it has no {' or '.join(marks)}); "
            "choose an empty or new folder, nothing in it is replaced"
        )


@contextlib.contextmanager
def atomic_dir(
    path: str | Path, *, keep_existing: bool = False, keep_replaced: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces `path` only if the block succeeds.

    A caller writing to a folder the user named calls check_replaceable first, before its
    work, so that what `path` holds is known to be an earlier version of its output.
    `keep_existing`: for a cache that several processes may fill at once (a merged model):
    a complete `path` published by another process meanwhile is kept and this copy dropped,
    never swapped out under a process that is reading it. `keep_replaced`: for what took
    long to make (a trained adapter): the version replaced is moved aside to
    `<name>.replaced-<time>` (`set_aside`), not deleted.

    Replacing takes two renames (`path` aside, the new folder in); a crash between them
    leaves the old version aside, and the next call on `path` puts it back first. A `path`
    that is a symlink has what it points to replaced, beside it (where a killed write's
    temporary folder is left for the user: `remove_leftovers` looks in the run only).
    """
    path = Path(path)
    if path.is_symlink():  # replace what it points to (data on another disk, say): renamed,
        path = path.resolve()  # the link itself went aside and its target was left behind
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        old.rename(path)
    tmp = Path(tempfile.mkdtemp(**_beside(path)))
    writer = _hold_writer_lock(tmp)
    try:
        yield tmp
        (tmp / _WRITER_LOCK).unlink(missing_ok=True)  # not published; held to the end all the same
        if path.exists() and keep_existing:  # published meanwhile: this copy is dropped
            return
        os.chmod(tmp, 0o777 & ~_umask())
        for file in (f for f in tmp.rglob("*") if f.is_file()):
            _fsync(file)
        _fsync(tmp)
        if keep_existing:  # never swapped: a copy published meanwhile, even now, stays
            try:
                tmp.rename(path)
            except OSError:  # another process published `path` first (a folder not empty)
                if not path.exists():
                    raise
        else:
            if path.exists() and keep_replaced:
                logger.warning("%s replaced: the earlier version is kept as %s", path,
                               set_aside(path, "replaced"))  # fmt: skip
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(writer)


def _hold_writer_lock(folder: Path) -> int:
    import fcntl

    fd = os.open(folder / _WRITER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


@contextlib.contextmanager
def waiting_lock(path: str | Path) -> Iterator[None]:
    """An flock on the file `path`, waited for: one process at a time makes what several
    would make alike (a merged model). The kernel releases it however the holder ends."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def check_report_file(
    out: str | Path | None,
    *,
    flag: str = "--out",
    file: str = "file to write the report to",
    earlier: Callable[[str], bool] | None = None,
) -> None:
    """Refuse, before any work, a report file `out` that writing would lose or clobber: a
    folder (the error asks for the `file`), a path under a file, or a file other than an
    earlier report (`earlier` tells one by its text; default: a JSON object). None: no file
    asked for.

    Raises:
        UsageError: naming `flag` and what `out` is.
    """
    import json

    if not out:
        return
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"{flag} {out} is a folder: name the {file}")
    _check_parents(path, f"{flag} {out}")
    if not path.exists():
        return
    try:
        text = path.read_text(encoding="utf-8")
        ours = earlier(text) if earlier else isinstance(json.loads(text), dict)
    except (OSError, UnicodeDecodeError, ValueError):
        ours = False
    if not ours:
        raise UsageError(
            f"{flag} {out} exists and is not an earlier report of this command; choose "
            "another file, nothing there is replaced"
        )


def emit_json(report: dict, out: str | Path | None = None) -> None:
    """Print a JSON report and, if `out` is given (checked before the work by
    `check_report_file`), also write it there atomically: printed first, so a write that
    fails loses nothing."""
    import json

    text = json.dumps(report, indent=2)
    print(text, flush=True)
    if out:
        atomic_write_text(out, text)
