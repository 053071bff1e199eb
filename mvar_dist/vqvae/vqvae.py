"""`MultiScaleVQVAE`: the VAR multi-scale residual VQVAE tokenizer, compatible with the official
`vae_ch160v4096z32.pth` (docs/tokenizer.md, "Architecture").

Built frozen (eval mode, no parameter requires grad), as the data pipeline, the trainer and the
evaluation use it; only the tokenizer trainer (mvar_dist/train/tokenizer/) turns its gradients back
on. Every public method runs under `torch.no_grad()` and also works under `torch.inference_mode()`. Images enter in [-1, 1]; token ids
per scale are raster row-major (B, pn*pn) int64, coarse to fine.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .blocks import Decoder, Encoder
from .quantizer import MultiScaleQuantizer
from . import weights as W

DEFAULT_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
RANGE_SLACK = 1e-3  # images may exceed [-1, 1] by this much (float rounding of x*2-1) before we refuse them
DEFAULT_CHUNK = 32  # images encoded per forward in img_to_ids: bounds activation memory


class MultiScaleVQVAE(nn.Module):
    def __init__(self, vocab_size: int = 4096, z_channels: int = 32, ch: int = 160,
                 ch_mult: Sequence[int] = (1, 1, 2, 2, 4), patch_nums: Sequence[int] = DEFAULT_PATCH_NUMS,
                 share_quant_resi: int = 4, num_res_blocks: int = 2):
        super().__init__()
        patch_nums = tuple(int(p) for p in patch_nums)
        if not patch_nums or any(p <= 0 for p in patch_nums) or list(patch_nums) != sorted(patch_nums):
            raise ValueError(f"patch_nums must be positive and increasing (coarse to fine), got {patch_nums}")
        if vocab_size <= 0 or z_channels <= 0 or ch <= 0 or not ch_mult:
            raise ValueError(f"bad tokenizer size: vocab_size={vocab_size} z_channels={z_channels} ch={ch} "
                             f"ch_mult={tuple(ch_mult)}")
        if share_quant_resi < 0:
            raise ValueError(f"share_quant_resi must be >= 0, got {share_quant_resi}")
        self.vocab_size, self.z_channels, self.ch = int(vocab_size), int(z_channels), int(ch)
        self.ch_mult = tuple(int(m) for m in ch_mult)
        self.patch_nums = patch_nums
        self.share_quant_resi = int(share_quant_resi)
        self.num_res_blocks = int(num_res_blocks)
        self.downsample = 2 ** (len(self.ch_mult) - 1)
        self.resolution = patch_nums[-1] * self.downsample
        self.encoder = Encoder(self.ch, self.ch_mult, self.z_channels, self.num_res_blocks)
        self.decoder = Decoder(self.ch, self.ch_mult, self.z_channels, self.num_res_blocks)
        self.quantize = MultiScaleQuantizer(self.vocab_size, self.z_channels, patch_nums, self.share_quant_resi)
        self.quant_conv = nn.Conv2d(self.z_channels, self.z_channels, 3, 1, 1)
        self.post_quant_conv = nn.Conv2d(self.z_channels, self.z_channels, 3, 1, 1)
        self.eval()
        self.requires_grad_(False)

    # ----------------------------------------------------------------------------------- identity
    def hparams(self) -> Dict[str, Any]:
        return {"vocab_size": self.vocab_size, "z_channels": self.z_channels, "ch": self.ch,
                "ch_mult": list(self.ch_mult), "patch_nums": list(self.patch_nums),
                "share_quant_resi": self.share_quant_resi, "num_res_blocks": self.num_res_blocks}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())

    @property
    def codebook(self) -> torch.Tensor:
        """(V, Cvae) code embeddings."""
        return self.quantize.embedding.weight

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def train(self, mode: bool = True) -> "MultiScaleVQVAE":
        # frozen tokenizer: a parent's .train() must not change it (it has no train-only behaviour,
        # but staying in eval keeps the official test_mode contract)
        return super().train(False)

    def weights_hash(self) -> str:
        return W.weights_hash(self)

    def official_state_dict(self) -> Dict[str, torch.Tensor]:
        return W.official_state_dict(self)

    def save_official(self, path: Union[str, os.PathLike]):
        """Write the weights under the official key names (.safetensors or .pth), atomically."""
        return W.save_official(self, path, self.hparams())

    # -------------------------------------------------------------------------------- construction
    @classmethod
    def from_official(cls, sd_or_path: Union[str, os.PathLike, Mapping[str, Any]], **hparams) -> "MultiScaleVQVAE":
        """Build from an official-key state dict (path to .pth / .safetensors, or a dict). Sizes not
        given are read off the tensor shapes; `patch_nums` defaults to the VAR 256 px scales."""
        sd = W.read_state_dict(sd_or_path)
        args = {**W.infer_hparams(sd), **hparams}
        vae = cls(**args)
        where = str(sd_or_path) if isinstance(sd_or_path, (str, os.PathLike)) else "state dict"
        W.load_strict(vae, sd, where)
        return vae

    @classmethod
    def from_config(cls, cfg, seed: int = 0) -> "MultiScaleVQVAE":
        """From a TokenizerConfig: loads `cfg.checkpoint` if set, else deterministic random weights."""
        hp = cfg.hparams()
        if getattr(cfg, "checkpoint", ""):
            vae = cls.from_official(cfg.checkpoint, **hp)
        else:
            vae = cls.random(seed=seed, **hp)
        if vae.resolution != cfg.resolution:
            raise ValueError(f"tokenizer.resolution {cfg.resolution} != patch_nums[-1] {vae.patch_nums[-1]} x "
                             f"downsample {vae.downsample} = {vae.resolution}")
        return vae

    @classmethod
    def random(cls, seed: int = 0, **hparams) -> "MultiScaleVQVAE":
        """Deterministic random weights for a seed (demo/tests); see weights.random_init_."""
        vae = cls(**hparams)
        W.random_init_(vae, seed)
        return vae

    # ---------------------------------------------------------------------------------- checking
    def _check_img(self, img: torch.Tensor) -> None:
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"image batch must be a torch.Tensor (B, 3, H, W) in [-1, 1], got {type(img).__name__}")
        if not img.is_floating_point():
            raise TypeError(f"image batch must be floating point in [-1, 1], got dtype {img.dtype} "
                            f"(uint8 images: convert with x.float() / 127.5 - 1)")
        if img.dim() != 4 or img.shape[1] != 3:
            raise ValueError(f"image batch must have shape (B, 3, H, W), got {tuple(img.shape)}")
        if img.shape[2] != self.resolution or img.shape[3] != self.resolution:
            raise ValueError(f"image side must be {self.resolution} px (patch_nums[-1] {self.patch_nums[-1]} x "
                             f"downsample {self.downsample}), got {img.shape[2]}x{img.shape[3]}")
        if img.numel():
            lo, hi = float(img.min()), float(img.max())
            if not (lo >= -1 - RANGE_SLACK and hi <= 1 + RANGE_SLACK):  # also catches NaN
                hint = " (looks like [0, 255]: use x / 127.5 - 1)" if hi > 2 else ""
                raise ValueError(f"image values must lie in [-1, 1], got min {lo:.4g} max {hi:.4g}{hint}")

    def _as_scale_list(self, ids: Union[torch.Tensor, Sequence[torch.Tensor]], need: int) -> List[torch.Tensor]:
        """Accept a list of per-scale (B, pn*pn) ids or one (B, L) concatenated tensor; check shapes/range."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 2 or ids.shape[1] != self.seq_len:
                raise ValueError(f"concatenated ids must be (B, {self.seq_len}), got {tuple(ids.shape)}")
            ids = ids.split([pn * pn for pn in self.patch_nums], dim=1)
        ids = list(ids)
        if len(ids) < need:
            raise ValueError(f"expected ids for {need} scales (patch_nums {list(self.patch_nums)}), got {len(ids)}")
        out = []
        B = ids[0].shape[0] if isinstance(ids[0], torch.Tensor) else None
        for si in range(need):
            t, pn = ids[si], self.patch_nums[si]
            if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"ids of scale {si} must be an integer tensor, got "
                                f"{getattr(t, 'dtype', type(t).__name__)}")
            if t.dim() != 2 or t.shape != (B, pn * pn):
                raise ValueError(f"ids of scale {si} must have shape ({B}, {pn * pn}), got {tuple(t.shape)}")
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.vocab_size):
                raise ValueError(f"ids of scale {si} out of range [0, {self.vocab_size}): "
                                 f"min {int(t.min())} max {int(t.max())}")
            out.append(t.to(device=self.codebook.device, dtype=torch.long))
        return out

    # ---------------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def encode_latent(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        """quant_conv(encoder(img)): the continuous latent f (B, Cvae, h, w). Runs under any ambient autocast."""
        return self.quant_conv(self.encoder(img_B3HW))

    @torch.no_grad()
    def img_to_ids(self, img_B3HW: torch.Tensor, chunk_size: Optional[int] = DEFAULT_CHUNK) -> List[torch.Tensor]:
        """Token ids per scale: list of len(patch_nums) int64 (B, pn*pn). The encoder follows the
        ambient autocast (bf16 is possible); the quantiser always runs in fp32."""
        self._check_img(img_B3HW)
        img_B3HW = img_B3HW.to(self.codebook.device)
        B = img_B3HW.shape[0]
        if B == 0:
            return [torch.empty(0, p * p, dtype=torch.long, device=img_B3HW.device) for p in self.patch_nums]
        step = B if not chunk_size or chunk_size >= B else int(chunk_size)
        parts: List[List[torch.Tensor]] = []
        for b0 in range(0, B, step):
            f_BCHW = self.encode_latent(img_B3HW[b0:b0 + step])
            with self._fp32():
                parts.append(self.quantize.f_to_ids(f_BCHW.float()))
        if len(parts) == 1:
            return parts[0]
        return [torch.cat([p[si] for p in parts]) for si in range(len(self.patch_nums))]

    @torch.no_grad()
    def img_to_tokens(self, img_B3HW: torch.Tensor, chunk_size: Optional[int] = DEFAULT_CHUNK) -> torch.Tensor:
        """All scales concatenated, coarse to fine: int64 (B, L), the token-shard row layout."""
        return torch.cat(self.img_to_ids(img_B3HW, chunk_size), dim=1)

    # ---------------------------------------------------------------------------------- decoding
    def _fp32(self):
        return torch.autocast(device_type=self.codebook.device.type, enabled=False)

    @torch.no_grad()
    def ids_to_teacher_input(self, ids) -> torch.Tensor:
        """Teacher-forcing input (B, L - patch_nums[0]**2, Cvae) float32: scale k's positions hold the
        reconstruction from scales < k, area-resized to scale k (only the first SN-1 scales are read)."""
        with self._fp32():
            return self.quantize.ids_to_teacher_input(self._as_scale_list(ids, len(self.patch_nums) - 1))

    @torch.no_grad()
    def ids_to_fhat(self, ids) -> torch.Tensor:
        """Reconstruction latent f_hat (B, Cvae, h, w) from the ids of all scales."""
        with self._fp32():
            return self.quantize.ids_to_fhat(self._as_scale_list(ids, len(self.patch_nums)))

    @torch.no_grad()
    def fhat_to_img(self, f_hat_BChw: torch.Tensor) -> torch.Tensor:
        """decoder(post_quant_conv(f_hat)) clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat_BChw)).clamp_(-1, 1)

    @torch.no_grad()
    def ids_to_img(self, ids) -> torch.Tensor:
        """(B, 3, H, W) reconstruction in [-1, 1] from the ids of all scales."""
        return self.fhat_to_img(self.ids_to_fhat(ids))

    @torch.no_grad()
    def img_to_fhat(self, img_B3HW: torch.Tensor) -> torch.Tensor:
        return self.ids_to_fhat(self.img_to_ids(img_B3HW))

    @torch.no_grad()
    def next_ar_input(self, si: int, f_hat_BChw: torch.Tensor, h_BChw: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Sampler step (docs/tokenizer.md): f_hat + Phi(bicubic_up(h)) and its area-resize to scale
        si+1 (at the last scale both outputs are the new f_hat). Returns new tensors; f_hat is not
        modified in place."""
        if not 0 <= si < len(self.patch_nums):
            raise ValueError(f"scale index {si} out of range for {len(self.patch_nums)} scales")
        pn = self.patch_nums[si]
        if h_BChw.dim() != 4 or tuple(h_BChw.shape[1:]) != (self.z_channels, pn, pn):
            raise ValueError(f"h at scale {si} must be (B, {self.z_channels}, {pn}, {pn}), got {tuple(h_BChw.shape)}")
        with self._fp32():
            return self.quantize.next_ar_input(si, f_hat_BChw.float(), h_BChw)

    def ids_to_code_map(self, si: int, ids_Bl: torch.Tensor) -> torch.Tensor:
        """Code embeddings of one scale's ids as (B, Cvae, pn, pn): the `h_BChw` of next_ar_input."""
        return self.quantize.embed(ids_Bl.to(self.codebook.device, torch.long), self.patch_nums[si])
