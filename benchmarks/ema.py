"""EMA overhead (mvar_dist/train/ema.py): the per-step update against the optimizer step it follows,
plus the swap used for EMA validation/export and the per-rank file save. One process, real DeepSpeed
ZeRO-3 engine on the preset's model, random tokens. Not part of the test suite.

    python benchmarks/ema.py                                  # CPU: mvar_tiny and mvar_d12, fp32
    python benchmarks/ema.py --presets mvar_d16 --batch 8 --precision bf16
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def bench(preset: str, batch: int, precision: str, steps: int) -> dict:
    from mvar_dist.config import load_config
    from mvar_dist.model import MVAR
    from mvar_dist.train.ema import PartitionEMA
    from mvar_dist.train.engine import build_engine, engine_dtype, fill_ds_config, read_ds_config
    from mvar_dist.train.metrics import token_losses
    from mvar_dist.vqvae import MultiScaleVQVAE

    cfg = load_config(preset, [f"optim.global_batch={batch}", f"optim.precision={precision}", "ema.enabled=true"])
    engine, _ = build_engine(MVAR.from_config(cfg), cfg, fill_ds_config(read_ds_config(None), cfg, 1))
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0).eval().requires_grad_(False)
    L = sum(p * p for p in cfg.tokenizer.patch_nums)
    g = torch.Generator().manual_seed(0)
    tokens_BL = torch.randint(0, cfg.tokenizer.vocab_size, (batch, L), generator=g)
    labels_B = torch.randint(0, cfg.model.num_classes, (batch,), generator=g)
    teacher_BLC = vae.ids_to_teacher_input(tokens_BL).to(engine_dtype(cfg))
    ema = PartitionEMA(engine, 0, cfg.ema.decay, cfg.ema.start_step, cfg.ema.every)

    def step():
        _, loss = token_losses(engine(labels_B, teacher_BLC), tokens_BL)
        engine.backward(loss)
        engine.step()

    step()  # warm-up: allocations, ZeRO-3 trace
    step_ms = _ms(step, steps)
    n = [100]
    update_ms = _ms(lambda: (ema.update(n[0]), n.__setitem__(0, n[0] + 1)), 20)

    def swap():
        with ema.swapped_in():
            pass

    swap_ms = _ms(swap, 5)
    with tempfile.TemporaryDirectory() as d:
        save_ms = _ms(lambda: ema.save(Path(d), 1), 3)
    return {"preset": preset, "params_M": engine.module.num_params() / 1e6, "batch": batch, "precision": precision,
            "step_ms": step_ms, "update_ms": update_ms, "update_pct": 100 * update_ms / step_ms, "swap_ms": swap_ms,
            "save_ms": save_ms, "ema_MiB": ema.nbytes / 2 ** 20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["mvar_tiny", "mvar_d12"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps (median)")
    a = p.parse_args()
    from mvar_dist.distributed import init_process_group

    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    init_process_group(single_process=True)
    print(f"{'preset':<10}{'params M':>9}{'batch':>6}{'step ms':>10}{'update ms':>10}{'update %':>9}"
          f"{'swap ms':>9}{'save ms':>9}{'EMA MiB':>9}  ({torch.get_num_threads()} threads)")
    for preset in a.presets:
        r = bench(preset, a.batch, a.precision, a.steps)
        print(f"{r['preset']:<10}{r['params_M']:>9.2f}{r['batch']:>6}{r['step_ms']:>10.1f}{r['update_ms']:>10.2f}"
              f"{r['update_pct']:>9.2f}{r['swap_ms']:>9.2f}{r['save_ms']:>9.1f}{r['ema_MiB']:>9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
