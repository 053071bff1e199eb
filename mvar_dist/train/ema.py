"""EMA of the generator's weights, kept per rank on the ZeRO-3 partition that rank owns.

Each rank holds an fp32 copy of exactly the elements of DeepSpeed's fp32 master partition
(`fp32_partitioned_groups_flat`, one flat tensor per ZeRO sub-group) and updates it after each
optimizer step from that partition: no gather, no communication, 4 bytes per owned element.

On disk (`ema/rank_XXXXX.safetensors` in the step folder, written by its rank, listed in the
completion marker) a rank stores, per parameter, the valid (unpadded) slice of the flattened
parameter it owns, keyed by the module's parameter name; the metadata records where each slice
starts in the flattened parameter. Loading intersects those slices with the loading rank's own
slices, so the same code restores the EMA at the same world size and at any other one (after a
universal-checkpoint resume DeepSpeed has repartitioned the weights; the EMA follows).

For validation and export the EMA is swapped into the partitions ZeRO-3 gathers from
(`swapped_in`), so the ordinary forward and the ordinary consolidated export see EMA weights.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import torch

from mvar_dist.fsio import atomic_path
from mvar_dist.runs.layout import EMA_DIR, ema_file

FORMAT = "mvar-dist-ema-partition/1"


def decay_at(step: int, decay: float, start_step: int) -> float:
    """EMA decay after optimizer step `step` (1-based): 0 (copy the weights) up to start_step, then
    min(decay, (1+k)/(10+k)) with k = step - start_step, so early averages are not dominated by the
    random initialisation."""
    if step <= start_step:
        return 0.0
    k = step - start_step
    return min(decay, (1.0 + k) / (10.0 + k))


def is_update_step(step: int, start_step: int, every: int) -> bool:
    """Whether the EMA changes after optimizer step `step`: every step up to start_step (copying),
    then every `every` steps counted from start_step."""
    return step <= start_step or (step - start_step) % every == 0


@dataclass(frozen=True)
class _Span:
    """Where one parameter's owned elements sit in this rank's flat sub-group partition."""

    name: str       # module parameter name (engine.module.named_parameters)
    group: int      # ZeRO sub-group index
    offset: int     # first element in the sub-group's flat partition
    start: int      # first element in the flattened full parameter
    length: int     # owned elements that are real (the last rank's partition tail is padding)
    shape: tuple    # full parameter shape


def _zero_optimizer(engine):
    opt = engine.optimizer
    if not hasattr(opt, "fp32_partitioned_groups_flat"):
        raise ValueError("ema.enabled needs the DeepSpeed ZeRO-3 optimizer (fp32_partitioned_groups_flat)")
    if any(t is None or t.numel() == 0 for t in opt.fp16_partitioned_groups_flat) or \
            any(t.numel() != n for t, n in zip(opt.fp32_partitioned_groups_flat, opt.fp16_partitioned_groups_flat_numel)):
        raise ValueError("ema.enabled does not support NVMe offload of parameters or optimizer state "
                         "(the master partition is not resident)")
    return opt


def _spans(opt, module: torch.nn.Module, rank: int) -> List[_Span]:
    names = {id(p): n for n, p in module.named_parameters()}
    out = []
    for g, params in enumerate(opt.fp16_groups):
        offset = 0
        for p in params:
            part = p.partition_numel()
            start = rank * part
            out.append(_Span(names[id(p)], g, offset, start, max(0, min(part, p.ds_numel - start)),
                             tuple(p.ds_shape)))
            offset += part
    return out


class PartitionEMA:
    """The fp32 EMA of this rank's ZeRO-3 partition. Build after the engine (and any checkpoint) is loaded."""

    def __init__(self, engine, rank: int, decay: float, start_step: int, every: int):
        self.opt = _zero_optimizer(engine)
        self.rank, self.decay, self.start_step, self.every = rank, decay, start_step, every
        self.spans = _spans(self.opt, engine.module, rank)
        # Starts as the current master weights: a fresh run's init, or a resumed run's weights when the
        # checkpoint has no EMA (load() then returns False and the caller says so).
        self.flats = [t.detach().float().clone() for t in self.opt.fp32_partitioned_groups_flat]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.flats)

    @torch.no_grad()
    def update(self, step: int) -> bool:
        """Fold the master weights after optimizer step `step` into the EMA; True when it changed."""
        if not is_update_step(step, self.start_step, self.every):
            return False
        d = decay_at(step, self.decay, self.start_step)
        for ema, w in zip(self.flats, self.opt.fp32_partitioned_groups_flat):
            ema.lerp_(w.detach().to(ema.dtype), 1.0 - d)
        return True

    # ------------------------------------------------------------------------------ files
    def save(self, folder: Path, step: int) -> Path:
        """Write this rank's file into a step folder (atomically); returns its path."""
        from safetensors.torch import save_file

        tensors, where = {}, {}
        for s in self.spans:
            if s.length:
                tensors[s.name] = self.flats[s.group][s.offset:s.offset + s.length].clone()
                where[s.name] = [s.start, list(s.shape)]
        meta = {"format": FORMAT, "rank": str(self.rank), "step": str(step), "spans": json.dumps(where),
                "decay": repr(self.decay), "start_step": str(self.start_step), "every": str(self.every)}
        path = Path(folder) / ema_file(self.rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @torch.no_grad()
    def load(self, folder: Path) -> bool:
        """Fill this rank's EMA from every rank file in folder/ema (saved at any world size).

        False when the folder has no EMA; ValueError naming the parameter when the files do not
        cover this rank's slice or were made for another shape."""
        files = sorted((Path(folder) / EMA_DIR).glob("rank_*.safetensors"))
        if not files:
            return False
        covered: Dict[str, int] = {s.name: 0 for s in self.spans}
        for f in files:
            self._fill_from(f, covered)
        short = [s.name for s in self.spans if covered[s.name] != s.length]
        if short:
            raise ValueError(f"{folder}/{EMA_DIR}: the EMA files do not cover this rank's part of "
                             f"{', '.join(short[:5])}{' ...' if len(short) > 5 else ''} (a rank file is missing)")
        return True

    def _fill_from(self, path: Path, covered: Dict[str, int]) -> None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not an EMA partition file (format {meta.get('format')!r})")
            where = json.loads(meta["spans"])
            for s in self.spans:
                if s.name not in where or not s.length:
                    continue
                start, shape = where[s.name]
                if tuple(shape) != s.shape:
                    raise ValueError(f"{path}: {s.name} has shape {tuple(shape)}, the model has {s.shape}")
                sl = fh.get_slice(s.name)
                lo, hi = max(start, s.start), min(start + sl.get_shape()[0], s.start + s.length)
                if lo >= hi:
                    continue
                dst = self.flats[s.group][s.offset + lo - s.start:s.offset + hi - s.start]
                dst.copy_(sl[lo - start:hi - start])
                covered[s.name] += hi - lo

    # ------------------------------------------------------------------------------ using the EMA
    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Collective: inside, ZeRO-3 gathers EMA weights (in the working dtype); restored after.

        The working partitions are views of `fp16_partitioned_groups_flat` (in fp32 runs the same
        tensors as the master copy), so they are backed up and copied back; persistent (never
        released) small parameters are re-gathered both ways."""
        opt = self.opt
        backup = [t.detach().clone() for t in opt.fp16_partitioned_groups_flat]
        try:
            with torch.no_grad():
                for work, ema in zip(opt.fp16_partitioned_groups_flat, self.flats):
                    work.copy_(ema.to(work.dtype))
            self._regather_persistent()
            yield
        finally:
            with torch.no_grad():
                for work, saved in zip(opt.fp16_partitioned_groups_flat, backup):
                    work.copy_(saved)
            self._regather_persistent()

    def _regather_persistent(self) -> None:
        persistent = getattr(self.opt, "persistent_parameters", [])
        if persistent:
            persistent[0].all_gather(persistent)


def start(cfg, engine, rank: int, folder: Optional[Path], message: Callable[[str], None]) -> Optional[PartitionEMA]:
    """The run's EMA when ema.enabled (else None), restored from the resumed step folder when it has one.

    Call after the engine has loaded the checkpoint: without EMA files the EMA starts from the loaded weights."""
    e = cfg.ema
    if not e.enabled:
        return None
    ema = PartitionEMA(engine, rank, e.decay, e.start_step, e.every)
    if folder is not None:
        if ema.load(folder):
            message(f"[train] EMA restored from {folder}/{EMA_DIR}")
        else:
            message(f"[train] {folder} has no EMA; the EMA starts from the resumed weights")
    return ema


def read_full(folder: Path) -> Dict[str, torch.Tensor]:
    """The whole fp32 EMA of a step folder (module parameter names), from its rank files, in one process.

    For inspection and tests; sampling uses the consolidated model_ema.safetensors instead. Elements no
    file holds stay NaN."""
    from safetensors import safe_open

    flats: Dict[str, torch.Tensor] = {}
    shapes: Dict[str, List[int]] = {}
    for path in sorted((Path(folder) / EMA_DIR).glob("rank_*.safetensors")):
        with safe_open(str(path), framework="pt") as fh:
            for name, (start, shape) in json.loads((fh.metadata() or {})["spans"]).items():
                shapes[name] = shape
                flat = flats.setdefault(name, torch.full((torch.Size(shape).numel(),), float("nan")))
                piece = fh.get_tensor(name)
                flat[start:start + piece.numel()] = piece
    return {n: t.view(shapes[n]) for n, t in flats.items()}


def ema_bytes_per_rank(num_params: int, world_size: int) -> int:
    """Memory of the EMA on one rank: fp32 of its 1/world share (padding ignored)."""
    return 4 * -(-num_params // world_size)
