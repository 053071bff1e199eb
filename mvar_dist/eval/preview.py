"""A PNG grid of class-conditional samples from a checkpoint's consolidated model file.

Runs in one process on the exported `model.safetensors` (no DeepSpeed), so it can be called after
training or on any checkpoint a run left behind: `python -m mvar_dist.eval.preview <ckpt folder> out.png`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from mvar_dist.runs.generator import load_generator


@torch.no_grad()
def sample_images(cfg, model, vae, labels_B: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] with the run's `eval` sampling settings."""
    _, img_B3HW = model.sample(vae, labels_B, cfg_scale=cfg.eval.cfg_scale,
                               top_k=min(cfg.eval.top_k, cfg.tokenizer.vocab_size), top_p=cfg.eval.top_p, seed=seed)
    return img_B3HW.clamp(0, 1)


def sample_grid(ckpt_folder: Path, out_png: Path, per_class: int = 2, seed: int = 0) -> Path:
    from PIL import Image

    cfg, model, vae = load_generator(ckpt_folder)  # checked: refuses a checkpoint of another tokenizer
    n_cls = cfg.model.num_classes
    labels_B = torch.arange(n_cls).repeat_interleave(per_class)
    img_B3HW = sample_images(cfg, model, vae, labels_B, seed)
    # One row per class, `per_class` columns.
    img = (img_B3HW.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    B, H, W, _ = img.shape
    grid = img.reshape(n_cls, per_class, H, W, 3).transpose(0, 2, 1, 3, 4).reshape(n_cls * H, per_class * W, 3)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(grid)).save(out_png)
    return out_png


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m mvar_dist.eval.preview <checkpoint folder> <out.png>")
    print(sample_grid(Path(sys.argv[1]), Path(sys.argv[2])))
