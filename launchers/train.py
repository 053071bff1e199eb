"""Train M-VAR / VAR with DeepSpeed ZeRO-3.

    deepspeed launchers/train.py --config mvar_d16 --ds_config configs/zero3.json data.shards=s3://bucket/tok
    deepspeed --hostfile hosts --num_nodes 4 --num_gpus 8 launchers/train.py --config mvar_d30 ...
    torchrun --nproc_per_node 2 launchers/train.py --config mvar_tiny data.shards=... out_dir=runs/t
    python launchers/train.py --config mvar_tiny data.shards=...            # one process

Everything else is a dotted override of the run config (see `python -m mvar_dist config <preset>`).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="mvar_tiny", help="preset name or YAML path")
    p.add_argument("--ds_config", "--deepspeed_config", default=None, help="DeepSpeed JSON (default configs/zero3.json)")
    p.add_argument("--resume", default=None, help="auto | none | <checkpoint folder> (= ckpt.resume)")
    p.add_argument("--zero_init", default="auto", choices=("auto", "on", "off"),
                   help="construct the model partitioned with deepspeed.zero.Init (auto: width >= 1536 and >1 rank)")
    p.add_argument("--allow-new-tokenizer", action="store_true",
                   help="resume a checkpoint made with another tokenizer (= ckpt.allow_new_tokenizer=true)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.global_batch=768")
    return p.parse_args(argv)


def main(argv=None, hooks=None) -> int:
    """hooks: an optional mvar_dist.train.loop.TrainHooks (fault drills, see tests/helpers/train_with_nan_steps.py).

    Expected failures print one `error:` line and return 2 (mvar_dist/errors.py; --debug shows the traceback)."""
    from mvar_dist.errors import run_cli

    return run_cli(lambda av: _main(av, hooks), argv)


def _main(argv, hooks) -> int:
    args = parse_args(argv)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    # The shm-comm op and other DeepSpeed JIT builds are cached here instead of ~/.cache.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    # DeepSpeed's ZeRO-3 calls a deprecated c10d alias on every step; the warning would flood the console.
    warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.*", category=FutureWarning)
    from mvar_dist.config import ConfigError, load_config
    from mvar_dist.train.loop import BadStepsError, TrainHooks, train

    overrides = list(args.overrides) + ([f"ckpt.resume={args.resume}"] if args.resume else []) + \
        (["ckpt.allow_new_tokenizer=true"] if args.allow_new_tokenizer else [])
    try:
        cfg = load_config(args.config, overrides)
        if not cfg.data.shards:
            raise ConfigError("data.shards", "no token shards given: pass data.shards=<dir or s3:// prefix> "
                                             "(make them with launchers/pretokenize.py)")
        train(cfg, args.ds_config, args.zero_init, hooks or TrainHooks())
    except (ConfigError, BadStepsError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
