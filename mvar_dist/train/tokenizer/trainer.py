"""The tokenizer trainer: data-parallel training of `MultiScaleVQVAE` with the objective of
docs/tokenizer_training.md, step checkpoints with exact resume, SIGTERM save, and export.

Data parallelism is plain torch.distributed (gloo on CPU, nccl on GPU) with one explicit gradient
all-reduce per step: the tokenizer fits one device, so ZeRO sharding buys nothing, and quantiser
dropout leaves some Phi convs without a gradient in some steps, which a DDP wrapper would refuse.
Each rank's loss is weighted by its share of the step's images, so the summed gradients are those of
the global-batch mean whatever the world size.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from mvar_dist import distributed as D
from mvar_dist.vqvae.weights import check_finite
from mvar_dist.train.checkpoint import CheckpointWriter, choose_resume
from mvar_dist.train.ckpt_sync import agreed
from mvar_dist.vqvae import MultiScaleVQVAE

from . import state as S
from .codebook_health import CodebookHealth
from .config import TokTrainConfig
from .discriminator import PatchDiscriminator
from .losses import LeCam, adaptive_weight, hinge_d_loss, hinge_g_loss, pixel_terms
from .quant import dropout_stop, quantize_train


def build_generator(cfg: TokTrainConfig) -> MultiScaleVQVAE:
    tk = cfg.tokenizer
    hp = tk.hparams()
    vae = MultiScaleVQVAE.from_official(cfg.init, **hp) if cfg.init else MultiScaleVQVAE.random(seed=cfg.seed, **hp)
    return vae.requires_grad_(True)


def param_groups(model: torch.nn.Module, wd: float) -> List[Dict[str, Any]]:
    """Weight decay on conv / linear weights; none on biases, norms and the codebook."""
    decay, rest = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else rest).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]


class TokenizerTrainer:
    def __init__(self, cfg: TokTrainConfig, rank: int = 0, world: int = 1, device: Optional[torch.device] = None,
                 log: Callable[[str], None] = print):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.device = device or torch.device("cpu")
        self.log = log if rank == 0 else (lambda _m: None)
        prec = cfg.optim.precision
        self.amp_dtype = torch.bfloat16 if prec == "bf16" or (prec == "auto" and self.device.type == "cuda") else None
        self.vae = build_generator(cfg).to(self.device)
        o = cfg.optim
        self.opt = torch.optim.AdamW(param_groups(self.vae, o.weight_decay), lr=o.lr, betas=tuple(o.betas))
        q = cfg.quant
        self.health = CodebookHealth(self.vae.vocab_size, len(self.vae.patch_nums), self.vae.z_channels,
                                     q.buffer_rows, q.rows_per_step, cfg.seed, rank)
        self.lpips = self._build_lpips()
        self.disc, self.opt_d, self.lecam = self._build_disc()
        self.ema = {n: p.detach().clone() for n, p in self.vae.named_parameters()} if o.ema > 0 else None
        self.step, self.rejected, self.images_seen = 0, 0, 0
        self.bad_run, self.skipped = 0, 0  # consecutive / all skipped (non-finite) steps
        self.writer = CheckpointWriter(cfg.ckpt_dir, rank, cfg.ckpt.keep_last, cfg.ckpt.keep_every)
        self.last_rec: Dict[str, float] = {}

    # ------------------------------------------------------------------------------------- building
    def _build_lpips(self):
        lc = self.cfg.loss
        if lc.lpips <= 0:
            return None
        if not lc.lpips_backbone:
            self.log("LPIPS off: no loss.lpips_backbone file given (torchvision vgg16 state dict); "
                     "nothing is downloaded")
            return None
        from .lpips import LPIPS

        return LPIPS.from_files(lc.lpips_backbone, lc.lpips_lin or None).to(self.device)

    def _build_disc(self):
        g = self.cfg.gan
        if g.weight <= 0:
            return None, None, None
        disc = PatchDiscriminator(3, g.ndf, g.n_layers).to(self.device)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=self.cfg.optim.lr * g.lr_mult,
                                  betas=tuple(self.cfg.optim.betas), weight_decay=0.0)
        return disc, opt_d, (LeCam(g.lecam_decay) if g.lecam > 0 else None)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        return o.lr * min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else o.lr

    # ------------------------------------------------------------------------------------- forward
    def forward(self, img_B3HW: torch.Tensor, stop_at: Optional[int] = None):
        """(reconstruction (B, 3, H, W) fp32, QuantOut): encoder and decoder under the run's autocast,
        the quantiser in fp32."""
        vae = self.vae
        with self._autocast():
            f_BCHW = vae.quant_conv(vae.encoder(img_B3HW))
        q = quantize_train(vae.quantize, f_BCHW, self.cfg.loss.beta, self.cfg.quant.l2_norm_codes, stop_at)
        with self._autocast():
            rec_B3HW = vae.decoder(vae.post_quant_conv(q.f_hat_st))
        return rec_B3HW.float(), q

    def rec_terms(self, rec: torch.Tensor, img: torch.Tensor, q) -> Dict[str, torch.Tensor]:
        lc = self.cfg.loss
        terms = pixel_terms(rec, img, lc.l1, lc.l2)
        if lc.vq > 0:
            terms["vq"] = q.vq_loss
        if self.lpips is not None and img.shape[-1] >= lc.lpips_min_side:
            terms["lpips"] = self.lpips(rec, img).mean()
        return terms

    def weighted(self, terms: Dict[str, torch.Tensor]) -> torch.Tensor:
        lc = self.cfg.loss
        weights = {"l1": lc.l1, "l2": lc.l2, "vq": lc.vq, "lpips": lc.lpips}
        return sum(weights[k] * v for k, v in terms.items())

    def gan_active(self, step: int) -> bool:
        return self.disc is not None and step >= self.cfg.gan.start_step

    def gan_adaptive(self, rec_loss: torch.Tensor, g_loss: torch.Tensor, share: float) -> torch.Tensor:
        """The VQGAN adaptive weight from the global (all-reduced) gradients at decoder.conv_out."""
        last = self.vae.decoder.conv_out.weight
        g_rec = torch.autograd.grad(rec_loss * share, last, retain_graph=True)[0]
        g_gan = torch.autograd.grad(g_loss * share, last, retain_graph=True)[0]
        D.all_reduce_(g_rec), D.all_reduce_(g_gan)
        return adaptive_weight(g_rec, g_gan, self.cfg.gan.adaptive_max)

    def generator_loss(self, img_B3HW: torch.Tensor, share: float):
        """(total loss, terms, reconstruction, QuantOut, extra logs) of this rank's images at self.step."""
        step, cfg = self.step, self.cfg
        stop = dropout_stop(len(self.vae.patch_nums), cfg.quant.dropout_p, cfg.quant.dropout_min_scales, cfg.seed, step)
        rec, q = self.forward(img_B3HW, stop)
        terms = self.rec_terms(rec, img_B3HW, q)
        loss = self.weighted(terms)
        extra: Dict[str, float] = {}
        if self.gan_active(step):
            self.disc.requires_grad_(False)
            g_loss = hinge_g_loss(self.disc(rec))
            w = self.gan_adaptive(loss, g_loss, share) if cfg.gan.adaptive else torch.ones(())
            terms["g_hinge"] = g_loss
            loss = loss + cfg.gan.weight * w * g_loss
            extra["adaptive_w"] = float(w)
        return loss, terms, rec, q, extra

    # ------------------------------------------------------------------------------------- one step
    def train_step(self, img_B3HW: torch.Tensor) -> Dict[str, float]:
        """One optimizer step on this rank's images (may be empty); returns the global means.

        A step whose global loss or gradient norm is not finite changes nothing (no update, no EMA,
        no discriminator step, no codebook statistics) and is counted in bad_run / skipped (the main
        trainer's policy); the caller stops the run after optim.max_bad_steps in a row."""
        step = self.step
        n_local = int(img_B3HW.shape[0]) if img_B3HW.dim() == 4 else 0
        n_global = float(D.all_reduce_(torch.tensor([float(n_local)], device=self.device))[0])
        if n_local == 0:  # keep the collectives aligned: a zero-weight pass on a blank image
            r = self.vae.resolution
            img_B3HW = torch.zeros(1, 3, r, r)
        img_B3HW = img_B3HW.to(self.device, non_blocking=True)
        share = n_local / n_global if n_global > 0 else 0.0
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        loss, terms, rec, q, extra = self.generator_loss(img_B3HW, share)
        self.opt.zero_grad(set_to_none=True)
        (loss * share).backward()
        D.all_reduce_grads(self.vae.parameters())
        gn = self._clip(self.vae.parameters())
        terms["total"] = loss
        out = self._global_means(terms, n_local, share)  # identical on every rank, as is gn
        good = math.isfinite(gn) and all(math.isfinite(v) for v in out.values())
        self.bad_run = 0 if good else self.bad_run + 1
        self.skipped += 0 if good else 1
        if good:
            self.opt.step()
            self.update_ema()
            if self.gan_active(step):
                extra.update(self.disc_step(img_B3HW, rec.detach(), share))
            if n_local:
                self.health.observe(q.ids, q.rows_NC, step)
        self.opt.zero_grad(set_to_none=True)
        out.update(extra, grad_norm=gn, scales_used=float(q.scales_used), images=n_global)
        self.images_seen += int(n_global)
        self.step += 1
        return out

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * w."""
        if self.ema is None:
            return
        names, live = zip(*self.vae.named_parameters())
        torch._foreach_lerp_([self.ema[n] for n in names], [p.detach() for p in live], 1.0 - self.cfg.optim.ema)

    @torch.no_grad()
    def ema_take_codes(self, codes_D: torch.Tensor) -> None:
        """Re-initialised codes enter the EMA codebook as they are (their old average is meaningless)."""
        if self.ema is not None and codes_D.numel():
            w_VC = self.vae.quantize.embedding.weight
            self.ema["quantize.embedding.weight"][codes_D.to(w_VC.device)] = w_VC[codes_D.to(w_VC.device)]

    def ema_model(self) -> Optional[MultiScaleVQVAE]:
        """A CPU copy of the generator holding the EMA weights (None when EMA is off)."""
        if self.ema is None:
            return None
        model = S.export_copy(self.vae, False)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(self.ema[n])
        return model

    def disc_step(self, img: torch.Tensor, rec: torch.Tensor, share: float) -> Dict[str, float]:
        self.disc.requires_grad_(True)
        logits_real, logits_fake = self.disc(img), self.disc(rec)
        d_loss = hinge_d_loss(logits_real, logits_fake)
        means = D.all_reduce_(torch.stack([logits_real.detach().float().mean(),
                                           logits_fake.detach().float().mean()]) * share)
        if self.lecam is not None:
            if self.lecam.ema_real is not None:
                d_loss = d_loss + self.cfg.gan.lecam * self.lecam.penalty(logits_real, logits_fake)
            self.lecam.update(means[0], means[1])
        self.opt_d.zero_grad(set_to_none=True)
        (d_loss * share).backward()
        D.all_reduce_grads(self.disc.parameters())
        self._clip(self.disc.parameters())
        self.opt_d.step()
        d = D.all_reduce_(d_loss.detach().float().reshape(1) * share)
        return {"d_hinge": float(d[0]), "logits_real": float(means[0]), "logits_fake": float(means[1])}

    def _clip(self, params) -> float:
        params = [p for p in params if p.grad is not None]
        clip = self.cfg.optim.clip
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        return float(norm)

    def _global_means(self, terms: Dict[str, torch.Tensor], n_local: int, share: float) -> Dict[str, float]:
        keys = sorted(terms)
        vec = torch.stack([terms[k].detach().float().reshape(()) for k in keys]).double() * share
        vec = D.all_reduce_(vec.to(self.device))
        return {k: float(v) for k, v in zip(keys, vec.tolist())}

    # ------------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        sd = {"step": self.step, "rejected": self.rejected, "images_seen": self.images_seen, "skipped": self.skipped,
              "vae": self.vae.state_dict(), "opt": self.opt.state_dict(), "health": self.health.state_dict()}
        if self.disc is not None:
            sd.update(disc=self.disc.state_dict(), opt_d=self.opt_d.state_dict())
            if self.lecam is not None:
                sd["lecam"] = self.lecam.state_dict()
        if self.ema is not None:
            sd["ema"] = {n: t.clone() for n, t in self.ema.items()}
        return sd

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        self.vae.load_state_dict(sd["vae"])
        self.opt.load_state_dict(sd["opt"])
        self.health.load_state_dict(sd["health"])
        if self.rank != 0:
            self.health.counts_SV.zero_()  # interval counts were rank 0's; the others start empty
        self.step, self.rejected, self.images_seen = int(sd["step"]), int(sd["rejected"]), int(sd["images_seen"])
        self.skipped = int(sd.get("skipped", 0))
        if self.ema is not None:
            self.ema = {n: t.to(self.device).clone() for n, t in sd["ema"].items()} if "ema" in sd else \
                {n: p.detach().clone() for n, p in self.vae.named_parameters()}
        if self.disc is not None and "disc" in sd:
            self.disc.load_state_dict(sd["disc"])
            self.opt_d.load_state_dict(sd["opt_d"])
            if self.lecam is not None and "lecam" in sd:
                self.lecam.load_state_dict(sd["lecam"])
        elif self.disc is not None:
            self.log("checkpoint has no discriminator: starting a fresh one")

    def resume(self) -> Optional[Path]:
        """Collective: rank 0 picks the newest checkpoint that verifies against its marker (or the named one),
        setting damaged ones aside as the main trainer does; every rank loads that one."""
        c, world = self.cfg.ckpt, self.world
        point = agreed(self.rank, lambda: choose_resume(c.resume, self.cfg.ckpt_dir, world, {}, c.verify,
                                                        c.fallback_limit, c.allow_fallback), self.log)
        if point is None:
            return None
        folder = point.folder
        self.load_state_dict(S.load_checkpoint(folder, self.vae.hparams(), self.rank))
        self.log(f"resumed from {folder} at step {self.step}")
        return folder

    def state_dict_params(self) -> List[torch.Tensor]:
        """The trained tensors a checkpoint holds (generator, and discriminator when on)."""
        return list(self.vae.parameters()) + (list(self.disc.parameters()) if self.disc is not None else [])

    def check_finite(self, what: str) -> None:
        """Every rank holds the same replica, so every rank raises alike (no rank is left in a collective)."""
        check_finite(dict(self.vae.named_parameters()), f"the tokenizer at step {self.step}",
                     f"not writing the {what}; the last checkpoint under {self.cfg.ckpt_dir} is kept")
        if self.ema is not None:
            check_finite(self.ema, f"the EMA tokenizer at step {self.step}", f"not writing the {what}")

    def save(self) -> Optional[Path]:
        self.check_finite("checkpoint")
        meta = S.make_meta(self.step, self.world, self.vae.hparams(), self.cfg.quant.l2_norm_codes)
        meta.update(rejected=self.rejected, images_seen=self.images_seen, skipped=self.skipped)
        export = S.export_copy(self.vae, self.cfg.quant.l2_norm_codes) if self.rank == 0 else None
        return S.save_checkpoint(self.writer, self.step, self.state_dict(), export, meta, self.cfg.to_dict(), self.rank)
