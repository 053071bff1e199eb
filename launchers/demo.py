"""`make demo`: the whole system on the embedded dataset, stage by stage, on CPU.

    images (embedded 10-class dataset) -> Ray tokenisation -> token shards
      -> DeepSpeed ZeRO-3 training on 2 CPU ranks (checkpoints, TensorBoard; resumes if re-run)
      -> sample grid (PNG) -> one pass of the evaluation service

Trailing `key=value` arguments override the `demo128` preset (e.g. `optim.epochs=8`).
Every stage skips work that is already done, so re-running continues where the last run stopped.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stage_dataset(cfg) -> Path:
    from mvar_dist.demo_data import write_dataset

    out = write_dataset(cfg.data.image_root, images_per_class=20, size=cfg.tokenizer.resolution * 2, seed=cfg.seed)
    print(f"[demo] embedded dataset: 10 classes x 20 images -> {out}", flush=True)
    return out


def stage_tokenize(cfg) -> str:
    from mvar_dist.data_pipeline import run_tokenize

    manifest = run_tokenize(cfg, num_actors=2, images_per_shard=50, log=lambda s: print(s, flush=True))
    print(f"[demo] token shards: {manifest}", flush=True)
    return manifest


def stage_train(cfg, overrides) -> None:
    """2 CPU ranks under the DeepSpeed launcher; `--resume auto` continues an earlier demo run."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")))
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", "29611",
           str(REPO / "launchers" / "train.py"), "--config", "demo128", "--resume", "auto", *overrides]
    print(f"[demo] training: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, env=env, cwd=REPO)


def stage_samples(cfg) -> Path:
    from mvar_dist.train.checkpoint import latest_checkpoint
    from mvar_dist.train.preview import sample_grid

    ckpt = latest_checkpoint(Path(cfg.ckpt.dir))
    if ckpt is None:
        raise SystemExit(f"[demo] no complete checkpoint under {cfg.ckpt.dir}")
    png = sample_grid(ckpt, Path(cfg.out_dir) / "samples.png", per_class=2, seed=cfg.seed)
    print(f"[demo] sample grid (2 per class, from {ckpt.name}): {png}", flush=True)
    return png


def stage_eval(cfg) -> None:
    """One pass of the evaluation service over the demo checkpoints (FID skipped without Inception weights)."""
    from mvar_dist.eval.service import EvalService, ServiceOptions

    opts = ServiceOptions.from_eval_config(cfg.eval, roots=[cfg.ckpt.dir], work_dir=str(Path(cfg.out_dir) / "eval"))
    svc = EvalService(opts)
    rows = svc.run_once()
    print(f"[demo] eval: {len(rows)} new checkpoint(s) evaluated; results {svc.table.path}", flush=True)


def main(argv=None) -> int:
    import argparse

    from mvar_dist.config import ConfigError, load_config, save_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="resolve the config, print the plan, run nothing")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the demo128 preset, e.g. optim.epochs=8")
    args = p.parse_args(argv)
    t0 = time.time()
    overrides = args.overrides
    try:
        cfg = load_config("demo128", overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(f"[demo] dry run: images {cfg.data.image_root} -> shards {cfg.data.shards} -> {cfg.optim.epochs} "
              f"epoch(s) on 2 ranks -> checkpoints {cfg.ckpt.dir} -> samples + eval in {cfg.out_dir}")
        return 0
    save_config(cfg, cfg.out_dir)
    stage_dataset(cfg)
    stage_tokenize(cfg)
    stage_train(cfg, overrides)
    stage_samples(cfg)
    stage_eval(cfg)
    out = Path(cfg.out_dir).resolve()
    print(f"\n[demo] done in {time.time() - t0:.0f}s. Outputs under {out}:")
    print(f"  config       {out / 'config.yaml'}")
    print(f"  shards       {Path(cfg.data.shards).resolve()}")
    print(f"  checkpoints  {Path(cfg.ckpt.dir).resolve()}")
    print(f"  samples      {out / 'samples.png'}")
    print(f"  eval         {out / 'eval'}")
    print(f"  TensorBoard: {Path(sys.executable).parent / 'tensorboard'} --logdir {Path(cfg.log.tb_dir).resolve()} "
          f"--host 127.0.0.1 --port 6006")
    return 0


if __name__ == "__main__":
    sys.exit(main())
