"""Class-balanced sampling to PNG (+ .npz), reference statistics and metrics, as separate steps.

    # 50 per class with the FID settings, over 8 GPUs (any rank count gives the same images):
    torchrun --nproc_per_node 8 launchers/sample.py sample --ckpt runs/x/checkpoints/step_00100000 \\
        --out samples/x_100k --npz
    python launchers/sample.py pack samples/x_100k samples/x_100k.npz --expected 50000
    python launchers/sample.py reference imagenet_val_256/ ref.npz --inception-weights pt_inception-...pth
    python launchers/sample.py metrics samples/x_100k --inception-weights pt_inception-...pth --reference ref.npz
    # a released checkpoint (official .pth) as a complete step folder (`sample --ckpt`, the eval service):
    python launchers/sample.py import-official var_d16.pth released/var_d16/checkpoints/step_00000000 \\
        --config var_d16 --vae vae_ch160v4096z32.pth

Sampling resumes: rerunning the same command completes a half-done folder with identical images.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def cmd_sample(a) -> int:
    import torch

    from mvar_dist.distributed import destroy_process_group, init_process_group
    from mvar_dist.eval.checkpoints import sampler_for
    from mvar_dist.runs.generator import load_run_config
    from mvar_dist.eval.npz import pack_folder
    from mvar_dist.eval.sampling import SamplePlan, generate_samples

    rank, world, device = init_process_group(single_process=False)  # a group only under torchrun
    run_cfg = load_run_config(a.ckpt)
    ev = run_cfg.eval
    pick = lambda flag, default: default if flag is None else flag  # noqa: E731
    plan = SamplePlan(run_cfg.model.num_classes, pick(a.num_per_class, ev.num_per_class),
                      pick(a.batch_size, ev.batch_size), pick(a.seed, ev.seed))
    fn = sampler_for(a.ckpt, pick(a.cfg_scale, ev.cfg_scale), pick(a.top_k, ev.top_k), pick(a.top_p, ev.top_p),
                     a.more_smooth, device, run_cfg, a.weights)
    counts = generate_samples(fn, plan, a.out, rank, world, log=print if rank == 0 else None)
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        print(f"[sample] {plan.num_samples} images in {a.out} (this rank made {counts['made']}, "
              f"skipped {counts['skipped']} already there)")
        if a.npz:
            out = a.out.rstrip("/") + ".npz"
            pack_folder(a.out, out, expected=plan.num_samples)
            print(f"[sample] packed {out}")
    destroy_process_group()
    return 0


def cmd_import(a) -> int:
    """An official checkpoint -> <out>/{model.safetensors, config.yaml, meta.json, COMPLETE}, checked against the
    preset; the COMPLETE marker (written last, listing the files) makes it a step folder the service evaluates."""
    import dataclasses
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from mvar_dist.config import load_config, save_config
    from mvar_dist.fsio import atomic_path, write_text_atomic
    from mvar_dist.model import MVAR
    from mvar_dist.runs import manifest as mf
    from mvar_dist.runs.layout import META
    from mvar_dist.vqvae import MultiScaleVQVAE

    cfg = load_config(a.config, [f"tokenizer.checkpoint={os.path.abspath(a.vae)}", *a.overrides])
    # raises when the file's shapes/keys disagree with the preset (wrong depth, arch or attn_l2_norm)
    model = MVAR.from_official(a.weights, patch_nums=tuple(cfg.tokenizer.patch_nums), **dataclasses.asdict(cfg.model))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in model.official_state_dict().items()}, str(tmp))
    save_config(cfg, out)
    # the tokenizer's hash, so runs/generator.load_generator checks it as for a trained step folder
    tok_hash = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0).weights_hash()
    write_text_atomic(out / META, json.dumps({"step": 0, "arch": cfg.model.arch, "tokenizer_hash": tok_hash,
                                              "imported_from": os.path.abspath(a.weights)}))
    files = mf.describe(out, ["model.safetensors", "config.yaml", META])
    marker = {"step": 0, "format": mf.MARKER_FORMAT, "world_size": 1,
              "files": {rel: {**entry, "rank": 0} for rel, entry in files.items()}}
    write_text_atomic(out / mf.MARKER, mf.marker_text(marker))
    print(f"[import] {a.weights} ({cfg.model.arch}, depth {cfg.model.depth}) -> {out}; "
          f"sample it with `launchers/sample.py sample --ckpt {out}`")
    return 0


def cmd_pack(a) -> int:
    from mvar_dist.eval.npz import pack_folder

    n = pack_folder(a.folder, a.out, expected=a.expected)
    print(f"packed {n} images -> {a.out}")
    return 0


def cmd_reference(a) -> int:
    from mvar_dist.eval.inception import build_inception
    from mvar_dist.eval.reference import reference_from_folder

    net = build_inception(a.inception_weights, a.device, a.inception_mode)
    n = reference_from_folder(net, a.folder, a.out, batch_size=a.batch_size, keep_images=a.keep_images,
                              device=a.device)
    print(f"reference statistics of {n} images -> {a.out} (inception sha256 {net.weights_sha256[:16]}, "
          f"mode {net.mode}, recorded in the file)")
    return 0


def cmd_metrics(a) -> int:
    import tempfile

    from mvar_dist.eval.evaluate import Evaluator
    from mvar_dist.eval.npz import load_images, save_png

    ev = Evaluator(a.inception_weights or "", a.reference or "", a.device, batch_size=a.batch_size,
                   mode=a.inception_mode)
    folder = a.samples
    if a.samples.endswith(".npz"):  # an arr_0 batch from elsewhere: unpack to PNGs (lossless) first
        folder = tempfile.mkdtemp(prefix="mvar-eval-")
        for i, img in enumerate(load_images(a.samples)):
            save_png(img, os.path.join(folder, f"{i:06d}.png"))
    result = ev.evaluate(folder)
    result.update(samples=a.samples, inception_sha256=ev.inception_sha256, reference_sha256=ev.reference_sha256,
                  inception_mode=ev.mode)
    print(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    """Expected failures print one `error:` line and return 2 (mvar_dist/errors.py)."""
    from mvar_dist.errors import run_cli

    return run_cli(_main, argv)


def _main(argv) -> int:
    from mvar_dist.config.numbers import cli_number
    from mvar_dist.eval.inception import InceptionWeightsError
    from mvar_dist.eval.reference import ReferenceError

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sample", help="class-balanced PNG samples of a checkpoint (resumable, multi-rank)")
    s.add_argument("--ckpt", required=True, help="step folder with model.safetensors and config.yaml")
    s.add_argument("--out", required=True)
    for flag, typ in (("--num-per-class", cli_number(int, lo=0, lo_open=True)),
                      ("--batch-size", cli_number(int, lo=0, lo_open=True)), ("--seed", int),
                      ("--cfg-scale", cli_number(float, lo=0)), ("--top-k", cli_number(int, lo=0)),
                      ("--top-p", cli_number(float, lo=0, hi=1, lo_open=True))):
        s.add_argument(flag, type=typ, default=None, help="default: the checkpoint config's eval section")
    s.add_argument("--more-smooth", action="store_true", help="soft Gumbel sampling (visualisation, not FID)")
    s.add_argument("--weights", choices=("raw", "ema"), default="raw",
                   help="raw: model.safetensors; ema: model_ema.safetensors (runs trained with ema.enabled)")
    s.add_argument("--npz", action="store_true", help="also pack <out>.npz (arr_0) on rank 0")
    m = sub.add_parser("import-official", help="an official VAR/M-VAR .pth -> a step folder for `sample --ckpt`")
    m.add_argument("weights", help="official var_d16.pth / d16.pth (or .safetensors)")
    m.add_argument("out", help="step folder to write")
    m.add_argument("--config", required=True, help="the matching preset (var_d16, mvar_d16, ...) or YAML")
    m.add_argument("--vae", required=True, help="the official tokenizer vae_ch160v4096z32.pth")
    m.add_argument("overrides", nargs="*", help="dotted config overrides")
    k = sub.add_parser("pack", help="PNG folder -> .npz with arr_0 uint8 (N, H, W, 3)")
    k.add_argument("folder")
    k.add_argument("out")
    k.add_argument("--expected", type=cli_number(int, lo=0, lo_open=True), default=None, help="require exactly this many PNGs")
    for name, helptext in (("reference", "reference statistics (.npz, ADM layout) of an image folder"),
                           ("metrics", "FID/sFID/IS/precision/recall of a PNG folder or .npz")):
        r = sub.add_parser(name, help=helptext)
        if name == "reference":
            r.add_argument("folder")
            r.add_argument("out")
            r.add_argument("--keep-images", type=cli_number(int, lo=0), default=10000, help="images stored as arr_0 for P/R")
        else:
            r.add_argument("samples")
            r.add_argument("--reference", default=None)
        r.add_argument("--inception-weights", required=name == "reference")
        r.add_argument("--batch-size", type=cli_number(int, lo=0, lo_open=True), default=50)
        r.add_argument("--inception-mode", choices=("adm", "pytorch-fid"), default="adm",
                       help="adm: ADM's evaluator (the papers' numbers, its reference batches); pytorch-fid")
        r.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    try:
        return {"sample": cmd_sample, "import-official": cmd_import, "pack": cmd_pack, "reference": cmd_reference, "metrics": cmd_metrics}[a.cmd](a)
    except (InceptionWeightsError, ReferenceError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
