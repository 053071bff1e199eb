"""Training metrics: per-scale loss/accuracy sums, MFU, and the rank-0 writers (TensorBoard, jsonl, console).

Per-scale statistics are kept as sums (cross-entropy and correct-prediction counts per scale) so
they can be all-reduced across ranks and micro batches before dividing; the logged numbers are
then exactly the global-batch means, whatever the world size.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, Sequence

import torch
import torch.nn.functional as F

from mvar_dist.fsio import write_text_atomic

# Stated dense peaks per device in TFLOP/s (vendor datasheets, no sparsity): (bf16/fp16 tensor core,
# TF32 tensor core, plain fp32), by substring of torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS = (("H100 PCIe", (756.0, 378.0, 51.0)), ("H200", (989.0, 495.0, 67.0)),
               ("GH200", (989.0, 495.0, 67.0)), ("H100", (989.0, 495.0, 67.0)), ("A100", (312.0, 156.0, 19.5)),
               ("L40S", (362.0, 183.0, 91.6)), ("A10G", (125.0, 62.5, 31.2)), ("L4", (121.0, 60.0, 30.3)),
               ("4090", (165.0, 82.6, 82.6)), ("3090", (71.0, 35.6, 35.6)), ("V100", (125.0, 15.7, 15.7)))


def device_peak_flops(device: torch.device, precision: str, override_tflops: float = 0.0) -> float:
    """Peak FLOP/s of one device for MFU; 0 when unknown (CPU), in which case MFU is not logged.
    bf16/fp16 training is measured against the tensor-core peak; fp32 against the TF32 peak when the
    TF32 policy is on (`mvar_dist.precision`, what the trainer sets on CUDA), else plain fp32."""
    from mvar_dist.precision import tf32_enabled

    if override_tflops > 0:
        return override_tflops * 1e12
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, fp32) in PEAK_TFLOPS:
        if key in name:
            if precision in ("bf16", "bf16-autocast", "fp16"):
                return half * 1e12
            return (tf32 if tf32_enabled() else fp32) * 1e12
    return 0.0


def token_losses(logits_BLV: torch.Tensor, target_BL: torch.Tensor, label_smoothing: float = 0.0):
    """Per-token cross-entropy (B, L) in fp32, plus the training loss (plain mean over tokens)."""
    B, L, V = logits_BLV.shape
    ce_BL = F.cross_entropy(logits_BLV.float().reshape(-1, V), target_BL.reshape(-1),
                            label_smoothing=label_smoothing, reduction="none").view(B, L)
    return ce_BL, ce_BL.mean()


def scale_sums(ce_BL: torch.Tensor, logits_BLV: torch.Tensor, target_BL: torch.Tensor,
               patch_nums: Sequence[int]) -> torch.Tensor:
    """[ce sum per scale..., correct count per scale..., samples] as one fp64 vector (for all-reduce)."""
    correct_BL = (logits_BLV.argmax(-1) == target_BL).double()
    ce_BL = ce_BL.detach().double()
    start, ces, accs = 0, [], []
    for pn in patch_nums:
        end = start + pn * pn
        ces.append(ce_BL[:, start:end].sum())
        accs.append(correct_BL[:, start:end].sum())
        start = end
    n = torch.tensor(float(ce_BL.shape[0]), dtype=torch.float64, device=ce_BL.device)
    return torch.stack(ces + accs + [n])


def summarize(sums: torch.Tensor, patch_nums: Sequence[int]) -> Dict[str, float]:
    """Global means from all-reduced `scale_sums`: loss, L_mean, L_tail, acc_mean, acc_tail, loss_scale_<si>."""
    S = len(patch_nums)
    ce, correct, n = sums[:S].tolist(), sums[S:2 * S].tolist(), float(sums[2 * S])
    tokens = [n * pn * pn for pn in patch_nums]
    total = sum(tokens)
    out = {"L_mean": sum(ce) / total, "L_tail": ce[-1] / tokens[-1],
           "acc_mean": 100.0 * sum(correct) / total, "acc_tail": 100.0 * correct[-1] / tokens[-1]}
    for si in range(S):
        out[f"loss_scale_{si}"] = ce[si] / tokens[si]
    return out


class MetricsWriter:
    """Rank 0 writes metrics.jsonl, TensorBoard scalars and a console line; other ranks do nothing."""

    def __init__(self, out_dir: Path, tb_dir: Path, rank: int, total_steps: int, progress_bar: bool,
                 start_step: int = 0):
        self.rank = rank
        self.enabled = rank == 0
        self.bar = None
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.jsonl_path = Path(out_dir) / "metrics.jsonl"
        self.val_path = Path(out_dir) / "val_metrics.jsonl"
        for path in (self.jsonl_path, self.val_path):
            # A resumed run repeats the steps after its checkpoint: drop their earlier records.
            truncate_jsonl(path, start_step)
        self.tb = SummaryWriter(str(tb_dir), purge_step=start_step + 1 if start_step else None)
        if progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log_train(self, rec: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        append_jsonl(self.jsonl_path, rec)
        step = rec["step"]
        for k, v in rec.items():
            if k in ("step", "epoch") or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            group = "scale" if k.startswith("loss_scale_") else ("perf" if k in _PERF else "train")
            self.tb.add_scalar(f"{group}/{k}", v, step)
        self.tb.flush()
        line = (f"step {step:>7d} ep {rec['epoch']:>3d} | loss {rec['loss']:.4f} L_tail {rec['L_tail']:.4f} "
                f"acc {rec['acc_mean']:.2f}/{rec['acc_tail']:.2f} | lr {rec['lr']:.3g} gn {rec['grad_norm']:.3g} | "
                f"{rec['images_per_s']:.1f} img/s" + (f" mfu {rec['mfu']:.1%}" if math.isfinite(rec.get("mfu", math.nan)) else ""))
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(f"loss {rec['loss']:.4f}")
            self.bar.write(line)
        else:
            print(line, flush=True)

    def log_val(self, step: int, rec: Dict[str, float], weights: str = "raw") -> None:
        """weights: "raw" (TensorBoard val/...) or "ema" (val_ema/...); each jsonl line says which."""
        if not self.enabled:
            return
        tag = "val" if weights == "raw" else f"val_{weights}"
        append_jsonl(self.val_path, {"step": step, "weights": weights, **rec})
        for k, v in rec.items():
            self.tb.add_scalar(f"{tag}/{k}", v, step)
        self.tb.flush()
        print(f"step {step:>7d} | {tag} loss {rec['loss']:.4f} L_tail {rec['L_tail']:.4f} "
              f"acc {rec['acc_mean']:.2f}/{rec['acc_tail']:.2f}", flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            if self.bar is not None:
                self.bar.close()


_PERF = {"images_per_s", "tokens_per_s", "mfu", "step_time", "data_time", "compute_time", "peak_mem_gb",
         "train_flops", "images_seen", "tokens_seen", "amp_scale", "skipped_steps", "wall_time"}


def append_jsonl(path: Path, rec: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()


def truncate_jsonl(path: Path, last_step: int) -> None:
    if not path.is_file():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= last_step]
    write_text_atomic(path, "".join(ln + "\n" for ln in kept))


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class StepTimer:
    """Splits each step's wall time into waiting for data and the rest (forward/backward/step)."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.data = 0.0

    def data_done(self, t_start: float) -> None:
        self.data += time.perf_counter() - t_start

    def lap(self) -> tuple:
        now = time.perf_counter()
        total, data = now - self.t0, self.data
        self.t0, self.data = now, 0.0
        return total, data
