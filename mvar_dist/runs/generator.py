"""The one checked loader of a trained generator from a step folder: config + weights + tokenizer hash.

Sampling, evaluation, the demo's judge, FD-demo and the preview grid all load a checkpoint through
`load_generator`, so each of them refuses a checkpoint whose tokenizer differs from the one it was
trained with (its samples would decode with the wrong codebook).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .layout import META, RUN_CONFIG, WEIGHT_FILES, read_meta

WEIGHTS = WEIGHT_FILES["raw"]  # the consolidated generator in the official key names


def weights_file(weights: str = "raw") -> str:
    """The consolidated file of a weights kind: "raw" (the trained weights) or "ema" (their EMA)."""
    if weights not in WEIGHT_FILES:
        raise ValueError(f"weights must be one of {sorted(WEIGHT_FILES)}, got {weights!r}")
    return WEIGHT_FILES[weights]


def read_files(weights: str = "raw") -> tuple:
    """What load_generator(folder, weights=...) reads (for verification and staging)."""
    return (weights_file(weights), RUN_CONFIG, META)


READ_FILES = read_files("raw")  # what loading the raw weights reads


def load_run_config(folder):
    from mvar_dist.config import load_config

    path = Path(folder) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {RUN_CONFIG}; cannot rebuild the model for sampling")
    return load_config(str(path))


def load_generator(folder, device="cpu", run_cfg=None, weights: str = "raw"):
    """(run config, MVAR in eval mode, tokenizer in eval mode) of a step folder.

    weights: "raw" loads model.safetensors, "ema" model_ema.safetensors (runs trained with ema.enabled).
    The tokenizer is rebuilt from the run config and must hash to meta.json's `tokenizer_hash`."""
    from mvar_dist.model import MVAR
    from mvar_dist.vqvae import MultiScaleVQVAE

    folder = Path(folder)
    cfg = run_cfg or load_run_config(folder)
    path = folder / weights_file(weights)
    if not path.is_file():
        hint = " (the run was trained without ema.enabled)" if weights == "ema" else ""
        raise FileNotFoundError(f"{folder}: no {path.name} (consolidated model) to sample from{hint}")
    model = MVAR.from_official(str(path), patch_nums=tuple(cfg.tokenizer.patch_nums),
                               **dataclasses.asdict(cfg.model))
    # seed 0: the data pipeline's random tokenizer when tokenizer.checkpoint is empty (demo / tests)
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0)
    want = read_meta(folder).get("tokenizer_hash") if (folder / META).is_file() else None
    if want and want != vae.weights_hash():
        raise ValueError(f"{folder}: trained with tokenizer {want[:12]}, but tokenizer.checkpoint gives "
                         f"{vae.weights_hash()[:12]}; samples would decode with the wrong codebook")
    return cfg, model.to(device).eval(), vae.to(device).eval()
