"""One Ray job per incomplete run, through the job-submission API (what `ray job submit` uses).

The cluster must see the sweep's out_root (shared filesystem): completion is judged from
`summary.json` there, as for local runs, and each run folder gets its `sweep_run.json` before the
job is submitted. A run that already has a PENDING/RUNNING job (found by its metadata) is not
submitted twice. The job's entrypoint runs `python` from the cluster's environment (the PATH of the
Ray node) in a working dir uploaded from this checkout (the venv, outputs and .git excluded). With
`wait`, each finished job's log is appended to the run folder's `train.log`, and a failed job is
reported with its submission id, exit code and the tail of its log.

Token auth: a head started with Ray's defaults refuses anonymous job-API calls. When RAY_AUTH_MODE
is unset here, the runner asks the dashboard for its mode and, if it is "token", sends the token Ray's
own loader finds (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); the token is never logged.
"""
from __future__ import annotations

import json
import os
import shlex
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

from mvar_dist.fsio import write_json_atomic

from .runner import REPO, SPEC_NAME, RunReport, is_complete, run_status, train_argv
from .sweep import Sweep, validate_runs

ACTIVE = ("PENDING", "RUNNING")
EXCLUDES = [".venv", ".git", "outputs", ".torch_extensions", "*.safetensors", "*.pth"]
LOG_TAIL_LINES = 20


class RayRunner:
    """`env` is added to every job's environment (runtime_env env_vars), like LocalRunner's `env`."""

    def __init__(self, sweep: Sweep, address: str, train_command: Optional[Sequence[str]] = None,
                 runtime_env: Optional[Dict] = None, env: Optional[Dict[str, str]] = None,
                 log: Callable[[str], None] = print):
        from ray.job_submission import JobSubmissionClient

        if not Path(sweep.out_root).is_absolute() and "://" not in sweep.out_root:
            sweep.out_root = str(Path(sweep.out_root).resolve())  # the job's cwd is a copy, not ours
        self.sweep, self.log = sweep, log
        self.train_command = train_command
        self.client = JobSubmissionClient(address, headers=auth_headers(address))
        self.runtime_env = dict(runtime_env or {"working_dir": str(REPO), "excludes": EXCLUDES})
        if env:
            self.runtime_env["env_vars"] = {**self.runtime_env.get("env_vars", {}), **env}

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
        run_dirs = {}
        for spec, _ in validate_runs(self.sweep):
            status = run_status(spec)
            if status in ("complete", "changed"):
                (report.skipped if status == "complete" else report.changed).append(spec.run_id)
                self.log(f"[sweep] {spec.run_id}: " + ("complete, skipped" if status == "complete" else
                                                        "finished with another config (fingerprint), not rerun"))
                continue
            run_dirs[spec.run_id] = Path(spec.run_dir)
            if spec.run_id in active:
                self.log(f"[sweep] {spec.run_id}: job {active[spec.run_id]} already active")
                report.submitted[spec.run_id] = active[spec.run_id]
                continue
            write_json_atomic(Path(spec.run_dir) / SPEC_NAME, spec.to_dict(), mkdir=True)
            argv = train_argv(self.sweep, spec, python="python", command=self.train_command)
            argv = [a.replace(str(REPO) + "/", "") for a in argv]  # {repo} paths are relative in the job
            sid = self.client.submit_job(entrypoint=shlex.join(argv), runtime_env=self.runtime_env,
                                         submission_id=f"{self.sweep.name}-{spec.run_id}-{uuid.uuid4().hex[:6]}",
                                         metadata={"sweep": self.sweep.name, "run_id": spec.run_id})
            report.submitted[spec.run_id] = sid
            self.log(f"[sweep] {spec.run_id}: submitted as {sid}")
        pending = dict(report.submitted) if wait else {}
        while pending:
            for run_id, sid in list(pending.items()):
                info = self.client.get_job_info(sid)
                if _state(info.status) not in ACTIVE:
                    self._finish(report, run_id, sid, info, run_dirs[run_id])
                    del pending[run_id]
            if pending:
                time.sleep(poll_s)
        return report

    def _finish(self, report: RunReport, run_id: str, sid: str, info, run_dir: Path) -> None:
        """Record one ended job: its log goes to train.log; success needs the trainer's summary.json too."""
        logs = self.client.get_job_logs(sid)
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "train.log", "a") as f:
            f.write(f"$ {info.entrypoint}  # ray job {sid}\n{logs}")
        state = _state(info.status)
        if state == "SUCCEEDED" and is_complete(run_dir):
            report.ran.append(run_id)
            self.log(f"[sweep] {run_id}: job {sid} succeeded")
            return
        code = info.driver_exit_code
        report.failed[run_id] = code if code not in (None, 0) else -1
        why = "succeeded but wrote no summary.json (stopped early?)" if state == "SUCCEEDED" else \
            f"ended {state} (exit {code}): {info.message or ''}".rstrip()
        tail = "\n".join(logs.rstrip().splitlines()[-LOG_TAIL_LINES:])
        self.log(f"[sweep] {run_id}: job {sid} {why}; log tail ({run_dir / 'train.log'}):\n{tail}")


def auth_headers(address: str) -> Dict[str, str]:
    """Authorization header for a token-auth head when RAY_AUTH_MODE is unset here ({} otherwise)."""
    if os.environ.get("RAY_AUTH_MODE") is not None or not address.startswith(("http://", "https://")):
        return {}   # Ray's client follows an explicit mode itself; non-HTTP addresses go through ray.init
    try:
        with urllib.request.urlopen(f"{address.rstrip('/')}/api/authentication_mode", timeout=10) as resp:
            mode = json.loads(resp.read().decode()).get("authentication_mode")
    except (OSError, ValueError):
        return {}   # older heads have no such endpoint: let the client report what is wrong
    if mode != "token":
        return {}
    from ray._raylet import AuthenticationTokenLoader

    headers = AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True)
    if not headers:
        raise RuntimeError(f"the Ray head at {address} requires token auth but no token was found here: set "
                           f"RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or copy the head's ~/.ray/auth_token "
                           f"(`ray get-auth-token` on the head prints it)")
    return headers


def _state(status) -> str:
    return str(getattr(status, "value", status))
