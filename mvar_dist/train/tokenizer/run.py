"""The training loop around `TokenizerTrainer`: data, logging (metrics.jsonl, TensorBoard, console),
dead-code checks, step checkpoints, SIGTERM / `stop_after` clean stop, and the final export.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from mvar_dist import distributed as D
from mvar_dist.errors import OperatorError
from mvar_dist.preflight import OutputLock, check_destination, check_free_space
from mvar_dist.train.startup import rank0_check
from mvar_dist.train.metrics import append_jsonl, truncate_jsonl
from mvar_dist.train.signals import StopFlag

from . import state as S
from .config import TokTrainConfig
from .data import ImageStream, make_loader
from .trainer import TokenizerTrainer

MAX_REJECT_LINES = 20  # reject reasons printed to the console; all are counted
# fp32 generator + AdamW m, v + the exported copy in the step folder (the discriminator is counted too).
CHECKPOINT_BYTES_PER_PARAM = 16


class Logger:
    """Rank 0: metrics.jsonl (truncated to the resumed step), TensorBoard scalars and images, console."""

    def __init__(self, out_dir: Path, rank: int, start_step: int):
        self.enabled = rank == 0
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = out_dir / "metrics.jsonl"
        truncate_jsonl(self.jsonl, start_step)
        self.tb = SummaryWriter(str(out_dir / "tb"), purge_step=start_step + 1 if start_step else None)

    def record(self, rec: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.jsonl, rec)
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                self.tb.add_scalar(f"{_group(k)}/{k}", v, rec["step"])
        self.tb.flush()
        usage = [rec[k] for k in sorted(rec) if k.startswith("usage_s")]
        print(f"step {rec['step']:>7d} | total {rec['total']:.4f} " +
              " ".join(f"{k} {rec[k]:.4f}" for k in ("l1", "l2", "vq", "lpips", "g_hinge", "d_hinge") if k in rec) +
              f" | gn {rec['grad_norm']:.3g} | {rec['images_per_s']:.1f} img/s" +
              (f" | usage/scale {' '.join(f'{u:.2f}' for u in usage)}" if usage else ""), flush=True)

    def images(self, step: int, img: torch.Tensor, rec: torch.Tensor) -> None:
        if self.enabled and img.numel():
            grid = torch.cat([img[:4], rec[:4].clamp(-1, 1)]).add(1).div(2).cpu()
            self.tb.add_images("recon/input_top_output_bottom", grid, step)
            self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


def _group(key: str) -> str:
    if key.startswith(("usage_", "ppl_", "dead_")):
        return "codebook"
    if key in ("images_per_s", "images", "rejected", "step_time", "lr", "grad_norm", "scales_used"):
        return "perf"
    if key in ("adaptive_w", "d_hinge", "logits_real", "logits_fake", "g_hinge"):
        return "gan"
    return "loss"


def fit(cfg: TokTrainConfig, rank: int = 0, world: int = 1, device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Train to cfg.optim.max_steps (or until SIGTERM / stop_after), saving and exporting; returns a summary.

    Before the first step rank 0 takes <out_dir>/.lock and checks ckpt.dir is writable with room for one
    checkpoint (startup.py); every rank stops together when it cannot."""
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    stream = ImageStream(cfg.data.root, cfg.tokenizer.resolution, cfg.data.hflip, cfg.data.min_side, cfg.seed,
                         cfg.data.s3_endpoint)
    tr = TokenizerTrainer(cfg, rank, world, device)
    lock = OutputLock(cfg.out_dir, "out_dir")

    def check() -> None:
        lock.acquire()
        check_destination(str(cfg.ckpt_dir), "ckpt.dir")
        n = sum(p.numel() for p in tr.state_dict_params())
        check_free_space(cfg.ckpt_dir, CHECKPOINT_BYTES_PER_PARAM * n, "ckpt.dir")

    try:
        rank0_check(rank, device, check)
        return _fit(tr, stream, cfg, rank, world, device)
    finally:
        lock.release()


def _fit(tr: TokenizerTrainer, stream: ImageStream, cfg: TokTrainConfig, rank: int, world: int,
         device: torch.device) -> Dict[str, Any]:
    tr.writer.clean_stale()
    D.barrier()
    resumed = tr.resume()
    tr.log(f"tokenizer {tr.vae.extra_repr()} | {sum(p.numel() for p in tr.vae.parameters()) / 1e6:.2f} M params | "
           f"{stream.num_images} images | world {world} | start step {tr.step}")
    logger = Logger(Path(cfg.out_dir), rank, tr.step)
    stop = StopFlag().install()
    start_step, saved_at, status = tr.step, -1, "finished"
    loader = make_loader(stream, tr.step, cfg.optim.max_steps, cfg.optim.global_batch, rank, world,
                         cfg.data.num_workers, cfg.data.prefetch)
    t_log, images_since = time.perf_counter(), 0.0
    try:
        for img, bad in loader:
            _count_rejects(tr, bad)
            out = tr.train_step(img)
            images_since += out["images"]
            good = tr.bad_run == 0
            if not good:
                _bad_step(tr, out, saved_at)
            dead = _dead_check(tr)
            if tr.step % cfg.log.log_every == 0 or tr.step == cfg.optim.max_steps or not good:
                now = time.perf_counter()
                rec = {"step": tr.step, **out, "lr": tr.lr_at(tr.step - 1), "rejected": tr.rejected,
                       "skipped_steps": tr.skipped,
                       "images_per_s": images_since / max(now - t_log, 1e-9), **tr.health.interval_stats(device)}
                if dead is not None:
                    rec["dead_reinit"] = dead
                logger.record(rec)
                tr.last_rec = rec
                t_log, images_since = time.perf_counter(), 0.0
            if cfg.log.images_every and tr.step % cfg.log.images_every == 0:
                _log_images(tr, logger, img)
            if good and (tr.step % cfg.ckpt.every_steps == 0 or tr.step == cfg.optim.max_steps):
                tr.save()
                saved_at = tr.step
            if _should_stop(tr, stop, start_step):
                status = "stopped"
                break
        if saved_at != tr.step and tr.step > start_step and tr.bad_run == 0:
            tr.save()
        summary = {"status": status, "step": tr.step, "resumed_from": str(resumed) if resumed else None,
                   "rejected": tr.rejected, "last": tr.last_rec}
        if status == "finished":
            tr.check_finite("export")  # every rank: the same replica, the same answer
        if status == "finished" and rank == 0:
            summary["export"] = _export(tr, cfg)
        D.barrier()
        return summary
    finally:
        stop.restore()
        logger.close()


def _export(tr: TokenizerTrainer, cfg: TokTrainConfig) -> Dict[str, str]:
    """Write the finished tokenizer (and its EMA copy) for the generator; returns the written paths."""
    paths = S.export_generator(tr.vae, Path(cfg.out_dir) / "export", cfg.quant.l2_norm_codes)
    written = {k: str(v) for k, v in paths.items()}
    if tr.ema is not None:
        ema = S.export_generator(tr.ema_model(), Path(cfg.out_dir) / "export", cfg.quant.l2_norm_codes,
                                 stem="vae_ema")
        written.update({f"ema_{k}": str(v) for k, v in ema.items()})
    tr.log(f"exported {paths['pth']} and {paths['safetensors']}")
    return written


class BadStepsError(OperatorError):
    pass


def _bad_step(tr: TokenizerTrainer, out: Dict[str, float], saved_at: int) -> None:
    """Report a skipped step; after optim.max_bad_steps in a row stop without saving or exporting."""
    limit = tr.cfg.optim.max_bad_steps
    tr.log(f"step {tr.step}: non-finite loss/gradients (loss {out.get('total', float('nan')):.4g}, grad norm "
           f"{out['grad_norm']:.4g}); update skipped ({tr.bad_run} in a row)")
    if tr.bad_run >= limit:
        last = f"step {saved_at}" if saved_at >= 0 else f"the one under {tr.cfg.ckpt_dir}, if any"
        raise BadStepsError(f"stopping: {tr.bad_run} consecutive steps had non-finite loss or gradients (limit "
                            f"optim.max_bad_steps={limit}); nothing was exported and the last checkpoint ({last}) is "
                            f"kept. Try a lower optim.lr, fp32, or check the data and loss.lpips_backbone")


def _count_rejects(tr: TokenizerTrainer, bad: List[str]) -> None:
    n = torch.tensor([float(len(bad))])
    tr.rejected += int(D.all_reduce_(n)[0])
    for why in bad:
        if tr.rejected <= MAX_REJECT_LINES:
            print(f"rejected image (rank {tr.rank}): {why}", flush=True)


def _dead_check(tr: TokenizerTrainer) -> Optional[int]:
    q = tr.cfg.quant
    if q.dead_every <= 0 or tr.step % q.dead_every:
        return None
    n = tr.health.reinit_dead(tr.vae.quantize.embedding, tr.opt, tr.step, q.dead_after)
    if n:
        tr.ema_take_codes(tr.health.last_reinit_D)
        tr.log(f"step {tr.step}: re-initialised {n} dead codes from recent encoder residuals")
    return n


@torch.no_grad()
def _log_images(tr: TokenizerTrainer, logger: Logger, img: torch.Tensor) -> None:
    if tr.rank != 0 or img.dim() != 4 or not img.numel():
        return
    rec, _ = tr.forward(img[:4].to(tr.device))
    logger.images(tr.step, img[:4], rec)


def _should_stop(tr: TokenizerTrainer, stop: StopFlag, start_step: int) -> bool:
    want = stop.requested or (tr.cfg.stop_after > 0 and tr.step - start_step >= tr.cfg.stop_after)
    flag = D.all_reduce_(torch.tensor([1.0 if want else 0.0], device=tr.device))
    if float(flag[0]) > 0:
        tr.log(f"stop requested at step {tr.step}: saving and exiting")
        return True
    return False
