"""Typed settings of the tokenizer trainer, read from an optional YAML file plus dotted overrides
(`optim.lr=1e-4 loss.l1=0`), with the same parser and type checks as the main run config.

Defaults and where each comes from are listed in docs/tokenizer_training.md.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple

from mvar_dist.config.errors import ConfigError
from mvar_dist.config.loader import fill_config, read_yaml_tree
from mvar_dist.config.numbers import check_number, non_negative, positive
from mvar_dist.config.schema import TokenizerConfig, check_resume_keys, fallback_limit
from mvar_dist.runs.layout import TOKENIZER_CKPT_SUBDIR


@dataclass
class TokDataConfig:
    root: str = ""              # ImageFolder dir, folder of .tar shards, or s3:// prefix (as the tokenisation job)
    s3_endpoint: str = ""       # S3 endpoint URL; "" = the AWS chain / $AWS_ENDPOINT_URL
    hflip: bool = False         # random horizontal flip (VAR's build_dataset default: off)
    min_side: int = 32          # images whose shorter side is below this are rejected (as the job)
    num_workers: int = 2        # DataLoader decode workers per rank (0 = decode in the main process)
    prefetch: int = 2           # batches prefetched per worker


@dataclass
class TokLossConfig:
    l1: float = 0.2             # pixel L1 weight (vaex)
    l2: float = 1.0             # pixel L2 weight (vaex, XQ-GAN, LlamaGen)
    vq: float = 1.0             # weight of the quantiser loss (codebook + beta * commitment)
    beta: float = 0.25          # commitment weight (VAR VectorQuantizer2)
    lpips: float = 1.0          # LPIPS-VGG weight (XQ-GAN, LlamaGen, taming); off without a backbone file
    lpips_backbone: str = ""    # torchvision vgg16 state dict (.pth / .safetensors); "" = LPIPS off
    lpips_lin: str = ""         # LPIPS linear-layer weights; "" = the file shipped in the `lpips` package
    lpips_min_side: int = 32    # LPIPS only on images at least this large (vaex uses it only at >= 48 px)


@dataclass
class TokGanConfig:
    weight: float = 0.0         # generator hinge-loss weight; 0 = no discriminator (taming 0.8, LlamaGen 0.5)
    start_step: int = 0         # first step with the adversarial terms (LlamaGen 20k, BitVAE 50k)
    adaptive: bool = True       # VQGAN adaptive weight ||grad L_rec|| / ||grad L_G|| at decoder.conv_out
    adaptive_max: float = 1e4   # clamp of the adaptive weight, [0, max] (taming)
    ndf: int = 64               # PatchGAN base width (taming)
    n_layers: int = 3           # PatchGAN stride-2 layers (taming)
    lr_mult: float = 1.0        # discriminator lr = optim.lr * lr_mult
    lecam: float = 0.0          # LeCAM regulariser weight (XQ-GAN 0.001); 0 = off
    lecam_decay: float = 0.999  # EMA decay of the LeCAM logit anchors


@dataclass
class TokQuantConfig:
    l2_norm_codes: bool = False  # cosine lookup on l2-normalised codes (LlamaGen, XQ-GAN); export bakes unit codes
    dropout_p: float = 0.0       # probability of stopping the residual quantiser early in a step (XQ-GAN 0.1)
    dropout_min_scales: int = 3  # an early stop keeps at least this many scales (XQ-GAN: from depth 3)
    dead_every: int = 100        # steps between dead-code checks; 0 = no re-initialisation
    dead_after: int = 500        # a code unused (all scales, all ranks) for this many steps is dead
    buffer_rows: int = 4096      # recent encoder residual rows kept for re-initialisation
    rows_per_step: int = 256     # residual rows added to the buffer per step and rank


@dataclass
class TokOptimConfig:
    max_steps: int = 1000       # total optimizer steps
    global_batch: int = 16      # images per step over all ranks (must divide by the world size)
    lr: float = 3e-4            # AdamW lr (vaex)
    betas: Tuple[float, float] = (0.5, 0.9)  # AdamW betas (vaex)
    weight_decay: float = 0.005  # on conv / linear weights only (vaex)
    warmup_steps: int = 0       # linear lr warm-up
    clip: float = 10.0          # global grad-norm clip; 0 = off (vaex)
    ema: float = 0.0            # EMA decay of the generator weights, exported as vae_ema.*; 0 = off (vaex 0.9999)
    precision: str = "auto"     # "auto" (bf16 on CUDA, fp32 on CPU), "bf16", "fp32"; the quantiser is always fp32
    max_bad_steps: int = 10     # stop (no export) after this many consecutive skipped (NaN/Inf) steps, as the main trainer


@dataclass
class TokCkptConfig:
    dir: str = ""               # "" = <out_dir>/ckpt
    every_steps: int = 500      # steps between step folders
    keep_last: int = 2          # newest complete step folders kept (>= 1: the last good one is never deleted)
    keep_every: int = 0         # also keep multiples of this step
    resume: str = "auto"        # "auto" (newest complete one that verifies), "none", or a step folder path
    verify: str = "hash"        # check files against the marker before loading: "hash" (size + sha256) or "size"
    max_fallback_steps: int = -1  # resume auto may skip damaged checkpoints back this many steps; -1 = every_steps
    allow_fallback: bool = False  # true: fall back past damaged checkpoints however far

    @property
    def fallback_limit(self) -> int:
        return fallback_limit(self)


@dataclass
class TokLogConfig:
    log_every: int = 20         # steps between metrics records (losses, usage per scale, grad norm, img/s)
    images_every: int = 500     # steps between reconstruction images in TensorBoard; 0 = never


@dataclass
class TokTrainConfig:
    out_dir: str = "runs/tokenizer"
    seed: int = 0
    init: str = ""              # official-key checkpoint to fine-tune from; "" = train from scratch
    stop_after: int = 0         # stop cleanly (save + exit, as on SIGTERM) after this many steps of this run; 0 = off
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: TokDataConfig = field(default_factory=TokDataConfig)
    loss: TokLossConfig = field(default_factory=TokLossConfig)
    gan: TokGanConfig = field(default_factory=TokGanConfig)
    quant: TokQuantConfig = field(default_factory=TokQuantConfig)
    optim: TokOptimConfig = field(default_factory=TokOptimConfig)
    ckpt: TokCkptConfig = field(default_factory=TokCkptConfig)
    log: TokLogConfig = field(default_factory=TokLogConfig)

    @property
    def ckpt_dir(self) -> Path:
        return Path(self.ckpt.dir) if self.ckpt.dir else Path(self.out_dir) / TOKENIZER_CKPT_SUBDIR

    def validate(self) -> "TokTrainConfig":
        self.tokenizer.validate()
        if self.optim.max_steps <= 0 or self.optim.global_batch <= 0:
            raise ConfigError("optim", f"max_steps and global_batch must be positive, got {self.optim.max_steps}, "
                                       f"{self.optim.global_batch}")
        if self.optim.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError("optim.precision", f"must be auto, bf16 or fp32, got {self.optim.precision!r}")
        if not 0.0 <= self.quant.dropout_p <= 1.0:
            raise ConfigError("quant.dropout_p", f"must be in [0, 1], got {self.quant.dropout_p}")
        if not 1 <= self.quant.dropout_min_scales <= len(self.tokenizer.patch_nums):
            raise ConfigError("quant.dropout_min_scales", f"must be in [1, {len(self.tokenizer.patch_nums)}]")
        for k in ("l1", "l2", "vq", "beta", "lpips"):
            if getattr(self.loss, k) < 0:
                raise ConfigError(f"loss.{k}", "must be >= 0")
        for key in ("optim.lr", "optim.max_bad_steps", "ckpt.every_steps", "ckpt.keep_last", "log.log_every",
                    "data.min_side", "data.prefetch", "loss.lpips_min_side", "gan.ndf", "gan.n_layers",
                    "quant.buffer_rows", "quant.rows_per_step"):
            positive(key, self._get(key))
        for key in ("optim.weight_decay", "optim.warmup_steps", "optim.clip", "ckpt.keep_every", "data.num_workers",
                    "log.images_every", "stop_after", "gan.weight", "gan.start_step", "gan.lecam", "gan.adaptive_max",
                    "quant.dead_every", "quant.dead_after"):
            non_negative(key, self._get(key))
        check_number("optim.ema", self.optim.ema, lo=0, hi=1, hi_open=True)
        check_resume_keys(self.ckpt)
        return self

    def _get(self, dotted: str):
        obj = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# Keys renamed to the main trainer's words for the same things; the old ones are refused by name.
RENAMED = {"optim.steps": "optim.max_steps", "optim.grad_clip": "optim.clip", "ckpt.every": "ckpt.every_steps",
           "log.every": "log.log_every"}


def _refuse_renamed(data: Dict[str, Any], overrides: Iterable[str]) -> None:
    given = {k.split("=", 1)[0].strip() for k in overrides}
    given |= {f"{section}.{k}" for section, sub in data.items() if isinstance(sub, dict) for k in sub}
    for old, new in RENAMED.items():
        if old in given:
            raise ConfigError(old, f"renamed to {new} (the main trainer's name); write {new}")


def load_tok_config(path: Optional[str] = None, overrides: Iterable[str] = ()) -> TokTrainConfig:
    """YAML file (optional; may name a `base:`) + dotted overrides -> a validated config."""
    if path and not Path(path).is_file():
        raise ConfigError("config", f"no config file {path}")
    data = read_yaml_tree(Path(path).resolve()) if path else {}
    overrides = list(overrides)
    _refuse_renamed(data, overrides)
    return fill_config(TokTrainConfig(), data, overrides).validate()
