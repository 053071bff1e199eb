"""An independent judge for the demo: a small CNN that tells the 10 embedded classes apart.

It is trained only on real procedural images (`demo_data.make_image`) drawn with its own seed, so it
never sees the generator's training images or any generated sample. Two uses:

- **class consistency** of generated samples: the share of samples it assigns to their conditioning
  class (`consistency`);
- **FD-demo**: the Frechet distance between its pooled features of generated and real images
  (`fd_demo`). This is *not* FID (no Inception network, no ImageNet statistics) and is
  always labelled FD-demo.

The class is carried by shape and texture; colours are random per image. Training therefore shuffles
colour channels, sometimes drops colour, and often blurs, so an image that loses colour or
sharpness (as everything a small tokenizer decodes does) is still judged by its shape: without the
blur, blurred squares, crosses and triangles were all called discs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mvar_dist.demo_data import CLASS_NAMES, NUM_CLASSES, make_image

SIDE = 64                # the classifier's input side; other sizes are resized (area / bilinear) to it
FEATURE_DIM = 64         # pooled feature width used by FD-demo
TRAIN_SEED = 7001        # image seeds of its training and held-out sets: disjoint from the demo's (0 / 1)
HELDOUT_SEED = 7002
# Label order: the ImageFolder convention (sorted folder names), which the token shards and therefore the
# generator's class ids use; CLASS_NAMES[k] is drawn by make_image(k, ...).
FOLDER_CLASSES = sorted(CLASS_NAMES)


class DemoClassifier(nn.Module):
    """Four stride-2 convs, global average pooling, a linear head. Input (B, 3, H, W) in [0, 1]."""

    def __init__(self):
        super().__init__()
        chans = [3, 16, 32, 64, FEATURE_DIM]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, 2, 1) for a, b in zip(chans[:-1], chans[1:]))
        self.norms = nn.ModuleList(nn.GroupNorm(4, b) for b in chans[1:])
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        x = _to_side(img_B3HW.float()) * 2 - 1
        for conv, norm in zip(self.convs, self.norms):
            x = F.gelu(norm(conv(x)))
        return x.mean(dim=(2, 3))

    def forward(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(img_B3HW))


def _to_side(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] == SIDE and x.shape[-2] == SIDE:
        return x
    mode = "area" if x.shape[-1] > SIDE else "bilinear"
    return F.interpolate(x, size=(SIDE, SIDE), mode=mode, **({} if mode == "area" else {"align_corners": False}))


def real_images(per_class: int, seed: int, side: int = SIDE) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, side, side) in [0, 1] and (N,) labels in FOLDER_CLASSES order, class-major."""
    imgs = np.stack([make_image(CLASS_NAMES.index(name), i, side, seed) for name in FOLDER_CLASSES
                     for i in range(per_class)])
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0, labels


def _gaussian_blur(x: torch.Tensor, sigma_B: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma in pixels; 0 = unchanged), separable, replicate padding."""
    r = 4
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k_BK = torch.exp(-t[None] ** 2 / (2 * sigma_B.clamp_min(1e-3)[:, None] ** 2))
    k_BK = k_BK / k_BK.sum(1, keepdim=True)
    B, C, H, W = x.shape
    y = F.pad(x.reshape(1, B * C, H, W), (r, r, r, r), mode="replicate")
    k = k_BK.repeat_interleave(C, 0)
    y = F.conv2d(y, k[:, None, None, :], groups=B * C)
    y = F.conv2d(y, k[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random channel order, sometimes grey, often blurred (sigma up to 2.5 px at 64 px) plus a little
    noise: the class must be read from the shape, at the sharpness a small tokenizer delivers."""
    B = x.shape[0]
    perm = torch.stack([torch.randperm(3, generator=g) for _ in range(B)])
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    grey = x.mean(1, keepdim=True).expand_as(x)
    drop = (torch.rand(B, 1, 1, 1, generator=g) < 0.3).float()
    x = drop * grey + (1 - drop) * x
    sigma = torch.rand(B, generator=g) * 2.5 * (torch.rand(B, generator=g) < 0.7)
    x = torch.where(sigma[:, None, None, None] > 0, _gaussian_blur(x, sigma), x)
    return (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1)


@dataclass
class TrainReport:
    steps: int
    heldout_accuracy: float  # on real images from HELDOUT_SEED, never trained on


def train_classifier(per_class: int = 60, steps: int = 300, batch: int = 64, lr: float = 3e-3, seed: int = 0,
                     progress: Optional[Callable[[str], None]] = None) -> Tuple[DemoClassifier, TrainReport]:
    """Train on real procedural images with colour/blur augmentation; report held-out accuracy."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x, y = real_images(per_class, TRAIN_SEED)
    model = DemoClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss = F.cross_entropy(model(_augment(x[idx], g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step + 1) % 100 == 0:
            progress(f"[classifier] step {step + 1}/{steps} loss {loss.item():.3f}")
    model.eval()
    xh, yh = real_images(10, HELDOUT_SEED)
    return model, TrainReport(steps, consistency(model, xh, yh))


@torch.no_grad()
def _chunked(fn, img_B3HW: torch.Tensor, chunk: int = 100) -> torch.Tensor:
    return torch.cat([fn(img_B3HW[i:i + chunk]) for i in range(0, img_B3HW.shape[0], chunk)])


def predict(model: DemoClassifier, img_B3HW: torch.Tensor) -> torch.Tensor:
    return _chunked(lambda x: model(x).argmax(-1), img_B3HW)


def consistency(model: DemoClassifier, img_B3HW: torch.Tensor, labels_B: torch.Tensor) -> float:
    """Share of images assigned to their label, in [0, 1]."""
    return float((predict(model, img_B3HW) == labels_B).float().mean())


def features(model: DemoClassifier, img_B3HW: torch.Tensor) -> np.ndarray:
    """(N, FEATURE_DIM) float64 pooled features."""
    return _chunked(model.features, img_B3HW).double().numpy()


def fd_demo(model: DemoClassifier, fake_B3HW: torch.Tensor, real_B3HW: torch.Tensor) -> float:
    """FD-demo: the Frechet distance of the classifier's features of generated vs real images."""
    from mvar_dist.eval.metrics import frechet_distance, gaussian_stats

    return frechet_distance(*gaussian_stats(features(model, fake_B3HW)), *gaussian_stats(features(model, real_B3HW)))


def judge_checkpoint(ckpt_folder: Path, model: DemoClassifier, per_class: int = 10, seed: int = 0,
                     real_per_class: int = 20) -> Dict[str, Any]:
    """Sample `per_class` images of every class from a checkpoint (its `eval` sampling settings) and
    report the class consistency (overall and per class) and FD-demo against real images."""
    from mvar_dist.eval.preview import sample_images
    from mvar_dist.runs.generator import load_generator

    cfg, generator, vae = load_generator(ckpt_folder)
    if cfg.model.num_classes != NUM_CLASSES:
        raise ValueError(f"{ckpt_folder}: the model has {cfg.model.num_classes} classes, the demo judge knows "
                         f"{NUM_CLASSES}")
    labels_B = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    fake_B3HW = sample_images(cfg, generator, vae, labels_B, seed)
    pred_B = predict(model, fake_B3HW)
    real_B3HW, _ = real_images(real_per_class, HELDOUT_SEED)
    return {"checkpoint": str(ckpt_folder), "num_samples": int(labels_B.numel()),
            "consistency": float((pred_B == labels_B).float().mean()),
            "per_class": {name: float((pred_B[labels_B == k] == k).float().mean())
                          for k, name in enumerate(FOLDER_CLASSES)},
            "fd_demo": fd_demo(model, fake_B3HW, real_B3HW),
            "sampling": {"cfg_scale": cfg.eval.cfg_scale, "top_k": cfg.eval.top_k, "top_p": cfg.eval.top_p,
                         "seed": seed}}


def save(model: DemoClassifier, path: Path, report: TrainReport) -> Path:
    from safetensors.torch import save_file

    from mvar_dist.fsio import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(model.state_dict(), str(tmp), metadata={"heldout_accuracy": f"{report.heldout_accuracy:.6f}",
                                                          "steps": str(report.steps)})
    return path


def load(path: Path) -> Tuple[DemoClassifier, float]:
    """The classifier and its recorded held-out accuracy; a clear error for a damaged file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), "pt") as f:
            acc = float((f.metadata() or {}).get("heldout_accuracy", "nan"))
        sd = load_file(str(path))
    except Exception as exc:  # safetensors raises several types for truncated / foreign files
        raise ValueError(f"{path}: not a demo classifier file ({exc}); delete it to retrain") from exc
    model = DemoClassifier()
    model.load_state_dict(sd)
    return model.eval(), acc


def load_or_train(path: Path, progress: Optional[Callable[[str], None]] = None) -> Tuple[DemoClassifier, float]:
    """The demo's cached classifier, training it once when the file is absent."""
    path = Path(path)
    if path.is_file():
        return load(path)
    model, report = train_classifier(progress=progress)
    save(model, path, report)
    return model, report.heldout_accuracy
