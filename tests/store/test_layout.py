"""Durable writes of the store's files: one at a time, and a segment's files together (group commit)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tradetrace.store import layout


def _files(root: Path, n: int) -> list[tuple[Path, bytes]]:
    out = []
    for k in range(n):
        d = layout.type_dir(root, "2026-01-01", f"T{k}")
        layout.make_dirs(d)
        out.append((d / "run-s000000.parquet", f"payload {k}".encode() * 100))
    return out


@pytest.mark.parametrize("dirty_limit", [layout.GROUP_SYNC_MAX_DIRTY_BYTES, 0])
def test_write_all_durably_leaves_final_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   dirty_limit: int) -> None:
    """Grouped (syncfs) or one by one (a limit of 0 dirty bytes forces it): the same files, no temporaries."""
    monkeypatch.setattr(layout, "GROUP_SYNC_MAX_DIRTY_BYTES", dirty_limit)
    files = _files(tmp_path, 5)
    layout.write_all_durably(tmp_path, files)
    for final, data in files:
        assert final.read_bytes() == data
    assert not list(tmp_path.rglob("*.tmp"))
    # replacing works the same way (a rewritten segment, a compaction)
    layout.write_all_durably(tmp_path, [(f, b"new") for f, _ in files])
    assert all(f.read_bytes() == b"new" for f, _ in files)


@pytest.mark.skipif(sys.platform != "linux", reason="group commit uses Linux's syncfs")
def test_group_commit_is_chosen_by_unwritten_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """syncfs flushes the whole file system: used only while little else waits to be written."""
    if layout._SYNCFS is None:
        pytest.skip("this kernel has no syncfs that reports write-back errors (< 5.8)")
    monkeypatch.setattr(layout, "GROUP_SYNC_MAX_DIRTY_BYTES", 1 << 50)
    assert layout._group_sync() is layout._SYNCFS
    monkeypatch.setattr(layout, "GROUP_SYNC_MAX_DIRTY_BYTES", 0)
    assert layout._group_sync() is None

