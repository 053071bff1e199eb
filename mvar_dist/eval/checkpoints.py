"""Finding complete checkpoints under local or s3:// roots, staging them locally and building their sampler.

Layout (the trainer's): `<run>/checkpoints/step_XXXXXXXX/{model.safetensors, config.yaml, meta.json, COMPLETE}`.
A root may be a run folder, its `checkpoints/` folder, or a folder of runs. Only folders whose `COMPLETE`
marker exists are returned; the marker is written last, so what it guards is whole. The marker also lists
every file's size and sha256: `verify` checks the files the service reads against it, so a file damaged
after the save is caught before sampling.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from mvar_dist.fsio import atomic_path, is_local, open_fs
from mvar_dist.train import manifest as mf

MARKER = mf.MARKER
READ_FILES = ("model.safetensors", "config.yaml", "meta.json")  # what sampling reads
STAGED_FILES = READ_FILES + (MARKER,)
_STEP_RE = re.compile(r"step_(\d{8})$")


@dataclass(frozen=True)
class CheckpointRef:
    uri: str        # full location of the step folder (local path or s3://...)
    run: str        # run folder name
    step: int

    @property
    def id(self) -> str:
        return f"{self.run}/step_{self.step:08d}"

    @property
    def is_remote(self) -> bool:
        return "://" in self.uri and not self.uri.startswith("file://")

    @property
    def run_uri(self) -> str:
        """The run folder (parent of `checkpoints/`), or the step folder's parent when there is none."""
        parent = self.uri.rstrip("/").rsplit("/", 1)[0]
        return parent.rsplit("/", 1)[0] if parent.endswith("/checkpoints") else parent


def find_checkpoints(root: str) -> List[CheckpointRef]:
    """Complete step folders under `root`, ordered by (run, step)."""
    fs, base = open_fs(root)  # s3:// endpoint from $AWS_ENDPOINT_URL, like the data loader
    fs.invalidate_cache()  # s3fs caches listings per instance: a watcher must see new markers
    local = is_local(fs)
    found = {}
    for pattern in (f"{base}/step_*/{MARKER}", f"{base}/checkpoints/step_*/{MARKER}",
                    f"{base}/*/checkpoints/step_*/{MARKER}"):
        for marker in fs.glob(pattern):
            step_dir = marker.rsplit("/", 1)[0]
            m = _STEP_RE.search(step_dir)
            if not m or not fs.exists(f"{step_dir}/meta.json"):
                continue
            parts = step_dir.split("/")
            run = parts[-3] if len(parts) >= 3 and parts[-2] == "checkpoints" else parts[-2]
            uri = step_dir if local else fs.unstrip_protocol(step_dir)
            found[uri] = CheckpointRef(uri=uri, run=run, step=int(m.group(1)))
    return sorted(found.values(), key=lambda c: (c.run, c.step))


def stage(ckpt: CheckpointRef, cache_dir) -> Path:
    """A local folder holding the files the sampler needs (the folder itself when it is already local)."""
    if not ckpt.is_remote:
        return Path(ckpt.uri)
    dst = Path(cache_dir) / ckpt.id
    if all((dst / f).exists() for f in STAGED_FILES):
        return dst
    fs, base = open_fs(ckpt.uri)
    with atomic_path(dst, mkdir=True) as tmp:
        tmp.mkdir(exist_ok=True)  # a leftover of a dead process with this pid is overwritten
        for name in STAGED_FILES:
            fs.get(f"{base}/{name}", str(tmp / name))
    return dst


def verify(folder, mode: str, names=READ_FILES) -> Optional[str]:
    """The first of `names` in folder that does not match the marker (size; sha256 in "hash" mode), or None.

    Old markers without a file list pass (as in the trainer)."""
    return mf.verify_folder(Path(folder), mode, only=names)


def drop_staged(ckpt: CheckpointRef, cache_dir) -> None:
    """Forget a staged copy (a bad download must not be reused); local checkpoints are never touched."""
    if ckpt.is_remote:
        shutil.rmtree(Path(cache_dir) / ckpt.id, ignore_errors=True)


def read_meta(folder) -> dict:
    return json.loads((Path(folder) / "meta.json").read_text())


def load_run_config(folder):
    from mvar_dist.config import load_config

    path = Path(folder) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.yaml; cannot rebuild the model for sampling")
    return load_config(str(path))


def load_model_and_vae(folder, device="cpu", run_cfg=None):
    """(MVAR in eval mode, tokenizer) from a step folder's consolidated `model.safetensors` and `config.yaml`."""
    from mvar_dist.model import MVAR
    from mvar_dist.tokenizer import MultiScaleVQVAE

    folder = Path(folder)
    cfg = run_cfg or load_run_config(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no model.safetensors (consolidated model) to sample from")
    model = MVAR.from_official(str(weights), patch_nums=tuple(cfg.tokenizer.patch_nums),
                               **dataclasses.asdict(cfg.model))
    # seed 0: the data pipeline's random tokenizer when tokenizer.checkpoint is empty (demo / tests)
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0)
    want = read_meta(folder).get("tokenizer_hash") if (folder / "meta.json").is_file() else None
    if want and want != vae.weights_hash():
        raise ValueError(f"{folder}: trained with tokenizer {want[:12]}, but tokenizer.checkpoint gives "
                         f"{vae.weights_hash()[:12]}; samples would decode with the wrong codebook")
    return model.to(device).eval(), vae.to(device).eval()


def sampler_for(folder, cfg_scale: float, top_k: int, top_p: float, more_smooth: bool = False, device="cpu",
                run_cfg=None):
    """The default "images for a checkpoint" step: a SampleFn backed by the checkpoint's model."""
    from .sampling import model_sample_fn

    model, vae = load_model_and_vae(folder, device, run_cfg)
    return model_sample_fn(model, vae, cfg_scale=cfg_scale, top_k=top_k, top_p=top_p, more_smooth=more_smooth)

