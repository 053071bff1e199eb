import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_mapped_packages_import_from_anywhere(tmp_path):
    # Run from an unrelated cwd so the source tree is not on sys.path by accident.
    code = ("import mvar_dist.ops, mvar_dist.data_pipeline, mvar_dist.configs, importlib.util;"
            "assert importlib.util.find_spec('ops') is None or 'mvar_dist' not in str(importlib.util.find_spec('ops').origin);"
            "from mvar_dist.config import configs_dir; print(configs_dir())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (Path(out.stdout.strip()) / "zero3.json").is_file()


def test_doctor_reports_paths_without_secrets(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAVERYSECRETKEY123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    from mvar_dist.doctor import report

    rows = dict(report())
    text = repr(rows)
    assert "super-secret-value" not in text and "AKIAVERYSECRETKEY123" not in text
    assert rows["s3 credentials"].startswith("present")
    assert rows["torch"] and "cuda" in rows
    assert any(k.startswith("op: ssd scan") for k in rows)
