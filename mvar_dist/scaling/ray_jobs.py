"""One Ray job per incomplete run, through the job-submission API (what `ray job submit` uses).

The cluster must see the sweep's out_root (shared filesystem): completion is judged from
`summary.json` there, as for local runs. A run that already has a PENDING/RUNNING job (found by its
metadata) is not submitted twice. The job's entrypoint runs `python` from the cluster's environment
in a working dir uploaded from this checkout (the venv, outputs and .git excluded).
"""
from __future__ import annotations

import shlex
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from .runner import REPO, RunReport, run_status, train_argv
from .sweep import Sweep, validate_runs

ACTIVE = ("PENDING", "RUNNING")
EXCLUDES = [".venv", ".git", "outputs", ".torch_extensions", "*.safetensors", "*.pth"]


class RayRunner:
    def __init__(self, sweep: Sweep, address: str, train_command: Optional[Sequence[str]] = None,
                 runtime_env: Optional[Dict] = None, log: Callable[[str], None] = print):
        from ray.job_submission import JobSubmissionClient

        if not Path(sweep.out_root).is_absolute() and "://" not in sweep.out_root:
            sweep.out_root = str(Path(sweep.out_root).resolve())  # the job's cwd is a copy, not ours
        self.sweep, self.log = sweep, log
        self.train_command = train_command
        self.client = JobSubmissionClient(address)
        self.runtime_env = runtime_env or {"working_dir": str(REPO), "excludes": EXCLUDES}

    def _active_runs(self) -> Dict[str, str]:
        out = {}
        for job in self.client.list_jobs():
            meta = job.metadata or {}
            if meta.get("sweep") == self.sweep.name and _state(job.status) in ACTIVE:
                out[meta.get("run_id", "")] = job.submission_id
        return out

    def run(self, wait: bool = False, poll_s: float = 10.0) -> RunReport:
        report = RunReport()
        active = self._active_runs()
        for spec, _ in validate_runs(self.sweep):
            status = run_status(spec)
            if status in ("complete", "changed"):
                (report.skipped if status == "complete" else report.changed).append(spec.run_id)
                continue
            if spec.run_id in active:
                self.log(f"[sweep] {spec.run_id}: job {active[spec.run_id]} already active")
                report.submitted[spec.run_id] = active[spec.run_id]
                continue
            argv = train_argv(self.sweep, spec, python="python", command=self.train_command)
            argv = [a.replace(str(REPO) + "/", "") for a in argv]  # {repo} paths are relative in the job
            sid = self.client.submit_job(entrypoint=shlex.join(argv), runtime_env=self.runtime_env,
                                         submission_id=f"{self.sweep.name}-{spec.run_id}-{uuid.uuid4().hex[:6]}",
                                         metadata={"sweep": self.sweep.name, "run_id": spec.run_id})
            report.submitted[spec.run_id] = sid
            self.log(f"[sweep] {spec.run_id}: submitted as {sid}")
        while wait and report.submitted:
            states = {r: _state(self.client.get_job_status(s)) for r, s in report.submitted.items()}
            if not any(s in ACTIVE for s in states.values()):
                for r, s in states.items():
                    if s == "SUCCEEDED":
                        report.ran.append(r)
                    else:
                        report.failed[r] = 1
                        self.log(f"[sweep] {r}: job {report.submitted[r]} ended {s}")
                break
            time.sleep(poll_s)
        return report


def _state(status) -> str:
    return str(getattr(status, "value", status))
