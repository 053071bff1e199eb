"""Scaling sweeps through Ray job submission against a real Ray head started by the test (127.0.0.1,
private temp dir, stopped by PID): both runs of a 2-run sweep complete as jobs, a re-submission skips
them (through the launcher's `run --ray ADDR --wait`), and a failing run is reported with its job id
and log tail. The training command is the runner tests' stand-in trainer."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from ray_head import client_env, start_head
from test_scaling_runner import FAKE_TRAIN

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _invocations(path: Path):
    return path.read_text().split() if path.exists() else []


def test_sweep_as_ray_jobs_completes_skips_and_reports_failures(tmp_path, tmp_path_factory, capsys):
    from mvar_dist.scaling.ray_jobs import RayRunner, auth_headers
    from mvar_dist.scaling.runner import SPEC_NAME
    from mvar_dist.scaling.sweep import load_sweep

    sys.path.insert(0, str(REPO / "launchers"))
    try:
        import scaling_sweep
    finally:
        sys.path.pop(0)

    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    fake_log = tmp_path / "invocations.txt"
    spec = {"name": "rt", "out_root": str(tmp_path / "sweep"), "archs": ["var"], "depths": [1, 2],
            "preset": "{arch}_tiny", "head_dim": 32, "budgets": [{"name": "s4", "steps": 4}],
            "overrides": ["ckpt.every_steps=2"], "dataset_images": 400,
            "train_command": ["{python}", str(tmp_path / "fake_train.py")]}
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(spec))
    sweep = load_sweep(sweep_file)
    ids = [r.run_id for r in sweep.runs()]
    assert len(ids) == 2

    # The jobs run `python` from the cluster's environment: this venv, as on a node with the project installed.
    head_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    head_temp = tmp_path_factory.mktemp("rayhead")   # short: Ray's socket paths must fit in 107 bytes
    with start_head(head_temp, head_env) as head:
        # The client side finds the head's auth mode by itself (`ray job submit` users set RAY_AUTH_MODE);
        # the token comes from Ray's first token source, as a user would give it.
        with client_env({"RAY_AUTH_MODE": None, "RAY_AUTH_TOKEN": head.token}):
            url = head.url
            assert auth_headers(url) == {"authorization": f"Bearer {head.token}"}   # mode asked, token found
            logs = []
            first = RayRunner(sweep, url, env={"FAKE_LOG": str(fake_log)}, log=logs.append).run(wait=True, poll_s=0.5)
            assert sorted(first.ran) == ids and first.ok and sorted(first.submitted) == ids, logs   # any order
            assert all(sid.startswith("rt-") for sid in first.submitted.values())
            for run in sweep.runs():
                assert (Path(run.run_dir) / "summary.json").is_file()
                assert (Path(run.run_dir) / SPEC_NAME).is_file()   # fingerprint kept, as for local runs
                assert "$ python" in (Path(run.run_dir) / "train.log").read_text()   # the job's log, fetched
            assert sorted(_invocations(fake_log)) == ids

            assert scaling_sweep.main(["run", str(sweep_file), "--ray", url, "--wait", "--no-analyze"]) == 0
            assert "ran 0, skipped 2 complete, failed 0" in capsys.readouterr().out
            assert sorted(_invocations(fake_log)) == ids   # nothing was submitted again

            spec["depths"] = [1, 2, 3]
            sweep_file.write_text(yaml.safe_dump(spec))
            grown = load_sweep(sweep_file)
            new_id = grown.runs()[2].run_id
            crash = ["{python}", "-c", "import sys; print('loading {run_id}'); sys.exit('boom: disk full')"]
            logs = []
            third = RayRunner(grown, url, train_command=crash, log=logs.append).run(wait=True, poll_s=0.5)
            assert third.skipped == ids and third.ran == [] and list(third.failed) == [new_id] and not third.ok
            sid = third.submitted[new_id]
            failure = [m for m in logs if f"job {sid} ended" in m]
            assert len(failure) == 1 and "FAILED (exit 1)" in failure[0], logs
            assert f"loading {new_id}" in failure[0] and "boom: disk full" in failure[0]   # the log tail
            assert not (Path(grown.runs()[2].run_dir) / "summary.json").exists()
