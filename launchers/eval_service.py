"""Watch checkpoint roots (local or s3://) and evaluate every complete checkpoint once.

    python launchers/eval_service.py --roots outputs/demo --work-dir outputs/eval --once
    python launchers/eval_service.py --roots s3://bucket/runs --work-dir /data/eval \\
        --inception-weights pt_inception-2015-12-05-6726825d.pth --reference VIRTUAL_imagenet256_labeled.npz
    torchrun --nproc_per_node 8 launchers/eval_service.py --roots runs --work-dir /shared/eval --once ...

Under torchrun every rank samples and scores its share of each checkpoint (the work dir must be shared);
rank 0 writes the row, equal to a one-process run's.

Protocol defaults come from the eval section of --config (a preset or YAML; eval.* dotted overrides also work)
and each flag overrides them. Results: <work-dir>/eval_results.csv; TensorBoard: <run>/tb/eval.
s3:// endpoints come from $AWS_ENDPOINT_URL; credentials from the standard AWS chain.
"""
from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path


def fetch_inception(folder: str) -> int:
    """Explicit download of pytorch-fid's weights file, checked against the sha256 prefix in its name."""
    from mvar_dist.eval.inception import STANDARD_FILE, STANDARD_URL, read_weights
    from mvar_dist.fsio import atomic_path

    dst = Path(folder) / STANDARD_FILE
    print(f"downloading {STANDARD_URL} -> {dst}")
    with atomic_path(dst, mkdir=True) as tmp:
        urllib.request.urlretrieve(STANDARD_URL, tmp)
    read_weights(dst)  # raises if the hash prefix does not match
    print(f"ok: pass --inception-weights {dst}")
    return 0


def parse(argv):
    from mvar_dist.config.numbers import cli_number

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--roots", nargs="+", help="run folders, checkpoints/ folders or folders of runs")
    p.add_argument("--work-dir", default="outputs/eval", help="results table, samples, caches")
    p.add_argument("--config", default=None, help="preset or YAML whose eval section gives the defaults")
    p.add_argument("--once", action="store_true", help="one pass over existing checkpoints, then exit")
    p.add_argument("--poll", type=cli_number(float, lo=0, lo_open=True), default=60.0, help="seconds between passes when watching")
    p.add_argument("--inception-weights", default=None, help="pytorch-fid pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--reference", default=None, help="reference batch .npz (mu/sigma[, mu_s/sigma_s, arr_0])")
    p.add_argument("--inception-mode", choices=("adm", "pytorch-fid"), default=None,
                   help="adm (default, ADM's evaluator as the papers) or pytorch-fid preprocessing and IS")
    p.add_argument("--num-per-class", type=cli_number(int, lo=0, lo_open=True), default=None)
    p.add_argument("--cfg-scale", type=cli_number(float, lo=0), default=None)
    p.add_argument("--top-k", type=cli_number(int, lo=0), default=None)
    p.add_argument("--top-p", type=cli_number(float, lo=0, hi=1, lo_open=True), default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch-size", type=cli_number(int, lo=0, lo_open=True), default=None)
    p.add_argument("--weights", choices=("raw", "ema"), default=None,
                   help="generator weights: raw (model.safetensors) or ema (model_ema.safetensors); in the protocol")
    p.add_argument("--inception-batch-size", type=cli_number(int, lo=0, lo_open=True), default=50,
                   help="images per Inception forward")
    p.add_argument("--device", default=None, help="default: this rank's GPU, else cpu")
    p.add_argument("--pack-npz", action="store_true", help="also pack each sample folder into an arr_0 .npz")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--fetch-inception", metavar="DIR", help="download the standard Inception weights, then exit")
    p.add_argument("--kind", choices=("model", "tokenizer"), default="model",
                   help="tokenizer: watch tokenizer-trainer roots (PSNR/SSIM/LPIPS/rFID/usage, needs --images; "
                        "results <work-dir>/tokenizer_results.csv; see launchers/eval_tokenizer.py)")
    p.add_argument("--images", default=None, help="--kind tokenizer: held-out ImageFolder dir")
    p.add_argument("--lpips-vgg", default="", help="--kind tokenizer: torchvision vgg16 state dict for LPIPS")
    p.add_argument("overrides", nargs="*", help="dotted config overrides such as eval.cfg_scale=2.0")
    return p.parse_args(argv)


def watch_tokenizers(a) -> int:
    """The tokenizer kind: each complete tokenizer step folder under --roots is evaluated once."""
    from mvar_dist.eval.tokenizer.evaluate import TokEvalOptions
    from mvar_dist.eval.tokenizer.service import TokenizerEvalService

    opts = TokEvalOptions(images=a.images or "", lpips_vgg=a.lpips_vgg, inception_weights=a.inception_weights or "",
                          inception_mode=a.inception_mode or "adm", batch_size=a.batch_size or 16, device=a.device)
    try:
        service = TokenizerEvalService(a.roots, a.work_dir, opts, poll_s=a.poll)
        service.watch(max_passes=1 if a.once else None)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(f"[tok-eval] results: {service.table.path}")
    return 0


def main(argv=None) -> int:
    """Expected failures print one `error:` line and return 2 (mvar_dist/errors.py)."""
    from mvar_dist.errors import run_cli

    return run_cli(_main, argv)


def _main(argv) -> int:
    a = parse(argv)
    if a.fetch_inception:
        return fetch_inception(a.fetch_inception)
    if not a.roots:
        print("error: --roots is required", file=sys.stderr)
        return 2
    from mvar_dist.distributed import destroy_process_group, init_process_group

    _, _, device = init_process_group(single_process=False)  # a group only under torchrun
    a.device = a.device or str(device)
    try:
        return watch_tokenizers(a) if a.kind == "tokenizer" else watch_models(a)
    finally:
        destroy_process_group()


def watch_models(a) -> int:
    from mvar_dist.config import ConfigError, load_config
    from mvar_dist.eval.inception import InceptionWeightsError
    from mvar_dist.eval.reference import ReferenceError
    from mvar_dist.eval.service import EvalService, ServiceOptions

    try:
        ev = load_config(a.config, a.overrides).eval
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    flags = {"inception_weights": a.inception_weights, "reference_npz": a.reference,
             "num_per_class": a.num_per_class, "cfg_scale": a.cfg_scale, "top_k": a.top_k, "top_p": a.top_p,
             "seed": a.seed, "batch_size": a.batch_size, "inception_mode": a.inception_mode,
             "weights": a.weights}
    for name, value in flags.items():
        if value is not None:
            setattr(ev, name, value)
    opts = ServiceOptions.from_eval_config(ev, roots=a.roots, work_dir=a.work_dir, device=a.device,
                                           inception_batch_size=a.inception_batch_size,
                                           pack_npz=a.pack_npz, tensorboard=not a.no_tensorboard, poll_s=a.poll)
    try:
        service = EvalService(opts)
    except (InceptionWeightsError, ReferenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        service.watch(max_passes=1 if a.once else None)
    except KeyboardInterrupt:
        print("[eval] stopped; finished rows are kept and half-done sampling resumes on the next start")
        return 130
    print(f"[eval] results: {service.table.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
