"""Operator faults of the inputs and tables a job reads (issue 25): an unreadable class folder is an
error, not a silently missing class; a FIFO named *.png is skipped instead of blocking the job; a
results CSV cut inside a row or with a column missing from its header is refused, not trusted."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from mvar_dist.data_pipeline.sources import list_inputs
from mvar_dist.eval.results import ResultsTable


def _folder(root: Path) -> Path:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(root / cls / f"{i}.png")
    return root


def test_unreadable_class_folder_is_an_error(tmp_path, monkeypatch):
    root = _folder(tmp_path / "imgs")
    real_scandir = os.scandir

    def scandir(path="."):  # the kernel's answer for a folder without read permission (the tests run as root)
        if str(path).rstrip("/").endswith("/b"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(ValueError, match=r"input folder .*/b cannot be read \(Permission denied\): its images would"):
        list_inputs(str(root))


def test_fifo_named_png_is_skipped_not_read(tmp_path):
    root = _folder(tmp_path / "imgs")
    os.mkfifo(root / "a" / "pipe.png")
    listing = list_inputs(str(root))  # reading the FIFO would block forever
    assert sorted(r.image_id for r in listing.refs) == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    assert listing.skipped == 1


def _table(tmp_path) -> ResultsTable:
    t = ResultsTable(tmp_path)
    t.upsert({"checkpoint_id": "run/step_1", "protocol_hash": "p1", "fid": 12.345, "status": "done"})
    t.upsert({"checkpoint_id": "run/step_2", "protocol_hash": "p1", "fid": 10.5, "status": "done"})
    return t


def test_results_csv_truncated_inside_a_row_is_refused(tmp_path):
    t = _table(tmp_path)
    assert [(r["checkpoint_id"], r["fid"]) for r in t.rows()] == [("run/step_1", "12.345"), ("run/step_2", "10.5")]
    text = t.path.read_text()
    cut = text.index("10.5") + 2  # "10" of "10.5" survives: trusting it would record a final FID of 10
    t.path.write_text(text[:cut])
    with pytest.raises(ValueError, match="damaged eval results table: it ends inside a row"):
        t.rows()


def test_results_csv_header_missing_a_column_is_refused(tmp_path):
    t = _table(tmp_path)
    header, *rows = t.path.read_text().splitlines(keepends=True)
    t.path.write_text(header.replace("status,", "", 1) + "".join(rows))
    with pytest.raises(ValueError, match="damaged eval results table: row 1 has"):
        t.rows()

