"""Typed configuration: one dataclass per component, one `RunConfig` holding them all.

Every field carries a comment saying what it is. Fields whose value is derived from another
(width from depth, the drop-path rate from depth, ...) default to 0 / -1 / "" and are filled in
by `RunConfig.resolve()`, so a YAML file only needs to turn the one dial (`model.depth`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

from .errors import ConfigError
from .numbers import check_number, non_negative, positive, strictly_increasing

DEFAULT_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


@dataclass(frozen=True)
class ArchSpec:
    """What the architecture name decides, resolved once (docs/model.md, "Architectures")."""
    name: str
    ada_chunks: int     # AdaLN rows per block: (gamma, scale, shift) per gated branch
    mask: str           # attention mask kind: "intra" (block-diagonal) or "causal" (block-causal)
    has_mamba: bool     # a Mamba2 branch between attention and the FFN

    @property
    def branches(self) -> int:
        return self.ada_chunks // 3


ARCHS = {"mvar": ArchSpec("mvar", ada_chunks=9, mask="intra", has_mamba=True),
         "var": ArchSpec("var", ada_chunks=6, mask="causal", has_mamba=False)}


def arch_spec(arch: str) -> ArchSpec:
    if arch not in ARCHS:
        raise ConfigError("model.arch", f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")
    return ARCHS[arch]


@dataclass
class ModelConfig:
    arch: str = "mvar"              # "mvar" (intra-scale attention + Mamba2) or "var" (block-causal attention)
    depth: int = 16                 # the one dial: number of blocks; width and heads derive from it
    width: int = 0                  # embedding width C; 0 = 64 * depth
    num_heads: int = 0              # attention heads; 0 = depth (head_dim 64)
    mlp_ratio: float = 4.0          # FFN hidden = round(mlp_ratio * width)
    num_classes: int = 1000         # class labels; index num_classes is the CFG null class
    attn_l2_norm: bool = True       # L2-normalised q/k with a learned per-head scale (False for the d16/d20 M-VAR checkpoints)
    drop_path_rate: float = -1.0    # max stochastic depth; -1 = 0.1 * depth / 24 as in the official builder
    cond_drop_rate: float = 0.1     # label dropout probability for classifier-free guidance (applied by the trainer)
    norm_eps: float = 1e-6          # LayerNorm epsilon
    d_state: int = 64               # Mamba2 SSM state size (M-VAR only)
    d_conv: int = 4                 # Mamba2 causal depthwise conv width (M-VAR only)
    expand: int = 2                 # Mamba2 inner width = expand * width (M-VAR only)
    mamba_headdim: int = 64         # Mamba2 head dim (M-VAR only)
    init_gamma3: str = "official"   # "official" copies the FFN-gate init quirk (x aln), "fixed" uses alng for all gammas
    act_checkpoint: bool = False    # non-reentrant activation checkpointing per block
    compile: bool = False           # torch.compile each block's forward (regional; ZeRO-3-safe, docs/model.md)

    def resolve(self) -> "ModelConfig":
        if self.width == 0:
            self.width = 64 * self.depth
        if self.num_heads == 0:
            self.num_heads = self.depth
        if self.drop_path_rate < 0:
            self.drop_path_rate = 0.1 * self.depth / 24
        return self

    @property
    def spec(self) -> ArchSpec:
        return arch_spec(self.arch)

    def validate(self) -> None:
        spec = self.spec
        _one_of("model.init_gamma3", self.init_gamma3, ("official", "fixed"))
        _positive("model.depth", self.depth)
        _positive("model.num_classes", self.num_classes)
        for key in ("mlp_ratio", "d_state", "d_conv", "expand", "mamba_headdim"):
            _positive(f"model.{key}", getattr(self, key))
        _positive("model.num_heads", self.num_heads)
        if self.width % self.num_heads:
            raise ConfigError("model.width", f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if spec.has_mamba and (self.expand * self.width) % self.mamba_headdim:
            raise ConfigError("model.mamba_headdim",
                              f"Mamba2 inner width {self.expand * self.width} is not divisible by headdim {self.mamba_headdim}")
        if not 0.0 <= self.cond_drop_rate < 1.0:
            raise ConfigError("model.cond_drop_rate", f"must be in [0, 1), got {self.cond_drop_rate}")


@dataclass
class TokenizerConfig:
    vocab_size: int = 4096                  # codebook size V (ids fit in uint16 up to 65536)
    z_channels: int = 32                    # latent channels Cvae
    ch: int = 160                           # base channel count of the encoder/decoder
    ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)  # per-level channel multipliers; downsample = 2**(len-1)
    patch_nums: Tuple[int, ...] = DEFAULT_PATCH_NUMS  # side of each scale's token map, coarse to fine
    share_quant_resi: int = 4               # number of shared Phi convs (0 = one per scale, 1 = one shared)
    num_res_blocks: int = 2                 # ResNet blocks per encoder level (the decoder has one more); official 2
    resolution: int = 256                   # image side in pixels; must equal patch_nums[-1] * downsample
    checkpoint: str = ""                    # official vae_ch160v4096z32.pth (or safetensors); "" = random weights (demo/tests)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def hparams(self) -> Dict[str, Any]:
        """The `MultiScaleVQVAE(...)` constructor arguments these sizes describe."""
        return dict(vocab_size=self.vocab_size, z_channels=self.z_channels, ch=self.ch, ch_mult=tuple(self.ch_mult),
                    patch_nums=tuple(self.patch_nums), share_quant_resi=self.share_quant_resi,
                    num_res_blocks=self.num_res_blocks)

    def validate(self) -> None:
        _positive("tokenizer.vocab_size", self.vocab_size)
        if self.vocab_size > 65536:
            raise ConfigError("tokenizer.vocab_size", "token shards store ids as uint16; vocab_size must be <= 65536")
        strictly_increasing("tokenizer.patch_nums", list(self.patch_nums))
        for key in ("z_channels", "ch", "resolution"):
            _positive(f"tokenizer.{key}", getattr(self, key))
        if self.patch_nums[-1] * self.downsample != self.resolution:
            raise ConfigError(
                "tokenizer.patch_nums",
                f"last side {self.patch_nums[-1]} x downsample {self.downsample} = "
                f"{self.patch_nums[-1] * self.downsample} does not match tokenizer.resolution {self.resolution}")
        if self.share_quant_resi < 0:
            raise ConfigError("tokenizer.share_quant_resi", "must be >= 0")
        _positive("tokenizer.num_res_blocks", self.num_res_blocks)


@dataclass
class DataConfig:
    image_root: str = ""            # ImageFolder dir, tar dir or s3:// prefix of raw images (tokenisation input)
    shards: str = ""                # token shard dir or s3:// prefix holding manifest.json (training input)
    variants: int = 4               # crop/flip variants stored per image by the tokenisation job
    hflip: bool = False             # allow horizontal flips among the variants (VAR trains without)
    num_workers: int = 2            # loader worker processes
    shuffle_window: int = 4096      # within-window sample shuffle size
    val_fraction: float = 0.0       # fraction of images held out for validation (0 = no validation)
    cache_dir: str = ""             # local cache for s3:// shards ("" = no cache)

    def validate(self) -> None:
        _positive("data.variants", self.variants)
        if self.num_workers < 0:
            raise ConfigError("data.num_workers", "must be >= 0")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("data.val_fraction", f"must be in [0, 1), got {self.val_fraction}")


@dataclass
class OptimConfig:
    global_batch: int = 768         # images per optimizer step over all ranks (kept fixed across world sizes)
    micro_batch: int = 0            # images per rank per forward; 0 = global_batch / world_size
    epochs: int = 200               # training epochs
    max_steps: int = 0              # stop after this many steps; 0 = epochs * steps_per_epoch
    tblr: float = 1e-4              # base lr per 256 images: peak lr = tblr * global_batch / 256
    betas: Tuple[float, float] = (0.9, 0.95)  # AdamW betas
    eps: float = 1e-8               # AdamW epsilon
    twd: float = 0.05               # weight decay at the start (cosine schedule)
    twde: float = -1.0              # weight decay at the end; -1 = twd (constant)
    wp: float = -1.0                # warm-up epochs; -1 = epochs / 50
    wp0: float = 0.005              # lr at the start of warm-up, as a fraction of peak
    wpe: float = 0.01               # final lr as a fraction of peak (lin0 schedule)
    sche: str = "lin0"              # lr schedule after warm-up: "lin0" or "cos"
    clip: float = 2.0               # gradient-norm clip (0 = off)
    alng: float = 1e-3              # init multiplier of the AdaLN gamma rows
    aln: float = 0.5                # init multiplier of the other AdaLN rows
    label_smoothing: float = 0.0    # cross-entropy label smoothing
    precision: str = "bf16"         # "bf16" (bf16 weights), "bf16-autocast" (fp32 weights, bf16 autocast), "fp16" (official AMP: fp32 weights, fp16 autocast, dynamic loss scale) or "fp32"
    max_bad_steps: int = 10         # stop after this many consecutive skipped (NaN/Inf) steps

    def resolve(self) -> "OptimConfig":
        if self.twde < 0:
            self.twde = self.twd
        if self.wp < 0:
            self.wp = self.epochs / 50
        return self

    @property
    def peak_lr(self) -> float:
        return self.tblr * self.global_batch / 256

    def validate(self) -> None:
        _positive("optim.global_batch", self.global_batch)
        _positive("optim.epochs", self.epochs)
        non_negative("optim.max_steps", self.max_steps)
        non_negative("optim.clip", self.clip)
        non_negative("optim.label_smoothing", self.label_smoothing)
        _positive("optim.max_bad_steps", self.max_bad_steps)
        _one_of("optim.sche", self.sche, ("lin0", "cos"))
        _one_of("optim.precision", self.precision, ("bf16", "bf16-autocast", "fp16", "fp32"))
        if self.tblr <= 0:
            raise ConfigError("optim.tblr", f"must be > 0, got {self.tblr}")
        if self.micro_batch < 0 or (self.micro_batch and self.global_batch % self.micro_batch):
            raise ConfigError("optim.micro_batch",
                              f"global_batch {self.global_batch} is not divisible by micro_batch {self.micro_batch}")
        if not 0.0 <= self.wpe <= 1.0:
            raise ConfigError("optim.wpe", f"must be in [0, 1], got {self.wpe}")


@dataclass
class CheckpointConfig:
    dir: str = ""                   # checkpoint root; "" = <out_dir>/checkpoints
    every_steps: int = 1000         # save every N optimizer steps (also on SIGTERM/SIGINT)
    keep_last: int = 3              # keep the newest K complete checkpoints
    keep_every: int = 0             # additionally keep every M-th step forever (0 = none)
    resume: str = "auto"            # "auto" = newest complete checkpoint, "none", or a checkpoint path
    export_dtype: str = "bf16"      # dtype of the consolidated model.safetensors: "bf16", "fp32" or "none"
    verify: str = "hash"            # check files against the marker before loading: "hash" (size + sha256) or "size"
    max_fallback_steps: int = -1    # --resume auto may skip damaged checkpoints back this many steps; -1 = every_steps
    allow_fallback: bool = False    # true: fall back past damaged checkpoints however far (max_fallback_steps ignored)
    allow_new_tokenizer: bool = False  # true: resume a checkpoint whose meta.json names another tokenizer hash
    stage_dir: str = ""             # node-local staging of an s3:// dir (uploads, downloads); "" = <out_dir>/ckpt_stage

    def validate(self) -> None:
        _positive("ckpt.every_steps", self.every_steps)
        _positive("ckpt.keep_last", self.keep_last)
        non_negative("ckpt.keep_every", self.keep_every)
        check_resume_keys(self)

    @property
    def fallback_limit(self) -> int:
        return fallback_limit(self)


def check_resume_keys(ckpt) -> None:
    """ckpt.verify and ckpt.max_fallback_steps, as both trainers' checkpoint sections have them."""
    _one_of("ckpt.verify", ckpt.verify, ("hash", "size"))
    if ckpt.max_fallback_steps < -1:
        raise ConfigError("ckpt.max_fallback_steps", f"must be >= -1, got {ckpt.max_fallback_steps}")


def fallback_limit(ckpt) -> int:
    """Steps --resume auto may fall back over damaged checkpoints without allow_fallback."""
    return ckpt.every_steps if ckpt.max_fallback_steps < 0 else ckpt.max_fallback_steps


@dataclass
class EmaConfig:
    enabled: bool = False           # keep an fp32 EMA of the weights (per rank, on its ZeRO-3 partition); off as in VAR/M-VAR
    decay: float = 0.9999           # target decay; the applied decay is min(decay, (1+k)/(10+k)), k = steps after start_step
    start_step: int = 0             # up to this optimizer step the EMA copies the weights; averaging starts after it
    every: int = 1                  # fold the weights in every N optimizer steps (counted from start_step)

    def validate(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise ConfigError("ema.decay", f"must be in [0, 1), got {self.decay}")
        if self.start_step < 0:
            raise ConfigError("ema.start_step", f"must be >= 0, got {self.start_step}")
        _positive("ema.every", self.every)


@dataclass
class LoggingConfig:
    tb_dir: str = ""                # TensorBoard dir; "" = <out_dir>/tb
    log_every: int = 10             # console/TensorBoard interval in steps
    val_every: int = 0              # validation interval in steps (0 = off)
    progress_bar: bool = True       # tqdm progress bar on rank 0
    peak_tflops: float = 0.0        # per-device peak TFLOP/s for MFU; 0 = look up the GPU (CPU: MFU not logged)

    def validate(self) -> None:
        _positive("log.log_every", self.log_every)
        non_negative("log.val_every", self.val_every)
        non_negative("log.peak_tflops", self.peak_tflops)


@dataclass
class EvalConfig:
    num_per_class: int = 50         # samples per class (50 x 1000 = the standard 50k)
    cfg_scale: float = 1.5          # classifier-free guidance scale at the last scale (ramped from 0)
    top_k: int = 900                # top-k filter before top-p
    top_p: float = 0.96             # nucleus filter
    seed: int = 0                   # base sampling seed; image i uses a seed derived from (seed, i)
    batch_size: int = 32            # sampling batch per rank
    inception_weights: str = ""     # pytorch-fid pt_inception-2015-12-05-6726825d.pth; "" = FID skipped
    reference_npz: str = ""         # VIRTUAL_imagenet256_labeled.npz (mu/sigma); "" = FID skipped
    inception_mode: str = "adm"     # "adm": ADM's evaluator, as the papers; "pytorch-fid": its preprocessing
    weights: str = "raw"            # generator weights to sample: "raw" (model.safetensors) or "ema" (model_ema.safetensors)

    def validate(self) -> None:
        _positive("eval.num_per_class", self.num_per_class)
        _positive("eval.batch_size", self.batch_size)
        non_negative("eval.cfg_scale", self.cfg_scale)
        check_number("eval.top_p", self.top_p, lo=0, hi=1, lo_open=True)
        if self.top_k < 0:
            raise ConfigError("eval.top_k", "must be >= 0 (0 = off)")
        if self.inception_mode not in ("adm", "pytorch-fid"):
            raise ConfigError("eval.inception_mode", f"must be 'adm' or 'pytorch-fid', got {self.inception_mode!r}")
        _one_of("eval.weights", self.weights, ("raw", "ema"))


@dataclass
class RunConfig:
    name: str = "run"               # run name; outputs go to <out_dir>
    out_dir: str = ""               # output folder; "" = outputs/<name>
    seed: int = 0                   # global seed (data order, init, sampling)
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ckpt: CheckpointConfig = field(default_factory=CheckpointConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    log: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def resolve(self) -> "RunConfig":
        """Fill derived fields and validate every section; returns self."""
        if not self.out_dir:
            self.out_dir = f"outputs/{self.name}"
        if not self.ckpt.dir:
            self.ckpt.dir = f"{self.out_dir}/checkpoints"
        if not self.log.tb_dir:
            self.log.tb_dir = f"{self.out_dir}/tb"
        self.model.resolve()
        self.optim.resolve()
        for section in (self.model, self.tokenizer, self.data, self.optim, self.ckpt, self.ema, self.log, self.eval):
            section.validate()
        return self


_positive = positive  # the shared number validator (numbers.py)


def _one_of(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(key, f"must be one of {list(allowed)}, got {value!r}")


SECTIONS = ("model", "tokenizer", "data", "optim", "ckpt", "ema", "log", "eval")
