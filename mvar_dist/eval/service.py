"""The checkpoint-watching evaluation service.

Each pass lists the complete checkpoints under every root, and for each one whose (checkpoint id, protocol hash)
is not yet in the results table: samples the class-balanced set (resuming a half-done folder), computes the
metrics, writes one row and TensorBoard scalars. A checkpoint whose files do not match its marker is skipped
and reported (log and `<work_dir>/damaged.json`), and the others are evaluated; it is looked at again each
pass, so a repaired one is picked up. Restarting repeats nothing: finished rows are skipped and
existing PNGs are reused. The protocol includes the reference and Inception hashes and the Inception mode, so
adding weights later re-evaluates (with the samples already on disk) instead of mixing numbers from two protocols.

Under torchrun (N ranks, one shared work_dir) rank 0 decides what to evaluate and tells the others; every rank
samples its share of the missing images and runs the Inception net on its share of all of them; rank 0 gathers
the features, computes the metrics and writes the one row. Images and features equal a one-process run's.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from mvar_dist.distributed import barrier, rank_world
from mvar_dist.fsio import open_fs, sha256_file, write_json_atomic
from mvar_dist.runs.generator import load_run_config, weights_file
from mvar_dist.runs.layout import CheckpointRef, find_checkpoints

from .checkpoints import drop_staged, sampler_for, stage, verify
from .evaluate import Evaluator
from .npz import pack_folder
from .registry import METRIC_COLUMNS, METRICS
from .watch import one_pass, watch
from .results import Protocol, ResultsTable
from .sampling import SamplePlan, SampleFn, generate_samples

# (local step folder, options, run config) -> SampleFn; the default loads the checkpoint's MVAR
SamplerFactory = Callable[[Path, "ServiceOptions", object], SampleFn]


@dataclass
class ServiceOptions:
    roots: List[str]                    # checkpoint roots: run folders, checkpoints/ folders or folders of runs
    work_dir: str                       # results table, samples, staged remote checkpoints, caches
    num_per_class: int = 50
    cfg_scale: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    more_smooth: bool = False
    seed: int = 0
    batch_size: int = 32                # images per sampler call; not in the protocol (images do not depend on it)
    inception_weights: str = ""         # "" = FID skipped (and said so)
    reference_npz: str = ""
    inception_mode: str = "adm"         # "adm" (the papers' evaluator) or "pytorch-fid"; see inception.py
    inception_batch_size: int = 50      # images per Inception forward, the unit dealt to ranks (not in the protocol)
    device: str = "cpu"
    pack_npz: bool = False              # also write samples.npz (arr_0) beside each sample folder
    tensorboard: bool = True
    poll_s: float = 60.0
    verify: str = "hash"                # check the files read against the marker: "hash" (sha256) or "size"
    weights: str = "raw"                # "raw" (model.safetensors) or "ema" (model_ema.safetensors); in the protocol
    log: Callable[[str], None] = field(default=print, repr=False)

    @classmethod
    def from_eval_config(cls, ev, roots: List[str], work_dir: str, **kw) -> "ServiceOptions":
        """From an EvalConfig section (num_per_class, cfg_scale, top_k, top_p, seed, batch_size, weights, reference)."""
        names = ("num_per_class", "cfg_scale", "top_k", "top_p", "seed", "batch_size", "inception_weights",
                 "reference_npz", "inception_mode", "weights")
        return cls(roots=roots, work_dir=work_dir, **{n: getattr(ev, n) for n in names}, **kw)


def default_sampler_factory(folder: Path, opts: ServiceOptions, run_cfg) -> SampleFn:
    return sampler_for(folder, opts.cfg_scale, opts.top_k, opts.top_p, opts.more_smooth, opts.device, run_cfg,
                       opts.weights)


class EvalService:
    def __init__(self, opts: ServiceOptions, sampler_factory: SamplerFactory = default_sampler_factory):
        self.opts = opts
        self.work = Path(opts.work_dir)
        self.table = ResultsTable(self.work)
        self.evaluator = Evaluator(opts.inception_weights, opts.reference_npz, opts.device,
                                   batch_size=opts.inception_batch_size, cache_dir=str(self.work / "cache"),
                                   mode=opts.inception_mode)
        self.rank, self.world = rank_world()
        self.sampler_factory = sampler_factory
        self.damaged: Dict[str, str] = {}  # checkpoint id -> what is wrong with it, as last seen
        self.without_weights: set = set()  # checkpoint ids lacking the asked-for weights file (logged once)
        if self.evaluator.status() != "ok" and self.rank == 0:
            opts.log(f"[eval] {self.evaluator.status()}")

    @property
    def model_file(self) -> str:
        return weights_file(self.opts.weights)

    # ------------------------------------------------------------------ protocol
    def protocol(self, run_cfg) -> Protocol:
        o = self.opts
        return Protocol(num_classes=run_cfg.model.num_classes, num_per_class=o.num_per_class, cfg_scale=o.cfg_scale,
                        top_k=o.top_k, top_p=o.top_p, more_smooth=o.more_smooth, seed=o.seed,
                        resolution=run_cfg.tokenizer.resolution,
                        reference_sha256=self.evaluator.reference_sha256,
                        inception_sha256=self.evaluator.inception_sha256, inception_mode=self.evaluator.mode,
                        weights=o.weights)

    def sample_dir(self, ckpt: CheckpointRef, proto: Protocol) -> Path:
        # keyed without the metric fields: samples are reused when weights/reference/mode change
        return self.work / "samples" / ckpt.run / f"step_{ckpt.step:08d}" / proto.sampling_hash()

    # ------------------------------------------------------------------ one pass
    def pending(self) -> List[CheckpointRef]:
        out = []
        for root in self.opts.roots:
            out.extend(find_checkpoints(root))
        return out

    def run_once(self) -> List[Dict[str, object]]:
        """Evaluate every complete checkpoint not yet in the table; returns the new rows (rank 0; [] elsewhere)."""
        return one_pass(self.todo, self._evaluate_ref)

    def _evaluate_ref(self, ckpt: CheckpointRef) -> Optional[Dict[str, object]]:
        folder = stage(ckpt, self.work / "staged", self.opts.weights)  # rank 0 staged it already; local ranks share it
        run_cfg = load_run_config(folder)
        return self.evaluate(ckpt, folder, run_cfg, self.protocol(run_cfg))

    def todo(self) -> List[CheckpointRef]:
        """The complete, undamaged checkpoints without a row for their protocol (rank 0 decides for all)."""
        out = []
        for ckpt in self.pending():
            if not self.has_weights(ckpt):
                continue
            folder = stage(ckpt, self.work / "staged", self.opts.weights)
            # The small files by hash and the model by size first: finished rows then cost no model hash.
            problem = verify(folder, self.opts.verify, ("config.yaml", "meta.json")) or \
                verify(folder, "size", (self.model_file,))
            if self.damage(ckpt, problem, final=False):
                continue
            run_cfg = load_run_config(folder)
            proto = self.protocol(run_cfg)
            if self.table.has(ckpt.id, proto.hash()):
                continue
            if not self.damage(ckpt, verify(folder, self.opts.verify, (self.model_file,)), final=True):
                out.append(ckpt)
        return out

    def has_weights(self, ckpt: CheckpointRef) -> bool:
        """Whether the checkpoint has the weights file asked for; EMA files exist only for runs trained with
        ema.enabled, so a checkpoint without one is skipped (said once), not reported as damaged."""
        if self.opts.weights == "raw":
            return True
        fs, base = open_fs(ckpt.uri)
        if fs.exists(f"{base}/{self.model_file}"):
            return True
        if ckpt.id not in self.without_weights:
            self.without_weights.add(ckpt.id)
            self.opts.log(f"[eval] {ckpt.id}: skipped, no {self.model_file} (trained without ema.enabled)")
        return False

    def damage(self, ckpt: CheckpointRef, problem: Optional[str], final: bool) -> bool:
        """Record a verification result; a damaged checkpoint is logged once and listed in damaged.json.

        final: this was the last check, so a clean result clears an earlier report (a repaired checkpoint)."""
        if problem is None:
            if final and self.damaged.pop(ckpt.id, None) is not None:
                self._write_damaged()
            return False
        drop_staged(ckpt, self.work / "staged")
        if self.damaged.get(ckpt.id) != problem:
            self.damaged[ckpt.id] = problem
            self.opts.log(f"[eval] {ckpt.id}: skipped, checkpoint step_{ckpt.step:08d} is damaged: {problem}")
            self._write_damaged()
        return True

    def _write_damaged(self) -> None:
        write_json_atomic(self.work / "damaged.json", {k: {"problem": v} for k, v in sorted(self.damaged.items())})

    def evaluate(self, ckpt: CheckpointRef, folder: Path, run_cfg, proto: Protocol) -> Optional[Dict[str, object]]:
        """Sample, score and record one checkpoint; every rank calls it, rank 0 returns the row (others None)."""
        o, t0 = self.opts, time.time()
        plan = SamplePlan(proto.num_classes, proto.num_per_class, o.batch_size, proto.seed)
        out_dir = self.sample_dir(ckpt, proto)
        log = o.log if self.rank == 0 else (lambda _msg: None)
        log(f"[eval] {ckpt.id}: sampling {plan.num_samples} images over {self.world} rank(s) -> {out_dir}")
        sample_fn = self.sampler_factory(folder, o, run_cfg)
        counts = generate_samples(sample_fn, plan, out_dir, rank=self.rank, world_size=self.world, log=None)
        if counts["skipped"]:
            o.log(f"[eval] {ckpt.id}: rank {self.rank} resumed, {counts['skipped']} images already on disk")
        barrier()  # every PNG is on disk before any rank lists the folder
        if o.pack_npz and self.rank == 0:
            pack_folder(out_dir, out_dir.with_suffix(".npz"), expected=plan.num_samples)
        metrics = self.evaluator.evaluate(out_dir)
        if metrics is None:
            return None
        weights = folder / self.model_file
        row = {"checkpoint_id": ckpt.id, "protocol_hash": proto.hash(), "run": ckpt.run, "step": ckpt.step,
               **metrics, **proto.row_fields(),
               "model_sha256": sha256_file(weights) if weights.is_file() else "",
               "sample_dir": str(out_dir), "wall_s": round(time.time() - t0, 3),
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.table.upsert(row)
        if o.tensorboard:
            self.write_tensorboard(ckpt, row, out_dir)
        o.log(f"[eval] {ckpt.id}: {_summary(row)}")
        return row

    # ------------------------------------------------------------------ TensorBoard
    def tb_dir(self, ckpt: CheckpointRef) -> Path:
        """`<run>/tb/eval` (`eval_ema` for EMA weights) for local runs, beside the trainer's curves; a local
        mirror for remote ones."""
        name = "eval" if self.opts.weights == "raw" else f"eval_{self.opts.weights}"
        if ckpt.is_remote:
            return self.work / "tb" / ckpt.run / name
        return Path(ckpt.run_uri) / "tb" / name

    def write_tensorboard(self, ckpt: CheckpointRef, row: Dict[str, object], sample_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from .npz import list_pngs, load_png

        w = SummaryWriter(str(self.tb_dir(ckpt)))
        try:
            for metric in METRICS:
                for name, tag in zip(metric.columns, metric.tb_tags):
                    if row.get(name) is not None:
                        w.add_scalar(tag, float(row[name]), ckpt.step)
            w.add_text("eval/protocol", f"{row['status']} {row['protocol_hash']}: {row['note'] or 'ok'}", ckpt.step)
            grid = [load_png(p) for p in list_pngs(sample_dir)[:8]]
            if grid:
                w.add_image("eval/samples", np.concatenate(grid, axis=1), ckpt.step, dataformats="HWC")
        finally:
            w.close()

    # ------------------------------------------------------------------ loop
    def watch(self, max_passes: Optional[int] = None) -> None:
        watch(self.run_once, self.opts.roots, self.opts.poll_s, self.opts.log, "eval", max_passes)


def _summary(row: Dict[str, object]) -> str:
    parts = [f"{k}={float(row[k]):.4f}" for k in METRIC_COLUMNS if row.get(k) is not None]
    proto = (f"[{row['num_samples']} samples, {row['num_per_class']}/class, cfg-scale {row['cfg_scale']}, top-k {row['top_k']}, "
             f"top-p {row['top_p']}, seed {row['seed']}, {row['image_format']}, protocol {row['protocol_hash']}]")
    return (" ".join(parts) + " " if parts else "") + proto + (f" {row['note']}" if row.get("note") else "")
