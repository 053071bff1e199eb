"""`make demo`: the whole system on the embedded dataset, stage by stage, on 2 CPU cores in under 10 minutes.

    images (embedded 10-class dataset, 64 px)
      -> an independent judge: a small classifier trained on other real images of the same classes
      -> tokenizer training (configs/tokenizer/demo.yaml) -> its reconstruction PSNR on held-out images
      -> Ray tokenisation with that tokenizer -> token shards
      -> DeepSpeed ZeRO-3 training of a small M-VAR on 2 CPU ranks (checkpoints, TensorBoard)
      -> sample grid (PNG) + class consistency: the share of samples the judge assigns to their class
      -> one pass of the evaluation service

Trailing `key=value` arguments override the `demo` preset (e.g. `optim.epochs=40`); `--tok key=value`
overrides the tokenizer-training settings. Every stage skips work that is already done, so re-running
continues where the last run stopped (`make clean-demo` starts over).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TOK_CONFIG = REPO / "configs" / "tokenizer" / "demo.yaml"
HELDOUT_PER_CLASS = 5  # held-out real images per class for the tokenizer's PSNR


def log(msg: str) -> None:
    print(msg, flush=True)


def stage_dataset(cfg) -> Path:
    from mvar_dist.demo_data import write_dataset

    out = write_dataset(cfg.data.image_root, images_per_class=20, size=cfg.tokenizer.resolution * 2, seed=cfg.seed)
    write_dataset(cfg.data.image_root, images_per_class=HELDOUT_PER_CLASS, size=cfg.tokenizer.resolution * 2,
                  seed=cfg.seed, split="val")
    log(f"[demo] embedded dataset: 10 classes x 20 images (+{HELDOUT_PER_CLASS} held out) -> {out}")
    return out


def stage_judge(out_dir: Path):
    from mvar_dist.eval.demo_judge import load_or_train

    path = out_dir / "judge" / "classifier.safetensors"
    model, acc = load_or_train(path, progress=log)
    log(f"[demo] judge: classifier {path} ({acc:.0%} on held-out real images)")
    return model


def stage_tokenizer(cfg, tok_overrides) -> Path:
    """Train the demo tokenizer in one process (it resumes from its own step folders if interrupted)."""
    tok_dir = Path(cfg.out_dir) / "tokenizer"
    export = tok_dir / "export" / "vae.safetensors"
    if export.is_file():
        log(f"[demo] tokenizer: {export} exists, skipping training")
    else:
        cmd = [sys.executable, str(REPO / "launchers" / "train_tokenizer.py"), "--config", str(TOK_CONFIG),
               f"data.root={cfg.data.image_root}", f"out_dir={tok_dir}", f"seed={cfg.seed}", *tok_overrides]
        log(f"[demo] tokenizer training: {' '.join(cmd[1:])}")
        subprocess.run(cmd, check=True, cwd=REPO)
    return export


def stage_tokenizer_eval(cfg, export: Path, judge) -> float:
    """Reconstruction PSNR on held-out images, and how often the judge still recognises the reconstructions."""
    import torch

    from mvar_dist.eval.demo_judge import consistency, real_images
    from mvar_dist.demo_data import split_seed
    from mvar_dist.eval.tokenizer.evaluate import TokEvalOptions, evaluate_tokenizer, load_tokenizer
    from mvar_dist.eval.tokenizer.results import TokenizerResultsTable

    tok = load_tokenizer(str(export))
    opts = TokEvalOptions(images=str(Path(cfg.data.image_root) / "val"), batch_size=25)
    row = evaluate_tokenizer(tok, opts, TokenizerResultsTable(export.parent.parent / "eval"), progress=False,
                             log=lambda s: None)
    x_B3HW, labels_B = real_images(HELDOUT_PER_CLASS, seed=split_seed(cfg.seed, "val"), side=tok.vae.resolution)
    with torch.no_grad():
        recon_B3HW = (tok.vae.ids_to_img(tok.vae.img_to_ids(x_B3HW * 2 - 1)).clamp(-1, 1) + 1) / 2
    log(f"[demo] tokenizer: reconstruction PSNR {float(row['psnr']):.2f} dB, SSIM {float(row['ssim']):.3f} on "
        f"{row['num_images']} held-out images; the judge recognises {consistency(judge, recon_B3HW, labels_B):.0%} "
        f"of the reconstructions")
    return float(row["psnr"])


def stage_tokenize(cfg) -> str:
    from mvar_dist.data_pipeline import run_tokenize

    manifest = run_tokenize(cfg, num_actors=2, images_per_shard=50, log=log)
    log(f"[demo] token shards: {manifest}")
    return manifest


def stage_train(overrides) -> None:
    """2 CPU ranks under the DeepSpeed launcher; `--resume auto` continues an earlier demo run."""
    env = dict(os.environ, OMP_NUM_THREADS="1",
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions")))
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", "29611",
           str(REPO / "launchers" / "train.py"), "--config", "demo", "--resume", "auto", *overrides]
    log(f"[demo] training: {' '.join(cmd[1:])}")
    subprocess.run(cmd, check=True, env=env, cwd=REPO)


def stage_samples(cfg, judge) -> float:
    """The grid, and the judge's class consistency over eval.num_per_class samples per class."""
    from mvar_dist.eval.demo_judge import judge_checkpoint
    from mvar_dist.fsio import write_json_atomic
    from mvar_dist.runs.layout import latest_checkpoint
    from mvar_dist.eval.preview import sample_grid

    ckpt = latest_checkpoint(Path(cfg.ckpt.dir))
    if ckpt is None:
        raise SystemExit(f"[demo] no complete checkpoint under {cfg.ckpt.dir}")
    png = sample_grid(ckpt, Path(cfg.out_dir) / "samples.png", per_class=4, seed=cfg.seed)
    log(f"[demo] sample grid (one row per class, 4 samples each, from {ckpt.name}): {png}")
    verdict = judge_checkpoint(ckpt, judge, per_class=cfg.eval.num_per_class, seed=cfg.seed)
    write_json_atomic(Path(cfg.out_dir) / "class_consistency.json", verdict)
    per_class = ", ".join(f"{k} {v:.0%}" for k, v in verdict["per_class"].items())
    log(f"[demo] class consistency: {verdict['consistency']:.0%} of {verdict['num_samples']} samples are judged "
        f"their conditioning class (chance 10%); per class: {per_class}")
    return verdict["consistency"]


def stage_eval(cfg) -> None:
    """One pass of the evaluation service over the demo checkpoints (FID skipped without Inception weights)."""
    from mvar_dist.eval.service import EvalService, ServiceOptions

    opts = ServiceOptions.from_eval_config(cfg.eval, roots=[cfg.ckpt.dir], work_dir=str(Path(cfg.out_dir) / "eval"))
    svc = EvalService(opts)
    rows = svc.run_once()
    log(f"[demo] eval: {len(rows)} new checkpoint(s) evaluated; results {svc.table.path}")


def main(argv=None) -> int:
    import argparse

    from mvar_dist.config import ConfigError, load_config, save_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="resolve the config, print the plan, run nothing")
    p.add_argument("--tok", action="append", default=[], metavar="KEY=VALUE",
                   help="override of configs/tokenizer/demo.yaml, e.g. --tok optim.max_steps=200 (repeatable)")
    p.add_argument("--until", choices=("tokenizer", "shards"), default=None,
                   help="stop after this stage (`make sweep-demo` needs only the tokenizer and the shards)")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the demo preset, e.g. optim.epochs=40")
    args = p.parse_args(argv)
    t0 = time.time()
    try:
        cfg = load_config("demo", args.overrides)
        export = Path(cfg.out_dir) / "tokenizer" / "export" / "vae.safetensors"
        overrides = [*args.overrides, f"tokenizer.checkpoint={export}"]
        cfg = load_config("demo", overrides)
        from mvar_dist.train.tokenizer.config import load_tok_config

        load_tok_config(str(TOK_CONFIG), args.tok)  # a bad --tok fails now, not after the first stages
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(cfg.out_dir)
    if args.dry_run:
        log(f"[demo] dry run: images {cfg.data.image_root} -> judge {out / 'judge'} -> tokenizer {export} -> shards "
            f"{cfg.data.shards} -> {cfg.optim.epochs} epoch(s) on 2 ranks -> checkpoints {cfg.ckpt.dir} -> samples, "
            f"class consistency + eval in {out}")
        return 0
    save_config(cfg, out)
    stage_dataset(cfg)
    judge = stage_judge(out)
    stage_tokenizer(cfg, args.tok)
    psnr = stage_tokenizer_eval(cfg, export, judge)
    if args.until == "tokenizer":
        return 0
    stage_tokenize(cfg)
    if args.until == "shards":
        return 0
    stage_train(overrides)
    score = stage_samples(cfg, judge)
    stage_eval(cfg)
    out = out.resolve()
    log(f"\n[demo] done in {time.time() - t0:.0f}s: tokenizer PSNR {psnr:.2f} dB, class consistency {score:.0%}. "
        f"Outputs under {out}:")
    log(f"  config       {out / 'config.yaml'}")
    log(f"  tokenizer    {export.resolve()}")
    log(f"  shards       {Path(cfg.data.shards).resolve()}")
    log(f"  checkpoints  {Path(cfg.ckpt.dir).resolve()}")
    log(f"  samples      {out / 'samples.png'}")
    log(f"  consistency  {out / 'class_consistency.json'}")
    log(f"  eval         {out / 'eval'}")
    log(f"  TensorBoard: {Path(sys.executable).parent / 'tensorboard'} --logdir {Path(cfg.log.tb_dir).resolve()} "
        f"--host 127.0.0.1 --port 6006")
    return 0


if __name__ == "__main__":
    sys.exit(main())
