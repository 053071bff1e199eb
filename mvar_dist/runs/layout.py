"""The run and checkpoint folder layout: the one place that knows folder names.

    <out_dir>/                    a run folder: config.yaml (resolved config), metrics.jsonl, summary.json, tb/
    <ckpt.dir>/                   default <out_dir>/checkpoints; may be elsewhere, or s3://
        step_00000120/            one folder per saved step; nothing without COMPLETE and meta.json is read
            COMPLETE              written last; lists every file with size, sha256 and writing rank (manifest.py)
            meta.json             step, world size, arch, shapes, tokenizer hash
            config.yaml           the resolved run config
            model.safetensors     the consolidated generator in the official key names
            model_ema.safetensors the same for the EMA weights (ema.enabled)
            ema/rank_00000.safetensors   each rank's fp32 EMA of its ZeRO-3 partition (train/ema.py)

A checkpoint id is `<run>/step_XXXXXXXX`; results tables are keyed by it. Readers find a run's
checkpoint root with `ckpt_root(run_dir)` (it follows a non-default ckpt.dir) and the complete
step folders under any root, local or s3://, with `list_checkpoints` / `find_checkpoints`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from mvar_dist.fsio import is_local, open_fs
from .manifest import MARKER

META = "meta.json"
RUN_CONFIG = "config.yaml"          # in the run folder and in every step folder
CKPT_SUBDIR = "checkpoints"         # ckpt.dir's default under out_dir
TOKENIZER_CKPT_SUBDIR = "ckpt"      # the tokenizer trainer's ckpt.dir default under its out_dir
TOKENIZER_KIND = "var-vqvae-tokenizer-train"  # meta.json "kind" of a tokenizer-training step folder
TOKENIZER_EXPORT = "vae.safetensors"          # its generator in the official key names
STEP_RE = re.compile(r"^step_(\d{8})$")
EMA_DIR = "ema"                     # per-rank EMA partitions inside a step folder
WEIGHT_FILES = {"raw": "model.safetensors", "ema": "model_ema.safetensors"}  # consolidated generator by weights kind


def ema_file(rank: int) -> str:
    """A rank's EMA partition file, relative to the step folder."""
    return f"{EMA_DIR}/rank_{rank:05d}.safetensors"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def parse_step(name: str) -> Optional[int]:
    """The step of a step folder name (`step_00000120` -> 120), None for any other name."""
    m = STEP_RE.match(name)
    return int(m.group(1)) if m else None


def step_of(folder) -> int:
    step = parse_step(str(folder).rstrip("/").rsplit("/", 1)[-1])
    if step is None:
        raise ValueError(f"{folder} is not a step folder (step_XXXXXXXX)")
    return step


def checkpoint_id(run: str, step: int) -> str:
    return f"{run}/{step_name(step)}"


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / META).is_file()


def list_checkpoints(root: Path, complete_only: bool = True) -> List[Path]:
    """Step folders under a local root, oldest first; by default only those with the completion marker."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = [p for p in root.iterdir() if p.is_dir() and parse_step(p.name) is not None]
    if complete_only:
        out = [p for p in out if is_complete(p)]
    return sorted(out, key=lambda p: parse_step(p.name))


def is_marked(folder: Path) -> bool:
    """Has the completion marker: a finished save, to be loaded or set aside but never deleted."""
    return (Path(folder) / MARKER).is_file()


def latest_checkpoint(root: Path) -> Optional[Path]:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_meta(folder: Path) -> Dict[str, Any]:
    return json.loads((Path(folder) / META).read_text())


def ckpt_root(run_dir) -> str:
    """A run folder's checkpoint root: its config's ckpt.dir, or `<run>/checkpoints` when that is the default.

    The default is taken relative to run_dir (so a moved or copied run still works); a non-default
    ckpt.dir (another disk, s3://) is used as the run wrote it."""
    run_dir = Path(run_dir)
    default = run_dir / CKPT_SUBDIR
    cfg_path = run_dir / RUN_CONFIG
    if not cfg_path.is_file():
        return str(default)
    import yaml

    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    out_dir, ckpt_dir = str(cfg.get("out_dir", "")), str((cfg.get("ckpt") or {}).get("dir", ""))
    if not ckpt_dir or ckpt_dir.rstrip("/") == f"{out_dir.rstrip('/')}/{CKPT_SUBDIR}":
        return str(default)
    return ckpt_dir


@dataclass(frozen=True)
class CheckpointRef:
    uri: str        # full location of the step folder (local path or s3://...)
    run: str        # run folder name
    step: int

    @property
    def id(self) -> str:
        return checkpoint_id(self.run, self.step)

    @property
    def is_remote(self) -> bool:
        return "://" in self.uri and not self.uri.startswith("file://")

    @property
    def run_uri(self) -> str:
        """The run folder (parent of `checkpoints/`), or the step folder's parent when there is none."""
        parent = self.uri.rstrip("/").rsplit("/", 1)[0]
        return parent.rsplit("/", 1)[0] if parent.endswith(f"/{CKPT_SUBDIR}") else parent


def find_checkpoints(root: str, run: str = "") -> List[CheckpointRef]:
    """Complete step folders under `root` (local or s3://), ordered by (run, step).

    root may be a checkpoint root, a run folder with `checkpoints/`, or a folder of runs. run: the run
    name to give them (default: the folder above `checkpoints/`, else the root's own name)."""
    fs, base = open_fs(root)  # s3:// endpoint from $AWS_ENDPOINT_URL, like the data loader
    fs.invalidate_cache()  # s3fs caches listings per instance: a watcher must see new markers
    local = is_local(fs)
    found = {}
    for pattern in (f"{base}/step_*/{MARKER}", f"{base}/{CKPT_SUBDIR}/step_*/{MARKER}",
                    f"{base}/*/{CKPT_SUBDIR}/step_*/{MARKER}"):
        for marker in fs.glob(pattern):
            step_dir = marker.rsplit("/", 1)[0]
            parts = step_dir.split("/")
            step = parse_step(parts[-1])
            if step is None or not fs.exists(f"{step_dir}/{META}"):
                continue
            name = run or (parts[-3] if len(parts) >= 3 and parts[-2] == CKPT_SUBDIR else parts[-2])
            uri = step_dir if local else fs.unstrip_protocol(step_dir)
            found[uri] = CheckpointRef(uri=uri, run=name, step=step)
    return sorted(found.values(), key=lambda c: (c.run, c.step))


def run_checkpoints(run_dir) -> List[CheckpointRef]:
    """The complete checkpoints of one run folder, wherever its ckpt.dir is, named after the run folder."""
    return find_checkpoints(ckpt_root(run_dir), run=Path(run_dir).name)
