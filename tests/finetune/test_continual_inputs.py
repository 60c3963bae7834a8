"""Continual runs on bad logs (issue 28, item 7): rejected rows of two logs with the same file name
land in two quarantine files, and a run refused for its logs (or one that failed half-way) leaves an
`--out` folder that the rerun may use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatrec.bundle import Bundle
from chatrec.errors import DataError
from finetune.continual import INCOMPLETE, copy_parent, read_new_logs


def _log(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"user_id": "u1", "item_id": "m1", "action": "like", "timestamp": "2030-01-01T00:00:00Z"}


def test_two_logs_of_the_same_name_keep_both_quarantines(tmp_path: Path) -> None:
    a = _log(tmp_path / "replica-a" / "feedback.jsonl", [GOOD, {**GOOD, "user_id": ""}])
    b = _log(tmp_path / "replica-b" / "feedback.jsonl", [GOOD, {**GOOD, "timestamp": "not a time"},
                                                         {**GOOD, "item_id": ""}])
    out = Bundle(tmp_path / "out")
    rows = read_new_logs([a, b], out)
    assert len(rows) == 2
    files = sorted(out.path("quarantine").iterdir())
    assert len(files) == 2, files
    counts = sorted(len(f.read_text().splitlines()) for f in files)
    assert counts == [1, 2]  # every rejected row of both files, none overwritten


def test_a_refused_log_leaves_an_out_folder_the_rerun_accepts(tmp_path: Path) -> None:
    from chatrec.testing import make_tiny_bundle

    parent = make_tiny_bundle(tmp_path / "parent", hidden=32)
    bad = _log(tmp_path / "logs" / "bad.jsonl", [{**GOOD, "user_id": ""}])
    out = Bundle(tmp_path / "out")
    with pytest.raises(DataError, match="no valid interaction rows"):
        read_new_logs(bad, out)
    assert {p.name for p in out.root.iterdir()} == {"quarantine"}  # only the rejected rows, to look at
    copy_parent(parent, out)  # the rerun: accepted
    assert (out.root / INCOMPLETE).exists() and out.path("catalog.parquet").exists()
    # a run that failed after copying (the marker is still there) is replaced too
    copy_parent(parent, out)
    assert out.path("catalog.parquet").exists()
    # a finished bundle (no marker) is never overwritten
    (out.root / INCOMPLETE).unlink()
    with pytest.raises(DataError, match="not empty"):
        copy_parent(parent, out)
