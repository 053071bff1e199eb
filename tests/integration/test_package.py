import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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


@pytest.mark.slow
def test_wheel_installs_the_same_package_tree(tmp_path):
    # `pip install .` must carry ops/, data_pipeline/ and configs/ inside mvar_dist and nothing at top level.
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"mvar_dist", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    for needed in ("mvar_dist/ops/ssd.py", "mvar_dist/data_pipeline/job.py", "mvar_dist/configs/zero3.json",
                   "mvar_dist/configs/recipes/d16.yaml", "mvar_dist/configs/mvar_tiny.yaml",
                   "mvar_dist/vqvae/vqvae.py", "mvar_dist/model/mvar.py"):
        assert needed in names, needed
