"""benchmarks/gpu_suite.py: the dry run imports everything and lists every row with its baseline,
writing the JSON and markdown files (on CPU, in seconds). The toy-size run of every row is slow."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = ["train_mvar_d16", "train_var_d16", "max_depth_mvar", "ssd_fwd_bwd", "attn_intra_fwd_bwd",
        "sample_mvar_d30", "sample_var_d30", "tokenizer_encode", "profile_d16"]


def _run(tmp_path, *args):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--out", str(tmp_path), *args],
                         capture_output=True, text=True, timeout=900, cwd=REPO)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout, json.loads((tmp_path / "suite.json").read_text()), (tmp_path / "suite.md").read_text()


def test_dry_run_lists_every_row_with_its_baseline(tmp_path):
    stdout, doc, md = _run(tmp_path, "--dry-run", "--device", "cpu")
    assert [r["name"] for r in doc["rows"]] == ROWS
    for r in doc["rows"]:
        what = r["compares"]
        assert what["ours"] and what["baseline"] and r["status"] == "dry run"
        assert f"| {r['name']} | {what['ours']} | {what['baseline']} |" in md
    imports = doc["meta"]["imports"]
    assert imports["mvar_dist.ops.triton_ssd_bwd"] == "ok" and imports["torch.nn.attention.flex_attention"] == "ok"
    assert imports["torch APIs missing vs tests/helpers/torch_api_floor.txt"] == "none"
    assert "imports:" in stdout


@pytest.mark.slow
def test_smoke_runs_every_row(tmp_path):
    _, doc, md = _run(tmp_path, "--smoke", "--device", "cpu")
    for r in doc["rows"]:
        assert "status" not in r, r
        assert r["ours"] and r["baseline"]
    assert doc["rows"][-1]["ours"] and "profile_d16, ours:" in md
