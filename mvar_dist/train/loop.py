"""The training loop, top to bottom: setup, resume, steps (with logging, validation, checkpoints), exit.

Run through `launchers/train.py` under `deepspeed`, `torchrun` or plain `python` (one process).
Every collective (forward/backward under ZeRO-3, all-reduces, checkpoint saves) is entered by every
rank at the same step; the only per-rank decisions are about writing files.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist

from mvar_dist.config import ConfigError, RunConfig
from mvar_dist.fsio import write_text_atomic
from . import checkpoint as ck
from .engine import batch_split, build_engine, engine_dtype, fill_ds_config, init_distributed, oom_message, \
    read_ds_config, repair_after_universal_load, reset_zero3_trace, set_lr_wd
from .export import gather_official_state_dict, save_model_file
from .metrics import MetricsWriter, StepTimer, device_peak_flops, peak_memory_gb, scale_sums, summarize, \
    token_losses, append_jsonl, truncate_jsonl
from .schedule import Schedule
from .signals import StopFlag

# Fault injection for tests and drills: comma-separated optimizer steps whose loss is made NaN.
FAULT_NAN_ENV = "MVAR_FAULT_NAN_STEPS"


class BadStepsError(RuntimeError):
    pass


def _all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    dist.all_reduce(t, op=op)
    return t


def drop_labels(labels_B: torch.Tensor, num_classes: int, p: float, seed: int, step: int, offset: int,
                global_batch: int) -> torch.Tensor:
    """Label dropout for CFG as a pure function of (seed, step, global position), so which samples
    lose their label does not depend on the world size or the micro batch."""
    if p <= 0:
        return labels_B
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))
    drop_G = torch.rand(global_batch, generator=g) < p
    drop_B = drop_G[offset:offset + labels_B.shape[0]].to(labels_B.device)
    return torch.where(drop_B, torch.full_like(labels_B, num_classes), labels_B)


def _build_model(cfg: RunConfig, ds_config: Dict[str, Any], zero_init: bool):
    from mvar_dist.model import MVAR

    if not zero_init:
        return MVAR.from_config(cfg)
    import deepspeed

    # Constructed already partitioned; init_weights gathers one module at a time, so no rank ever
    # holds the whole model, and the weights equal a plain build's (same seed, same order).
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        return MVAR.from_config(cfg)


def _meta(cfg: RunConfig, step: int, loader_state: Dict[str, int], world: int, extra: Dict[str, Any]) -> Dict[str, Any]:
    return {"step": step, "epoch": loader_state["epoch"], "samples_consumed": loader_state["samples_consumed"],
            "world_size": world, "arch": cfg.model.arch, "depth": cfg.model.depth, "width": cfg.model.width,
            "vocab_size": cfg.tokenizer.vocab_size, "patch_nums": list(cfg.tokenizer.patch_nums),
            "num_classes": cfg.model.num_classes, "precision": cfg.optim.precision,
            "global_batch": cfg.optim.global_batch, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra}


def train(cfg: RunConfig, ds_config_path: Optional[str] = None, zero_init: str = "auto") -> Dict[str, Any]:
    """Train to cfg.optim.max_steps (or epochs); returns the summary (rank 0) or {} (other ranks)."""
    rank, world, device = init_distributed()
    try:
        return _run(cfg, ds_config_path, zero_init, rank, world, device)
    finally:
        # Without this a gloo rank sometimes aborts at exit (systems_notes 2).
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: RunConfig, ds_config_path: Optional[str], zero_init: str, rank: int, world: int,
         device: torch.device) -> Dict[str, Any]:
    import yaml
    from mvar_dist.config import to_dict
    from mvar_dist.data import TokenLoader
    from mvar_dist.tokenizer import MultiScaleVQVAE

    out_dir, ckpt_root = Path(cfg.out_dir), Path(cfg.ckpt.dir)
    micro, accum = batch_split(cfg.optim.global_batch, cfg.optim.micro_batch, world)
    if cfg.optim.precision == "fp16" and device.type != "cuda":
        raise ConfigError("optim.precision", "fp16 (with loss scaling) needs a CUDA device; use bf16 or fp32 on CPU")
    patch_nums = tuple(cfg.tokenizer.patch_nums)
    L = sum(p * p for p in patch_nums)

    # ---- frozen tokenizer (teacher input on the device) and data
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0).to(device).eval().requires_grad_(False)
    tok_hash = vae.weights_hash()
    loader = TokenLoader.from_config(cfg, rank, world, split="train", tokenizer_hash=tok_hash)
    val_loader = None
    if cfg.log.val_every > 0 and cfg.data.val_fraction > 0:
        val_loader = TokenLoader.from_config(cfg, rank, world, split="val", tokenizer_hash=tok_hash,
                                             global_batch=micro * world)
    steps_per_epoch = loader.steps_per_epoch
    max_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    sched = Schedule.from_config(cfg.optim, steps_per_epoch, max_steps)

    # ---- resume plan first: a world-size change needs the universal copy and a config flag at init
    expect = {"arch": cfg.model.arch, "depth": cfg.model.depth, "width": cfg.model.width,
              "vocab_size": cfg.tokenizer.vocab_size, "patch_nums": list(patch_nums),
              "num_classes": cfg.model.num_classes}
    writer = ck.CheckpointWriter(ckpt_root, rank, cfg.ckpt.keep_last, cfg.ckpt.keep_every)
    if rank == 0:
        writer.clean_stale()
    dist.barrier()
    plan = ck.plan_resume(cfg.ckpt.resume, ckpt_root, world, expect)
    if plan is not None and plan.universal:
        if rank == 0:
            ck.ensure_universal(plan.folder)
        dist.barrier()
    ds_config = fill_ds_config(read_ds_config(ds_config_path), cfg, world, load_universal=bool(plan and plan.universal))

    # ---- model and engine
    big = cfg.model.width >= 1536  # d24 and up: never materialise the full model per rank
    use_zero_init = zero_init == "on" or (zero_init == "auto" and big and world > 1)
    model = _build_model(cfg, ds_config, use_zero_init)
    model.cond_drop_rate = 0.0  # label dropout happens here, elastically deterministic (drop_labels)
    flops_per_image = int(model.flops_per_image(train=True))
    num_params = int(model.num_params())
    engine, wd_mults = build_engine(model, cfg, ds_config)
    dtype = engine_dtype(cfg)

    step = 0
    if plan is not None:
        engine.load_checkpoint(str(plan.folder / ck.DS_DIR), tag=plan.tag, load_optimizer_states=True,
                               load_lr_scheduler_states=False, load_module_strict=True)
        if plan.universal:
            repair_after_universal_load(engine)
        loader.load_state_dict(json.loads((plan.folder / "loader.json").read_text()))
        step = int(plan.meta["step"])
        rng = ck.load_rng(plan.folder, rank) if not plan.universal else None
        if rng is not None:
            ck.restore_rng(rng)
        else:
            torch.manual_seed(cfg.seed * 1009 + step * 7 + rank)
    else:
        torch.manual_seed(cfg.seed * 1009 + rank)

    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        from mvar_dist.config import save_config

        save_config(cfg, out_dir)
    rank_log = out_dir / "ranks" / f"rank{rank}.jsonl"
    rank_log.parent.mkdir(parents=True, exist_ok=True)
    truncate_jsonl(rank_log, step)
    metrics = MetricsWriter(out_dir, Path(cfg.log.tb_dir), rank, max_steps, cfg.log.progress_bar, start_step=step)
    if plan is not None:
        metrics.message(f"[train] resumed from {plan.folder} (step {step}"
                        f"{', universal conversion from world size %d' % plan.meta['world_size'] if plan.universal else ''})")
    metrics.message(f"[train] {cfg.model.arch} d{cfg.model.depth} w{cfg.model.width}: {num_params / 1e6:.2f}M params, "
                    f"{world} rank(s) x micro {micro} x accum {accum} = global {cfg.optim.global_batch}, "
                    f"{cfg.optim.precision}, {max_steps} steps ({steps_per_epoch}/epoch)")

    peak = device_peak_flops(device, cfg.optim.precision, cfg.log.peak_tflops)
    nan_steps = {int(s) for s in os.environ.get(FAULT_NAN_ENV, "").split(",") if s.strip()}
    stop = StopFlag().install()
    data_iter = iter(loader)
    timer = StepTimer()
    t_start, bad_run, skipped_total, last_saved = time.time(), 0, 0, step if plan else -1
    last_rec: Dict[str, Any] = {}
    stop_reason = "done"

    def save(at_step: int) -> None:
        nonlocal last_saved
        tmp = writer.tmp_folder(at_step)
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        engine.save_checkpoint(str(tmp / ck.DS_DIR), tag=ck.DS_TAG, save_latest=False)
        writer.write_rank_files(tmp, ck.capture_rng())
        if cfg.ckpt.export_dtype != "none":
            sd = gather_official_state_dict(engine.module, rank, cfg.ckpt.export_dtype)
            if rank == 0:
                save_model_file(sd, tmp / "model.safetensors", {"arch": cfg.model.arch, "step": str(at_step)})
            reset_zero3_trace(engine)
        dist.barrier()
        if rank == 0:
            lstate = loader.state_dict()
            extra = {"num_params": num_params, "tokenizer_hash": tok_hash, "skipped_steps": skipped_total}
            writer.publish(at_step, {"meta.json": json.dumps(_meta(cfg, at_step, lstate, world, extra), indent=1),
                                     "config.yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False),
                                     "loader.json": json.dumps(lstate),
                                     "metrics.json": json.dumps(last_rec)})
            metrics.message(f"[train] checkpoint {writer.final_folder(at_step)}")
        dist.barrier()
        last_saved = at_step

    try:
        while step < max_steps:
            lr, wd = sched.lr(step), sched.wd(step)
            set_lr_wd(engine.optimizer, lr, wd, wd_mults)
            sums = torch.zeros(2 * len(patch_nums) + 1, dtype=torch.float64, device=device)
            fingerprint = torch.zeros(1, dtype=torch.float64, device=device)
            local_loss = 0.0
            t_data = time.perf_counter()
            try:
                labels_B, tokens_BL = next(data_iter)
            except StopIteration:
                data_iter = iter(loader)
                labels_B, tokens_BL = next(data_iter)
            timer.data_done(t_data)
            labels_B, tokens_BL = labels_B.to(device), tokens_BL.to(device)
            fingerprint += (tokens_BL.double().sum(1) * (labels_B.double() + 1)).sum()
            labels_B = drop_labels(labels_B, cfg.model.num_classes, cfg.model.cond_drop_rate, cfg.seed, step,
                                   rank * loader.local_batch, cfg.optim.global_batch)
            teacher_BLC = vae.ids_to_teacher_input(tokens_BL).to(dtype)
            try:
                for k in range(accum):
                    sl = slice(k * micro, (k + 1) * micro)
                    logits_BLV = engine(labels_B[sl], teacher_BLC[sl])
                    ce_BL, loss = token_losses(logits_BLV, tokens_BL[sl], cfg.optim.label_smoothing)
                    if step + 1 in nan_steps:
                        loss = loss * float("nan")
                    engine.backward(loss)
                    engine.step()
                    sums += scale_sums(ce_BL, logits_BLV.detach(), tokens_BL[sl], patch_nums)
                    local_loss += float(loss.detach()) / accum
            except torch.OutOfMemoryError as e:
                raise ConfigError("optim.micro_batch", oom_message(cfg, micro)) from e
            step += 1
            _all_reduce(sums)
            _all_reduce(fingerprint)
            applied = engine.was_step_applied()
            gn = engine.get_global_grad_norm()
            grad_norm = float(gn) if gn is not None else float("nan")
            summary = summarize(sums, patch_nums)
            good = applied and math.isfinite(summary["L_mean"]) and math.isfinite(grad_norm)
            bad_run = 0 if good else bad_run + 1
            skipped_total += 0 if good else 1
            step_time, data_time = timer.lap()
            append_jsonl(rank_log, {"step": step, "loss": summary["L_mean"], "local_loss": local_loss,
                                     "fingerprint": float(fingerprint), "lr": lr})
            images = step * cfg.optim.global_batch
            if step % cfg.log.log_every == 0 or step == max_steps or not good:
                ips = cfg.optim.global_batch / max(step_time, 1e-9)
                last_rec = {"step": step, "epoch": loader.state_dict()["epoch"], "images_seen": images,
                            "tokens_seen": images * L, "train_flops": float(flops_per_image) * images,
                            "loss": summary["L_mean"], **summary, "lr": lr, "wd": wd, "grad_norm": grad_norm,
                            "amp_scale": float(getattr(engine.optimizer, "loss_scale", 1.0)),
                            "skipped_steps": skipped_total, "images_per_s": ips, "tokens_per_s": ips * L,
                            "mfu": flops_per_image * ips / (peak * world) if peak else float("nan"),
                            "step_time": step_time, "data_time": data_time, "compute_time": step_time - data_time,
                            "peak_mem_gb": peak_memory_gb(device), "wall_time": time.time() - t_start}
                metrics.log_train(last_rec)
            if not good:
                metrics.message(f"[train] step {step}: non-finite loss/gradients (loss {summary['L_mean']:.4g}, "
                                f"grad norm {grad_norm:.4g}); update skipped ({bad_run} in a row)")
                if bad_run >= cfg.optim.max_bad_steps:
                    raise BadStepsError(
                        f"stopping: {bad_run} consecutive steps had non-finite loss or gradients (limit "
                        f"optim.max_bad_steps={cfg.optim.max_bad_steps}); no checkpoint was written after step "
                        f"{last_saved if last_saved >= 0 else 'none'}. Try a lower optim.tblr, bf16 instead of fp16, "
                        f"or check the data")
            if val_loader is not None and step % cfg.log.val_every == 0:
                metrics.log_val(step, evaluate(engine, vae, val_loader, patch_nums, micro, dtype, device))
            stop_now = _all_reduce(torch.tensor([float(stop.requested)], device=device), dist.ReduceOp.MAX).item() > 0
            if bad_run == 0 and (step % cfg.ckpt.every_steps == 0 or stop_now or step == max_steps):
                save(step)
            if stop_now:
                stop_reason = "signal"
                metrics.message(f"[train] stop requested (signal); saved step {step}, exiting")
                break
        result: Dict[str, Any] = {}
        if stop_reason == "done" and rank == 0:
            result = {"status": "finished", "steps": step, "images_seen": step * cfg.optim.global_batch,
                      "tokens_seen": step * cfg.optim.global_batch * L,
                      "train_flops": float(flops_per_image) * step * cfg.optim.global_batch,
                      "flops_per_image": flops_per_image, "num_params": num_params, "arch": cfg.model.arch,
                      "depth": cfg.model.depth, "final": last_rec, "skipped_steps": skipped_total,
                      "wall_time": time.time() - t_start, "world_size": world,
                      "last_checkpoint": str(writer.final_folder(last_saved)) if last_saved >= 0 else None}
            write_text_atomic(out_dir / "summary.json", json.dumps(result, indent=1), fsync=True)
        elif rank == 0:
            result = {"status": "stopped", "steps": step}
        return result
    finally:
        stop.restore()
        metrics.close()
        loader.close()  # stops loader worker processes promptly
        if val_loader is not None:
            val_loader.close()


@torch.no_grad()
def evaluate(engine, vae, val_loader, patch_nums, micro: int, dtype, device) -> Dict[str, float]:
    """One fixed pass over the held-out split in eval mode (no label dropout, no drop path)."""
    engine.eval()
    val_loader.load_state_dict({"epoch": 0, "samples_consumed": 0})
    sums = torch.zeros(2 * len(patch_nums) + 1, dtype=torch.float64, device=device)
    for labels_B, tokens_BL in val_loader:  # from (0, 0): exactly one pass over the split
        labels_B, tokens_BL = labels_B.to(device), tokens_BL.to(device)
        teacher_BLC = vae.ids_to_teacher_input(tokens_BL).to(dtype)
        for k in range(0, labels_B.shape[0], micro):
            sl = slice(k, k + micro)
            logits_BLV = engine(labels_B[sl], teacher_BLC[sl])
            ce_BL, _ = token_losses(logits_BLV, tokens_BL[sl])
            sums += scale_sums(ce_BL, logits_BLV, tokens_BL[sl], patch_nums)
    _all_reduce(sums)
    engine.train()
    reset_zero3_trace(engine)
    out = summarize(sums, patch_nums)
    return {"loss": out["L_mean"], **out}
