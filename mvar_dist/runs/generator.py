"""The one checked loader of a trained generator from a step folder: config + weights + tokenizer hash.

Sampling, evaluation, the demo's judge, FD-demo and the preview grid all load a checkpoint through
`load_generator`, so each of them refuses a checkpoint whose tokenizer differs from the one it was
trained with (its samples would decode with the wrong codebook).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from .layout import META, RUN_CONFIG, read_meta

WEIGHTS = "model.safetensors"  # the consolidated generator in the official key names
READ_FILES = (WEIGHTS, RUN_CONFIG, META)  # what loading reads


def load_run_config(folder):
    from mvar_dist.config import load_config

    path = Path(folder) / RUN_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {RUN_CONFIG}; cannot rebuild the model for sampling")
    return load_config(str(path))


def load_generator(folder, device="cpu", run_cfg=None):
    """(run config, MVAR in eval mode, tokenizer in eval mode) of a step folder.

    The tokenizer is rebuilt from the run config and must hash to meta.json's `tokenizer_hash`."""
    from mvar_dist.model import MVAR
    from mvar_dist.vqvae import MultiScaleVQVAE

    folder = Path(folder)
    cfg = run_cfg or load_run_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS} (consolidated model) to sample from")
    model = MVAR.from_official(str(weights), patch_nums=tuple(cfg.tokenizer.patch_nums),
                               **dataclasses.asdict(cfg.model))
    # seed 0: the data pipeline's random tokenizer when tokenizer.checkpoint is empty (demo / tests)
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0)
    want = read_meta(folder).get("tokenizer_hash") if (folder / META).is_file() else None
    if want and want != vae.weights_hash():
        raise ValueError(f"{folder}: trained with tokenizer {want[:12]}, but tokenizer.checkpoint gives "
                         f"{vae.weights_hash()[:12]}; samples would decode with the wrong codebook")
    return cfg, model.to(device).eval(), vae.to(device).eval()
