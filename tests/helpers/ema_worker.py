"""One gloo rank of the EMA tests (tests/integration/test_ema_zero3.py), run under torch.distributed.run.

    ema_worker.py train <dir> <steps>   AdamW steps on a small module under real ZeRO-3 (fp32); keeps the
                                        single-process fp32 reference EMA of the gathered parameter
                                        trajectory on rank 0; writes the EMA files (mvar_dist.train.ema),
                                        the consolidated EMA and the reference as <dir>/ema_full.pt, ref.pt
    ema_worker.py load <dir> <out.pt>   a fresh engine at this world size loads <dir>'s EMA files and
                                        writes the consolidated EMA; the raw weights must be unchanged
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from mvar_dist.distributed import init_process_group
from mvar_dist.train.ema import PartitionEMA, decay_at, is_update_step

DECAY, START, EVERY = 0.9, 2, 2


class Small(torch.nn.Module):
    """Odd sizes so that partitions at 2 and 3 ranks have padding; the LayerNorm stays persistent."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(13, 37)
        self.norm = torch.nn.LayerNorm(37)
        self.b = torch.nn.Linear(37, 5)

    def forward(self, x):
        return self.b(torch.relu(self.norm(self.a(x))))


def engine_for(seed: int = 0):
    import deepspeed

    torch.manual_seed(seed)
    model = Small()
    ds = {"train_batch_size": 4 * dist.get_world_size(), "train_micro_batch_size_per_gpu": 4,
          "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 40},
          "bf16": {"enabled": False}, "fp16": {"enabled": False}}
    opt = torch.optim.AdamW(model.parameters(), lr=0.05)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
    return engine


def gathered(engine) -> dict:
    import deepspeed

    params = dict(engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {n: p.detach().float().clone() for n, p in params.items()}


def train(folder: Path, steps: int) -> None:
    rank = dist.get_rank()
    engine = engine_for()
    ema = PartitionEMA(engine, rank, DECAY, START, EVERY)
    ref = gathered(engine)  # the reference starts from the same initial weights
    for step in range(1, steps + 1):
        g = torch.Generator().manual_seed(1000 * step + rank)
        x, y = torch.randn(4, 13, generator=g), torch.randn(4, 5, generator=g)
        engine.backward(torch.nn.functional.mse_loss(engine(x), y))
        engine.step()
        ema.update(step)
        full = gathered(engine)
        if is_update_step(step, START, EVERY):
            d = decay_at(step, DECAY, START)
            for n in ref:
                ref[n].lerp_(full[n], 1.0 - d)
    raw = gathered(engine)
    with ema.swapped_in():
        got = gathered(engine)
    after = gathered(engine)
    ema.save(folder, steps)
    if rank == 0:
        assert all(torch.equal(raw[n], after[n]) for n in raw), "swapped_in did not restore the raw weights"
        assert any(not torch.equal(raw[n], got[n]) for n in raw), "EMA equals the raw weights: nothing averaged"
        torch.save({"ema": got, "ref": ref}, folder / "ema_full.pt")


def load(folder: Path, out: Path) -> None:
    engine = engine_for(seed=1)  # other weights: everything must come from the files
    ema = PartitionEMA(engine, dist.get_rank(), DECAY, START, EVERY)
    assert ema.load(folder)
    raw = gathered(engine)
    with ema.swapped_in():
        got = gathered(engine)
    after = gathered(engine)
    if dist.get_rank() == 0:
        assert all(torch.equal(raw[n], after[n]) for n in raw), "swapped_in did not restore the raw weights"
        torch.save(got, out)


if __name__ == "__main__":
    init_process_group(single_process=True)
    mode, folder = sys.argv[1], Path(sys.argv[2])
    if mode == "train":
        train(folder, int(sys.argv[3]))
    else:
        load(folder, Path(sys.argv[3]))
    dist.barrier()
    dist.destroy_process_group()
