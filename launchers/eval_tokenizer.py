"""Evaluate a tokenizer on a held-out image folder: PSNR, SSIM, LPIPS, rFID, per-scale codebook usage.

    python launchers/eval_tokenizer.py --checkpoint runs/tok/export/vae.safetensors --images data/val
    python launchers/eval_tokenizer.py --checkpoint runs/tok/ckpt/step_00010000 --images data/val \\
        --lpips-vgg vgg16.pth --inception-weights pt_inception-2015-12-05-6726825d.pth --results outputs/eval
    python launchers/eval_tokenizer.py --watch runs/tok --images data/val --work-dir outputs/eval --once

--checkpoint: a .safetensors / .pth in the official key names, or a complete tokenizer step folder.
LPIPS needs --lpips-vgg (torchvision's vgg16 state dict), rFID needs --inception-weights (our FID
Inception, pytorch-fid's file); without them those metrics are skipped and the row's note says so.
One row per (checkpoint, protocol) in <results>/tokenizer_results.csv: re-running replaces it.
--watch is the evaluation service's tokenizer kind: every complete step folder under the roots once.
"""
from __future__ import annotations

import argparse
import json
import sys


def parse(argv):
    from mvar_dist.config.numbers import cli_number

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="vae .safetensors/.pth file or tokenizer step folder")
    p.add_argument("--watch", nargs="+", metavar="ROOT", help="tokenizer run / ckpt roots to watch instead")
    p.add_argument("--images", required=True, help="held-out ImageFolder dir (or folder of .tar shards)")
    p.add_argument("--lpips-vgg", default="", help="torchvision vgg16 state dict (LPIPS backbone)")
    p.add_argument("--lpips-lin", default="", help="LPIPS lin weights (default: the lpips package's)")
    p.add_argument("--inception-weights", default="", help="pt_inception-2015-12-05-6726825d.pth for rFID")
    p.add_argument("--results", "--work-dir", dest="results", default="outputs/eval",
                   help="folder (or .csv path) of the results table")
    p.add_argument("--patch-nums", default="", help="comma list, for a .pth without metadata (default VAR 256)")
    p.add_argument("--resize-ratio", type=cli_number(float, lo=0, lo_open=True), default=1.0,
                   help="shorter side -> round(ratio * R) before the centre crop (VAR's val_aug: 1.125)")
    p.add_argument("--batch-size", type=cli_number(int, lo=0, lo_open=True), default=16)
    p.add_argument("--num-workers", type=cli_number(int, lo=0), default=0)
    p.add_argument("--max-images", type=cli_number(int, lo=0), default=0, help="0 = all")
    p.add_argument("--device", default=None)
    p.add_argument("--once", action="store_true", help="with --watch: one pass, then exit")
    p.add_argument("--poll", type=cli_number(float, lo=0, lo_open=True), default=60.0)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Expected failures print one `error:` line and return 2 (mvar_dist/errors.py)."""
    from mvar_dist.errors import run_cli

    return run_cli(_main, argv)


def _main(argv) -> int:
    a = parse(argv)
    if bool(a.checkpoint) == bool(a.watch):
        print("error: give exactly one of --checkpoint or --watch", file=sys.stderr)
        return 2
    import torch

    from mvar_dist.eval.inception import InceptionWeightsError
    from mvar_dist.eval.tokenizer.evaluate import TokEvalOptions, evaluate_tokenizer, load_tokenizer
    from mvar_dist.eval.tokenizer.results import TokenizerResultsTable
    from mvar_dist.eval.tokenizer.service import TokenizerEvalService

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = TokEvalOptions(images=a.images, lpips_vgg=a.lpips_vgg, lpips_lin=a.lpips_lin,
                          inception_weights=a.inception_weights, resize_ratio=a.resize_ratio,
                          batch_size=a.batch_size, num_workers=a.num_workers, device=device,
                          max_images=a.max_images)
    try:
        if a.watch:
            service = TokenizerEvalService(a.watch, a.results, opts, poll_s=a.poll, progress=not a.no_progress)
            service.watch(max_passes=1 if a.once else None)
            print(f"[tok-eval] results: {service.table.path}")
            return 0
        patch_nums = tuple(int(x) for x in a.patch_nums.split(",")) if a.patch_nums else None
        tok = load_tokenizer(a.checkpoint, patch_nums)
        table = TokenizerResultsTable(a.results)
        row = evaluate_tokenizer(tok, opts, table, progress=not a.no_progress)
    except (InceptionWeightsError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(json.dumps({k: row[k] for k in ("checkpoint_id", "psnr", "ssim", "lpips", "rfid", "usage_all", "note")}))
    print(f"[tok-eval] results: {table.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
