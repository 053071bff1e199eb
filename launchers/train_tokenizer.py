"""Train (or fine-tune) the VAR multi-scale VQVAE tokenizer.

    python launchers/train_tokenizer.py data.root=data/images out_dir=runs/tok            # one process
    torchrun --nproc_per_node 8 launchers/train_tokenizer.py --config my_tok.yaml data.root=...
    deepspeed --num_gpus 8 launchers/train_tokenizer.py data.root=s3://bucket/images ...
    python launchers/train_tokenizer.py init=vae_ch160v4096z32.pth data.root=... optim.lr=3e-5   # fine-tune

Everything is a dotted override of the tokenizer-training config (mvar_dist/train/tokenizer/config.py;
docs/tokenizer_training.md lists each field, its default and its source). The launchers only start
processes: training is torch.distributed data parallel on gloo (CPU) or nccl (GPU).
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML file of tokenizer-training settings (optional)")
    p.add_argument("--resume", default=None, help="auto | none | <step folder> (= ckpt.resume)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.root=imgs optim.max_steps=1000")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Expected failures print one `error:` line and return 2 (mvar_dist/errors.py)."""
    from mvar_dist.errors import run_cli

    return run_cli(_main, argv)


def _main(argv) -> int:
    args = parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    from mvar_dist.config import ConfigError
    from mvar_dist.train.tokenizer.config import load_tok_config
    from mvar_dist.train.tokenizer.run import fit
    from mvar_dist.train.tokenizer.state import init_distributed

    overrides = list(args.overrides) + ([f"ckpt.resume={args.resume}"] if args.resume else [])
    try:
        cfg = load_tok_config(args.config, overrides)
        rank, world, device = init_distributed()
        summary = fit(cfg, rank, world, device)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if rank == 0:
        print(json.dumps({k: v for k, v in summary.items() if k != "last"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
