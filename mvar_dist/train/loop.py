"""The training loop, top to bottom: setup, resume, steps (with logging, validation, checkpoints), exit.

Run through `launchers/train.py` under `deepspeed`, `torchrun` or plain `python` (one process).
Every collective (forward/backward under ZeRO-3, all-reduces, checkpoint saves) is entered by every
rank at the same step; the only per-rank decisions are about writing files.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.distributed as dist

from mvar_dist.config import ConfigError, RunConfig
from mvar_dist.distributed import all_reduce_, destroy_process_group, init_process_group
from mvar_dist.fsio import write_text_atomic
from mvar_dist.precision import set_tf32
from . import checkpoint as ck
from . import ema as ema_mod
from . import safe_load, startup
from .ckpt_sync import agreed_resume, publish_agreed, stage_dir
from .engine import batch_split, build_engine, engine_dtype, fill_ds_config, oom_message, read_ds_config, \
    repair_after_universal_load, set_lr_wd
from .export import export_weights
from .metrics import MetricsWriter, StepTimer, device_peak_flops, peak_memory_gb, scale_sums, summarize, \
    token_losses, append_jsonl, truncate_jsonl
from .schedule import Schedule
from .signals import StopFlag
from .validation import validate


class BadStepsError(RuntimeError):
    pass


def _unchanged_loss(step: int, loss: torch.Tensor) -> torch.Tensor:
    return loss


@dataclass(frozen=True)
class TrainHooks:
    """Points where a caller can reach into the loop; the defaults change nothing.

    loss(step, loss) -> loss: called on each micro batch's loss before backward, with the 1-based
    optimizer step it belongs to. Fault drills use it to make chosen steps' losses NaN.
    before_upload(step, rank): called before a rank uploads its checkpoint files to an s3:// ckpt.dir;
    raising there is a failed upload (the fault drill of tests/helpers/train_with_failed_upload.py)."""

    loss: Callable[[int, torch.Tensor], torch.Tensor] = _unchanged_loss
    before_upload: Optional[Callable[[int, int], None]] = None


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


def _shape(cfg: RunConfig) -> Dict[str, Any]:
    """What a checkpoint must match to be loaded into this run's model."""
    return {"arch": cfg.model.arch, "depth": cfg.model.depth, "width": cfg.model.width,
            "vocab_size": cfg.tokenizer.vocab_size, "patch_nums": list(cfg.tokenizer.patch_nums),
            "num_classes": cfg.model.num_classes}


@dataclass
class _Run:
    """Everything one training run holds; built by _setup, advanced by the loop."""

    cfg: RunConfig
    rank: int
    world: int
    device: torch.device
    micro: int
    accum: int
    vae: Any
    tok_hash: str
    loader: Any
    val_loader: Any
    max_steps: int
    sched: Schedule
    engine: Any
    wd_mults: list
    num_params: int
    flops_per_image: int
    peak_flops: float                    # of one device, for MFU; 0 when unknown
    writer: ck.CheckpointWriter
    metrics: Optional[MetricsWriter] = None
    ema: Optional[ema_mod.PartitionEMA] = None  # ema.enabled: this rank's fp32 EMA partition
    rank_log: Optional[Path] = None
    step: int = 0
    last_saved: int = -1                 # -1: nothing saved by or before this run
    bad_run: int = 0                     # consecutive bad steps
    skipped_total: int = 0
    last_rec: Dict[str, Any] = field(default_factory=dict)
    t_start: float = 0.0

    @property
    def patch_nums(self) -> Tuple[int, ...]:
        return tuple(self.cfg.tokenizer.patch_nums)

    @property
    def seq_len(self) -> int:
        return sum(p * p for p in self.patch_nums)

    @property
    def dtype(self) -> torch.dtype:
        return engine_dtype(self.cfg)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        self.loader.close()  # stops loader worker processes promptly
        if self.val_loader is not None:
            self.val_loader.close()


def train(cfg: RunConfig, ds_config_path: Optional[str] = None, zero_init: str = "auto",
          hooks: TrainHooks = TrainHooks()) -> Dict[str, Any]:
    """Train to cfg.optim.max_steps (or epochs); returns the summary (rank 0) or {} (other ranks)."""
    rank, world, device = init_process_group(single_process=True)
    try:
        with startup.output_lock(cfg, rank, device):
            run = _setup(cfg, ds_config_path, zero_init, rank, world, device)
            try:
                return _loop(run, hooks)
            finally:
                run.close()
    finally:
        destroy_process_group()


# ------------------------------------------------------------------------------------- setup and resume
def _setup(cfg: RunConfig, ds_config_path: Optional[str], zero_init: str, rank: int, world: int,
           device: torch.device) -> _Run:
    """Tokenizer, data, resume point, engine (with the resumed state) and the writers."""
    from mvar_dist.data import LoaderSettings, TokenLoader
    from mvar_dist.vqvae import MultiScaleVQVAE

    micro, accum = batch_split(cfg.optim.global_batch, cfg.optim.micro_batch, world)
    set_tf32(device.type == "cuda")  # the one TF32 policy (mvar_dist.precision); MFU's fp32 peak assumes it

    # The frozen tokenizer turns token ids into the teacher input on the device.
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0).to(device).eval().requires_grad_(False)
    tok_hash = vae.weights_hash()
    loader = TokenLoader(LoaderSettings.from_config(cfg, rank, world, split="train", tokenizer_hash=tok_hash))
    val_loader = None
    if cfg.log.val_every > 0 and cfg.data.val_fraction > 0:
        val_loader = TokenLoader(LoaderSettings.from_config(cfg, rank, world, split="val", tokenizer_hash=tok_hash,
                                                            global_batch=micro * world))
    startup.check_num_classes(cfg, loader.manifest.num_classes, cfg.data.shards)
    max_steps = cfg.optim.max_steps or cfg.optim.epochs * loader.steps_per_epoch

    # The resume point comes first: a world-size change needs the universal copy and a config flag at init.
    writer = ck.CheckpointWriter(cfg.ckpt.dir, rank, cfg.ckpt.keep_last, cfg.ckpt.keep_every, stage_dir(cfg))
    if rank == 0:
        writer.clean_stale()
    dist.barrier()
    resume_from = agreed_resume(cfg, rank, _shape(cfg))
    startup.check_resume_tokenizer(cfg, resume_from, tok_hash)
    if resume_from is not None and resume_from.universal:
        if rank == 0:
            safe_load.check_state_files(resume_from.folder / ck.DS_DIR / ck.DS_TAG)  # before the converter unpickles it
            ck.ensure_universal(resume_from.folder)
        dist.barrier()
    universal = bool(resume_from and resume_from.universal)
    ds_config = fill_ds_config(read_ds_config(ds_config_path), cfg, world, load_universal=universal, split=(micro, accum))

    big = cfg.model.width >= 1536  # d24 and up: never materialise the full model per rank
    model = _build_model(cfg, ds_config, zero_init == "on" or (zero_init == "auto" and big and world > 1))
    if cfg.model.compile:
        model.zero3_leaf_blocks()
        model.compile_blocks()
    engine, wd_mults = build_engine(model, cfg, ds_config)
    safe_load.install(engine)
    ck.SaveRecorder.install(engine)
    run = _Run(cfg, rank, world, device, micro, accum, vae=vae, tok_hash=tok_hash, loader=loader,
               val_loader=val_loader, max_steps=max_steps,
               sched=Schedule.from_config(cfg.optim, loader.steps_per_epoch, max_steps), engine=engine,
               wd_mults=wd_mults, num_params=int(model.num_params()),
               flops_per_image=int(model.flops_per_image(train=True)),
               peak_flops=device_peak_flops(device, cfg.optim.precision, cfg.log.peak_tflops), writer=writer)
    startup.check_space(cfg, rank, device, run.num_params)
    _resume(run, resume_from)
    _open_logs(run, resume_from)
    run.ema = ema_mod.start(cfg, engine, rank, resume_from.folder if resume_from else None, run.metrics.message)
    return run


def _resume(run: _Run, resume_from: Optional[ck.ResumePoint]) -> None:
    """Load the chosen checkpoint (engine, loader position, RNG), or seed a fresh run."""
    cfg, rank = run.cfg, run.rank
    if resume_from is None:
        torch.manual_seed(cfg.seed * 1009 + rank)
        return
    safe_load.check_state_files(resume_from.folder / ck.DS_DIR / resume_from.tag)
    run.engine.load_checkpoint(str(resume_from.folder / ck.DS_DIR), tag=resume_from.tag, load_optimizer_states=True,
                               load_lr_scheduler_states=False, load_module_strict=True)
    if resume_from.universal:
        repair_after_universal_load(run.engine)
    run.loader.load_state_dict(json.loads((resume_from.folder / "loader.json").read_text()))
    run.step = run.last_saved = int(resume_from.meta["step"])
    # Per-rank RNG states only mean something at the same world size.
    rng = ck.load_rng(resume_from.folder, rank) if not resume_from.universal else None
    if rng is not None:
        ck.restore_rng(rng)
    else:
        torch.manual_seed(cfg.seed * 1009 + run.step * 7 + rank)


def _open_logs(run: _Run, resume_from: Optional[ck.ResumePoint]) -> None:
    """The run folder, this rank's step log and the metrics writer, cut back to the resumed step."""
    from mvar_dist.config import save_config

    cfg, out_dir = run.cfg, Path(run.cfg.out_dir)
    if run.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir)
    run.rank_log = out_dir / "ranks" / f"rank{run.rank}.jsonl"
    run.rank_log.parent.mkdir(parents=True, exist_ok=True)
    truncate_jsonl(run.rank_log, run.step)
    run.metrics = MetricsWriter(out_dir, Path(cfg.log.tb_dir), run.rank, run.max_steps, cfg.log.progress_bar,
                                start_step=run.step)
    if resume_from is not None:
        where = resume_from.remote or resume_from.folder
        universal = (f", universal conversion from world size {resume_from.meta['world_size']}"
                     if resume_from.universal else "")
        run.metrics.message(f"[train] resumed from {where} (step {run.step}{universal})")
    run.metrics.message(
        f"[train] {cfg.model.arch} d{cfg.model.depth} w{cfg.model.width}: {run.num_params / 1e6:.2f}M params, "
        f"{run.world} rank(s) x micro {run.micro} x accum {run.accum} = global {cfg.optim.global_batch}, "
        f"{cfg.optim.precision}, {run.max_steps} steps ({run.loader.steps_per_epoch}/epoch)")


# ------------------------------------------------------------------------------------- the loop
def _loop(run: _Run, hooks: TrainHooks) -> Dict[str, Any]:
    cfg = run.cfg
    stop = StopFlag().install()
    batches = _forever(run.loader)
    timer = StepTimer()
    run.t_start = time.time()
    try:
        while run.step < run.max_steps:
            lr, wd = run.sched.lr(run.step), run.sched.wd(run.step)
            set_lr_wd(run.engine.optimizer, lr, wd, run.wd_mults)
            t_data = time.perf_counter()
            labels_B, tokens_BL = next(batches)
            timer.data_done(t_data)
            sums, fingerprint, local_loss = _forward_backward(run, labels_B, tokens_BL, hooks)
            run.step += 1
            good = _record_step(run, sums, fingerprint, local_loss, lr, wd, timer.lap())
            if run.ema is not None and good:  # a skipped (non-finite) step leaves the EMA alone
                run.ema.update(run.step)
            if not good:
                _guard_bad_step(run)
            if run.val_loader is not None and run.step % cfg.log.val_every == 0:
                validate(run.engine, run.vae, run.val_loader, run.patch_nums, run.micro, run.dtype, run.device,
                         run.metrics, run.step, run.ema)
            stop_now = _any_rank(stop.requested, run.device)
            if good and (run.step % cfg.ckpt.every_steps == 0 or stop_now or run.step == run.max_steps):
                _save(run, stop_now or run.step == run.max_steps, hooks)
            if stop_now:
                run.metrics.message(f"[train] stop requested (signal); saved step {run.step}, exiting")
                return {"status": "stopped", "steps": run.step} if run.rank == 0 else {}
        return _finish(run)
    finally:
        stop.restore()


def _forever(loader) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Batches across epochs: each pass over the loader is the rest of its current epoch."""
    while True:
        yield from loader


def _any_rank(flag: bool, device: torch.device) -> bool:
    return all_reduce_(torch.tensor([float(flag)], device=device), dist.ReduceOp.MAX).item() > 0


def _forward_backward(run: _Run, labels_B: torch.Tensor, tokens_BL: torch.Tensor,
                      hooks: TrainHooks) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """One optimizer step over this rank's slice, in `accum` micro batches.

    Returns the all-reduced per-scale sums, the all-reduced batch fingerprint (which samples went
    into the step, for elasticity checks) and this rank's mean loss."""
    cfg, device, engine = run.cfg, run.device, run.engine
    sums = torch.zeros(2 * len(run.patch_nums) + 1, dtype=torch.float64, device=device)
    labels_B, tokens_BL = labels_B.to(device), tokens_BL.to(device)
    fingerprint = (tokens_BL.double().sum(1) * (labels_B.double() + 1)).sum().reshape(1)
    labels_B = drop_labels(labels_B, cfg.model.num_classes, cfg.model.cond_drop_rate, cfg.seed, run.step,
                           run.rank * run.loader.local_batch, cfg.optim.global_batch)
    teacher_BLC = run.vae.ids_to_teacher_input(tokens_BL).to(run.dtype)
    local_loss = 0.0
    try:
        for k in range(run.accum):
            sl = slice(k * run.micro, (k + 1) * run.micro)
            logits_BLV = engine(labels_B[sl], teacher_BLC[sl])
            ce_BL, loss = token_losses(logits_BLV, tokens_BL[sl], cfg.optim.label_smoothing)
            loss = hooks.loss(run.step + 1, loss)
            engine.backward(loss)
            engine.step()
            sums += scale_sums(ce_BL, logits_BLV.detach(), tokens_BL[sl], run.patch_nums)
            local_loss += float(loss.detach()) / run.accum
    except torch.OutOfMemoryError as e:
        raise ConfigError("optim.micro_batch", oom_message(cfg, run.micro)) from e
    return all_reduce_(sums), all_reduce_(fingerprint), local_loss


def _record_step(run: _Run, sums: torch.Tensor, fingerprint: torch.Tensor, local_loss: float, lr: float,
                 wd: float, times: Tuple[float, float]) -> bool:
    """Count the step as good or bad, write this rank's step line and (on log steps) the metrics."""
    cfg, step, engine = run.cfg, run.step, run.engine
    gn = engine.get_global_grad_norm()
    grad_norm = float(gn) if gn is not None else float("nan")
    summary = summarize(sums, run.patch_nums)
    good = engine.was_step_applied() and math.isfinite(summary["L_mean"]) and math.isfinite(grad_norm)
    run.bad_run = 0 if good else run.bad_run + 1
    run.skipped_total += 0 if good else 1
    append_jsonl(run.rank_log, {"step": step, "loss": summary["L_mean"], "local_loss": local_loss,
                                "fingerprint": float(fingerprint), "lr": lr})
    if step % cfg.log.log_every == 0 or step == run.max_steps or not good:
        step_time, data_time = times
        images = step * cfg.optim.global_batch
        ips = cfg.optim.global_batch / max(step_time, 1e-9)
        peak = run.peak_flops
        run.last_rec = {
            "step": step, "epoch": run.loader.state_dict()["epoch"], "images_seen": images,
            "tokens_seen": images * run.seq_len, "train_flops": float(run.flops_per_image) * images,
            "loss": summary["L_mean"], **summary, "lr": lr, "wd": wd, "grad_norm": grad_norm,
            "amp_scale": float(getattr(engine.optimizer, "loss_scale", 1.0)),
            "skipped_steps": run.skipped_total, "images_per_s": ips, "tokens_per_s": ips * run.seq_len,
            "mfu": run.flops_per_image * ips / (peak * run.world) if peak else float("nan"),
            "step_time": step_time, "data_time": data_time, "compute_time": step_time - data_time,
            "peak_mem_gb": peak_memory_gb(run.device), "wall_time": time.time() - run.t_start}
        run.metrics.log_train(run.last_rec)
    if not good:
        run.metrics.message(f"[train] step {step}: non-finite loss/gradients (loss {summary['L_mean']:.4g}, "
                            f"grad norm {grad_norm:.4g}); update skipped ({run.bad_run} in a row)")
    return good


def _guard_bad_step(run: _Run) -> None:
    limit = run.cfg.optim.max_bad_steps
    if run.bad_run >= limit:
        raise BadStepsError(
            f"stopping: {run.bad_run} consecutive steps had non-finite loss or gradients (limit "
            f"optim.max_bad_steps={limit}); no checkpoint was written after step "
            f"{run.last_saved if run.last_saved >= 0 else 'none'}. Try a lower optim.tblr, bf16 instead of fp16, "
            f"or check the data")


# ------------------------------------------------------------------------------------- save and finish
def _save(run: _Run, last: bool, hooks: TrainHooks) -> None:
    """Write the step folder collectively; rank 0 adds the small files and publishes it (see checkpoint.py).

    The marker is written only when every rank reported its files; otherwise the save is dropped
    (the next interval saves again) or, for the last save of the run, the run fails."""
    cfg, rank, step, writer = run.cfg, run.rank, run.step, run.writer
    tmp = writer.tmp_folder(step)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    (tmp / ck.DS_DIR / ck.DS_TAG).mkdir(parents=True, exist_ok=True)  # staging on another node's disk
    run.engine.save_checkpoint(str(tmp / ck.DS_DIR), tag=ck.DS_TAG, save_latest=False)
    writer.claim(step, run.engine.checkpoint_engine.take_saved())
    errors = []
    _attempt(errors, writer.write_rank_files, step, ck.capture_rng())
    if run.ema is not None:
        _attempt(errors, lambda: writer.claim(step, [run.ema.save(tmp, step)]))
    if cfg.ckpt.export_dtype != "none":
        errors += export_weights(run.engine, run.ema, rank, tmp, cfg.ckpt.export_dtype,
                                 {"arch": cfg.model.arch, "step": str(step)})
    dist.barrier()
    if rank == 0:
        _attempt(errors, writer.write_shared_files, step, _small_files(run))
    report = writer.report(step, hooks.before_upload)
    if errors:
        report.update(ok=False, error="; ".join(errors))
    failure = publish_agreed(run.writer, step, report, run.world, run.metrics.message)
    if failure is None:
        run.last_saved = step
        return
    msg = f"[train] checkpoint step {step} not published (no marker): {failure}"
    if last:
        raise RuntimeError(msg)
    run.metrics.message(f"{msg}; training goes on and saves again at the next interval")


def _attempt(errors: list, fn, *args) -> None:
    """Run one rank-local write; a failure is reported at the gather instead of stranding the others."""
    try:
        fn(*args)
    except OSError as e:
        errors.append(f"{type(e).__name__}: {e}")


def _small_files(run: _Run) -> Dict[str, str]:
    import yaml
    from mvar_dist.config import to_dict

    cfg, lstate = run.cfg, run.loader.state_dict()
    meta = {"step": run.step, "epoch": lstate["epoch"], "samples_consumed": lstate["samples_consumed"],
            "world_size": run.world, **_shape(cfg), "precision": cfg.optim.precision,
            "global_batch": cfg.optim.global_batch, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "num_params": run.num_params, "tokenizer_hash": run.tok_hash,
            "skipped_steps": run.skipped_total}
    return {"meta.json": json.dumps(meta, indent=1), "config.yaml": yaml.safe_dump(to_dict(cfg), sort_keys=False),
            "loader.json": json.dumps(lstate), "metrics.json": json.dumps(run.last_rec)}


def _finish(run: _Run) -> Dict[str, Any]:
    """Rank 0 writes summary.json and returns it; other ranks return {}."""
    if run.rank != 0:
        return {}
    cfg, step = run.cfg, run.step
    images = step * cfg.optim.global_batch
    result = {"status": "finished", "steps": step, "images_seen": images, "tokens_seen": images * run.seq_len,
              "train_flops": float(run.flops_per_image) * images, "flops_per_image": run.flops_per_image,
              "num_params": run.num_params, "arch": cfg.model.arch, "depth": cfg.model.depth,
              "final": run.last_rec, "skipped_steps": run.skipped_total, "wall_time": time.time() - run.t_start,
              "world_size": run.world,
              "last_checkpoint": str(run.writer.final_folder(run.last_saved)) if run.last_saved >= 0 else None}
    write_text_atomic(Path(cfg.out_dir) / "summary.json", json.dumps(result, indent=1), fsync=True)
    return result
