"""Atomic writes: permissions as for any new file, flushed to disk, and folders that are
replaced whole, restored after a crash between the two renames, or kept when shared."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow as pa
import pytest

from esevo_ray.io import atomic_dir, atomic_write_text, remove_leftovers, write_parquet


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_outputs_get_the_umask_permissions_not_the_temporary_files(tmp_path, umask_022):
    atomic_write_text(tmp_path / "a.json", "{}")
    write_parquet(pa.table({"x": [1]}), tmp_path / "a.parquet")
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "f.txt").write_text("x")
    assert _mode(tmp_path / "a.json") == _mode(tmp_path / "a.parquet") == 0o644
    assert _mode(tmp_path / "folder") == 0o755
    # The human report's figures were written by a copy of this, left owner-only (0600).
    from esevo_ray.human_eval.plots import pairwise_figure

    entry = {"model": "m1", "opponent": "m0", "n": 2, "sessions": 1}
    entry |= {o: {"count": 1, "rate": 0.5, "ci_low": None, "ci_high": None}
              for o in ("win", "tie", "loss")}  # fmt: skip
    pairwise_figure([entry], tmp_path / "figures" / "pair.png")
    assert _mode(tmp_path / "figures" / "pair.png") == 0o644
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["pair.png"]


def test_a_published_file_and_its_folder_entry_are_flushed(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def recorded(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", recorded)
    write_parquet(pa.table({"x": [1]}), tmp_path / "a.parquet")
    assert str(tmp_path) in synced  # the rename itself, not only the bytes
    assert any(p.startswith(str(tmp_path / ".a.parquet.")) for p in synced)


def test_a_crash_between_the_two_renames_is_undone_by_the_next_write(tmp_path):
    out = tmp_path / "adapter"
    with atomic_dir(out) as tmp:
        (tmp / "v").write_text("1")
    out.rename(tmp_path / ".adapter.old")  # aside, and the new one never came in
    with pytest.raises(RuntimeError, match="this attempt fails too"), atomic_dir(out):
        raise RuntimeError("this attempt fails too")
    assert (out / "v").read_text() == "1"


def test_a_shared_cache_keeps_the_first_complete_copy(tmp_path):
    out = tmp_path / "merged"
    with atomic_dir(out, keep_existing=True) as first:
        (first / "v").write_text("first")
        with atomic_dir(out, keep_existing=True) as second:  # published while the first works
            (second / "v").write_text("second")
    assert (out / "v").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]  # no copy left behind
    with atomic_dir(out) as third:  # an output of this run (not a cache) is replaced
        (third / "v").write_text("third")
    assert (out / "v").read_text() == "third"


def test_a_shared_copy_published_while_another_is_synced_is_never_swapped_out(
    tmp_path, monkeypatch
):
    """Engines that merge the same adapter at once: the first copy published stays, with
    what has it open, even when it lands while a later copy is being synced to disk."""
    import esevo_ray.io as io

    out = tmp_path / "merged"
    sync = io._fsync

    def publish_meanwhile(path):  # another process publishes its copy during this sync
        if not out.exists():
            out.mkdir()
            (out / "v").write_text("first")
        sync(path)

    monkeypatch.setattr(io, "_fsync", publish_meanwhile)
    with atomic_dir(out, keep_existing=True) as second:
        (second / "v").write_text("second")
    assert (out / "v").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_a_trained_adapter_replaced_is_kept_aside(tmp_path):
    """`esevo dpo` run again into a finished run's m1/adapter keeps the hours behind the old
    one: moved to adapter.replaced-<time>, only once the new one is complete."""
    out = tmp_path / "adapter"
    with atomic_dir(out, keep_replaced=True) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(out, keep_replaced=True):
        raise RuntimeError("training failed")
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    with atomic_dir(out, keep_replaced=True) as tmp:
        (tmp / "v").write_text("2")
    (kept,) = tmp_path.glob("adapter.replaced-*")
    assert (kept / "v").read_text() == "1" and (out / "v").read_text() == "2"


def test_leftovers_of_killed_writes_are_removed_and_nothing_else(tmp_path):
    """What a killed write leaves (a temporary file, a temporary folder of weights) is
    removed; a write going on now (young), published files and other dot files are not."""
    import tempfile
    import time

    m1 = tmp_path / "m1"
    m1.mkdir()
    fd, file = tempfile.mkstemp(prefix=".responses.parquet.", suffix=".tmp", dir=m1)
    os.close(fd)
    folder = tempfile.mkdtemp(prefix=".adapter.", suffix=".tmp", dir=m1)
    (tmp_path / "m1" / "adapter.tmp").mkdir()  # the user's, not a temporary sibling
    (tmp_path / ".cache.tmp").write_text("x")
    with open(os.path.join(folder, "adapter_model.safetensors"), "wb") as f:
        f.write(b"\0" * 1024)
    atomic_write_text(m1 / "manifest.json", "{}")
    fd, young = tempfile.mkstemp(prefix=".report.md.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    old = time.time() - 3600
    for path in (file, folder, os.path.join(folder, "adapter_model.safetensors")):
        os.utime(path, (old, old))
    # A folder being filled (an `esevo report` at work): old itself, its newest file young.
    filling = tempfile.mkdtemp(prefix=".report.", suffix=".tmp", dir=tmp_path)
    (Path(filling) / "metrics.png").write_bytes(b"png")
    os.utime(filling, (old, old))

    removed = remove_leftovers(tmp_path, older_than_s=60)
    assert sorted(map(str, removed)) == sorted([file, folder])
    assert not os.path.exists(file) and not os.path.exists(folder)
    assert os.path.exists(young) and (m1 / "manifest.json").exists()
    assert (Path(filling) / "metrics.png").exists()
    assert (m1 / "adapter.tmp").is_dir() and (tmp_path / ".cache.tmp").exists()


def test_a_killed_write_of_ours_does_not_make_a_folder_someone_elses(tmp_path):
    """A kill while the first producer.json was written left only its temporary file, and
    every rerun was refused as writing into a folder that is not a parts folder."""
    from esevo_ray.errors import UsageError
    from esevo_ray.io import check_replaceable

    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / ".producer.json.ab12cd34.tmp").write_text('{"half')
    check_replaceable(folder, holds="producer.json", what="generation parts")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not a generation parts folder"):
        check_replaceable(folder, holds="producer.json", what="generation parts")


def test_an_output_under_a_file_is_refused_before_any_work(tmp_path):
    """`esevo dpo --out x.json/adapter` started Ray Train, whose storage beside the adapter
    (x.json/ray_train) failed with a NotADirectoryError traceback."""
    from esevo_ray.errors import UsageError
    from esevo_ray.io import check_replaceable

    (tmp_path / "x.json").write_text("{}")
    for out in (tmp_path / "x.json" / "adapter", tmp_path / "x.json" / "m1" / "adapter"):
        with pytest.raises(UsageError, match=r"x.json is a file, so nothing can be written"):
            check_replaceable(out, holds="adapter_config.json", what="LoRA adapter")
    check_replaceable(tmp_path / "new" / "adapter", holds="adapter_config.json", what="x")


def test_a_folder_that_is_a_link_is_replaced_where_it_points(tmp_path):
    """The link itself was renamed aside and a plain folder put in its place: the data left
    the disk it was linked to, and the next replacement failed on the link left aside."""
    target, link = tmp_path / "bigdisk" / "data", tmp_path / "run" / "data"
    target.mkdir(parents=True)
    link.parent.mkdir()
    link.symlink_to(target)
    for version in ("v1", "v2"):
        with atomic_dir(link) as tmp:
            (tmp / "rows.txt").write_text(version)
    assert link.is_symlink() and (target / "rows.txt").read_text() == "v2"
    assert sorted(p.name for p in link.parent.iterdir()) == ["data"]


def test_a_folder_still_being_written_is_no_leftover_however_old(tmp_path):
    """`esevo report` beside `esevo evolve`: nothing written for ten minutes while it
    computed intervals, its temporary folder was cleared by evolve as a killed write's, and
    the report published without the figures deleted from it."""
    import time

    old = time.time() - 3600
    with atomic_dir(tmp_path / "report") as tmp:
        (tmp / "metrics.png").write_bytes(b"png")
        for path in (tmp / "metrics.png", tmp / ".writer.lock", tmp):
            os.utime(path, (old, old))
        assert remove_leftovers(tmp_path, older_than_s=60) == []
        (tmp / "report.md").write_text("![](metrics.png)")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["metrics.png", "report.md"]
    # A writer that is gone (killed): its folder goes, lock file and all.
    import tempfile

    dead = Path(tempfile.mkdtemp(prefix=".report.", suffix=".tmp", dir=tmp_path))
    (dead / ".writer.lock").write_text("")
    os.utime(dead / ".writer.lock", (old, old))
    os.utime(dead, (old, old))
    assert remove_leftovers(tmp_path, older_than_s=60) == [dead]
