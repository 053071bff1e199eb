"""The GPU benchmark suite: one command, every row beside a baseline measured in the same run, written
as JSON and a markdown table. Needs only torch (2.11+) and triton; DeepSpeed, Ray, mamba-ssm and
flash-attn are optional (mamba-ssm, when importable, adds its SSD as a second baseline).

    python benchmarks/gpu_suite.py --out suite_out            # on one GPU (budget: 8 minutes)
    python benchmarks/gpu_suite.py --dry-run                  # any machine: import everything, list rows
    python benchmarks/gpu_suite.py --smoke --device cpu       # every row at toy sizes (tests the code)

Rows (ours | baseline):
  train_mvar_d16 / train_var_d16   compiled blocks + Triton SSD + flex | eager, torch reference ops
                                   (img/s, MFU against the device's stated bf16 peak, peak GiB; B=32 bf16)
  max_depth_mvar                   largest M-VAR depth training one step with activation checkpointing | without
  ssd_fwd_bwd                      Triton SSD fwd+bwd ms per d16 layer | torch chunked reference (and mamba-ssm)
  attn_intra_fwd_bwd               flex block-diagonal fwd+bwd ms per d16 layer | per-scale SDPA loop; dense no-mask SDPA
  sample_mvar_d30 / sample_var_d30 incremental sampler img/s (cfg 1.5, top-k 900, top-p 0.96, decode) | recompute
  tokenizer_encode                 fast encode img/s (TF32) | fp32-exact, with per-scale id agreement
  profile_d16                      top-15 ops (self device time) of one M-VAR-d16 step, ours | baseline
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from mvar_dist.config import load_config
from mvar_dist.model import MVAR
from mvar_dist.ops import attention as attn_ops
from mvar_dist.ops.ssd import ssd_chunked
from mvar_dist.precision import set_tf32, tf32_disabled
from mvar_dist.vqvae import MultiScaleVQVAE
from mvar_dist.train.metrics import device_peak_flops

BUDGET_S = 8 * 60


@dataclass
class Sizes:
    """Shapes of one suite run: `gpu` is the real suite, `smoke` toy sizes for a CPU check of the code."""
    mvar: str = "mvar_d16"           # training preset, M-VAR
    var: str = "var_d16"             # training preset, VAR
    batch: int = 32                  # training images per step
    depths: tuple = (30, 24, 20)     # max_depth_mvar candidates, largest first
    sample_mvar: str = "mvar_d30"    # sampling presets
    sample_var: str = "var_d30"
    sample_batch: int = 32
    ssd: tuple = (32, 680, 32, 64, 64)   # (B, L, H, P, N) of one d16 Mamba2 layer
    attn: tuple = (32, 16, 64)           # (B, heads, head_dim) of one d16 attention layer
    encode_batch: int = 64
    iters: int = 5                   # timed repeats per measurement (after one warm-up)
    compile_backend: str = "inductor"  # torch.compile backend of the compiled blocks


SMOKE = Sizes(mvar="mvar_tiny", var="var_tiny", batch=2, depths=(3, 2), sample_mvar="mvar_tiny",
              sample_var="var_tiny", sample_batch=2, ssd=(1, 40, 2, 8, 8), attn=(1, 2, 8), encode_batch=2, iters=1,
              compile_backend="aot_eager")  # inductor's CPU compile alone takes minutes on a busy box


@dataclass
class Row:
    name: str
    ours: str            # what "ours" measures
    baseline: str        # what it is measured against, in the same run
    fn: Callable
    result: Dict = field(default_factory=dict)


@contextlib.contextmanager
def reference_ops():
    """The baseline path: torch reference SSD and dense-mask SDPA attention."""
    prev = os.environ.get("MVAR_SSD_IMPL")
    os.environ["MVAR_SSD_IMPL"] = "ref"
    attn_ops.set_backend("sdpa-mask")
    try:
        yield
    finally:
        attn_ops.set_backend(None)
        if prev is None:
            os.environ.pop("MVAR_SSD_IMPL", None)
        else:
            os.environ["MVAR_SSD_IMPL"] = prev


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed_ms(fn, dev, iters) -> float:
    fn()  # warm-up: compilation, autotuning, allocator
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / iters * 1e3


def _peak_gib(dev) -> float:
    return torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")


def _model(preset, dev, **overrides):
    cfg = load_config(preset, [f"model.{k}={v}" for k, v in overrides.items()])
    return MVAR.from_config(cfg).to(dev), cfg


def _train_step_fn(model, batch, dev, dtype):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, model.num_classes, (batch,), generator=g).to(dev)
    x = torch.randn(batch, model.L - model.first_l, model.z_channels, generator=g).to(dev)
    tgt = torch.randint(0, model.vocab_size, (batch, model.L), generator=g).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
    model.train()

    def step():
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(labels, x).flatten(0, 1).float(), tgt.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _train_once(preset, sz, dev, dtype, compiled: bool) -> Dict:
    model, _ = _model(preset, dev, drop_path_rate=0)
    if compiled:
        model.compile_blocks(backend=sz.compile_backend)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    ms = timed_ms(_train_step_fn(model, sz.batch, dev, dtype), dev, sz.iters)
    img_s = sz.batch / ms * 1e3
    peak = device_peak_flops(dev, "bf16" if dtype != torch.float32 else "fp32")
    mfu = img_s * model.flops_per_image(train=True) / peak if peak else float("nan")
    out = {"img_s": img_s, "mfu": mfu, "peak_gib": _peak_gib(dev)}
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def row_train(preset):
    def run(sz, dev, dtype):
        ours = _train_once(getattr(sz, preset), sz, dev, dtype, compiled=True)
        with reference_ops():
            base = _train_once(getattr(sz, preset), sz, dev, dtype, compiled=False)
        return {"ours": ours, "baseline": base, "speedup": ours["img_s"] / base["img_s"]}
    return run


def _trains(preset, depth, sz, dev, dtype, checkpoint: bool) -> bool:
    model = None
    try:
        model, _ = _model(preset, dev, depth=depth, act_checkpoint=str(checkpoint).lower(), drop_path_rate=0)
        _train_step_fn(model, sz.batch, dev, dtype)()
        _sync(dev)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def row_max_depth(sz, dev, dtype):
    def largest(checkpoint):
        return next((d for d in sz.depths if _trains(sz.mvar, d, sz, dev, dtype, checkpoint)), None)
    return {"ours": {"depth": largest(True)}, "baseline": {"depth": largest(False)}, "batch": sz.batch}


def row_ssd(sz, dev, dtype):
    from mvar_dist.ops.ssd import _mamba_fn, _triton_available

    b, l, h, p, n = sz.ssd
    g = torch.Generator().manual_seed(0)
    x, B, C = (torch.randn(*s, generator=g).to(dev, dtype) for s in ((b, l, h, p), (b, l, n), (b, l, n)))
    dt = F.softplus(torch.randn(b, l, h, generator=g) - 1).to(dev, dtype)
    A, D = -torch.rand(h, generator=g).add(0.5).to(dev), torch.randn(h, generator=g).to(dev)
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C, D)]

    def fwd_bwd(fn):
        def go():
            y = fn(*leaves)
            torch.autograd.grad(y.float().square().sum(), leaves)
        return go
    out = {"baseline": {"torch_ref_ms": timed_ms(fwd_bwd(lambda *a: ssd_chunked(*a, chunk_size=64)), dev, sz.iters)}}
    if _triton_available() and (dev.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"):
        from mvar_dist.ops.triton_ssd import ssd_triton
        out["ours"] = {"triton_ms": timed_ms(fwd_bwd(lambda *a: ssd_triton(*a, chunk_size=256)), dev, sz.iters)}
    else:
        out["ours"] = {"triton_ms": None, "note": "Triton kernels need CUDA"}
    mamba = _mamba_fn()
    if mamba is not None and dev.type == "cuda":
        out["baseline"]["mamba_ssm_ms"] = timed_ms(fwd_bwd(lambda x_, dt_, A_, B_, C_, D_: mamba(
            x_, dt_, A_, B_.unsqueeze(2), C_.unsqueeze(2), 256, D=D_)), dev, sz.iters)
    return out


def row_attention(sz, dev, dtype):
    b, h, d = sz.attn
    pns = load_config(sz.mvar).tokenizer.patch_nums
    L = attn_ops.scale_bounds(pns)[-1]
    g = torch.Generator().manual_seed(0)
    qkv = [torch.randn(b, h, L, d, generator=g).to(dev, dtype).requires_grad_() for _ in range(3)]
    bounds = attn_ops.scale_bounds(pns)

    def fwd_bwd(fn):
        def go():
            torch.autograd.grad(fn(*qkv).float().square().sum(), qkv)
        return go

    def per_scale(q, k, v):
        return torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e])
                          for s, e in zip(bounds[:-1], bounds[1:])], dim=2)
    path = attn_ops.select_path(dev, dtype, "intra")
    ours = timed_ms(fwd_bwd(lambda q, k, v: attn_ops.scale_attention(q, k, v, pns, "intra", d ** -0.5)),
                    dev, sz.iters)
    return {"ours": {"path": path, "ms": ours, "tile": attn_ops.flex_tile(tuple(pns), "intra")},
            "baseline": {"per_scale_sdpa_ms": timed_ms(fwd_bwd(per_scale), dev, sz.iters),
                         "dense_no_mask_ms": timed_ms(fwd_bwd(F.scaled_dot_product_attention), dev, sz.iters)}}


def row_sample(preset):
    def run(sz, dev, dtype):
        model, cfg = _model(getattr(sz, preset), dev)
        model.eval()
        vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0).to(dev).eval()
        labels = torch.arange(sz.sample_batch, device=dev) % model.num_classes

        def go(incremental):
            def s():
                with torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
                    model.sample(vae, labels, cfg_scale=1.5, top_k=900, top_p=0.96, seed=0, incremental=incremental)
            return sz.sample_batch / timed_ms(s, dev, 1) * 1e3
        return {"ours": {"img_s": go(True)}, "baseline": {"recompute_img_s": go(False)}}
    return run


def row_encode(sz, dev, dtype):
    cfg = load_config(sz.mvar)
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0).to(dev).eval()
    res = cfg.tokenizer.patch_nums[-1] * 16
    imgs = torch.rand(sz.encode_batch, 3, res, res, generator=torch.Generator().manual_seed(0)).to(dev) * 2 - 1
    ids = {}

    def encode(mode):
        def go():
            with torch.inference_mode():
                ids[mode] = vae.img_to_ids(imgs)
        return go
    with tf32_disabled():
        exact = sz.encode_batch / timed_ms(encode("exact"), dev, sz.iters) * 1e3
    set_tf32(True)
    try:
        fast = sz.encode_batch / timed_ms(encode("fast"), dev, sz.iters) * 1e3
    finally:
        set_tf32(False)
    agree = [float((a == b).float().mean()) for a, b in zip(ids["fast"], ids["exact"])]
    return {"ours": {"img_s": fast, "id_agreement_per_scale": agree}, "baseline": {"fp32_exact_img_s": exact}}


def _top_ops(step, dev, k=15) -> List[Dict]:
    from torch.profiler import ProfilerActivity, profile

    step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
        _sync(dev)
    attr = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, attr), reverse=True)[:k]
    return [{"op": e.key, "self_ms": getattr(e, attr) / 1e3, "calls": e.count} for e in events]


def row_profile(sz, dev, dtype):
    model, _ = _model(sz.mvar, dev, drop_path_rate=0)
    model.compile_blocks(backend=sz.compile_backend)
    ours = _top_ops(_train_step_fn(model, sz.batch, dev, dtype), dev)
    del model
    with reference_ops():
        model, _ = _model(sz.mvar, dev, drop_path_rate=0)
        base = _top_ops(_train_step_fn(model, sz.batch, dev, dtype), dev)
    return {"ours": {"top_ops": ours}, "baseline": {"top_ops": base}}


def floor_api_missing() -> List[str]:
    """Entries of tests/helpers/torch_api_floor.txt (the torch APIs the library uses) absent from this torch:
    on the GPU machine's torch 2.11 this checks the setup.py floor for real."""
    manifest = Path(__file__).resolve().parent.parent / "tests" / "helpers" / "torch_api_floor.txt"
    if not manifest.is_file():
        return []
    sys.path.insert(0, str(manifest.parent))
    from torch_api_scan import resolves

    names = [ln.split("#")[0].strip() for ln in manifest.read_text().splitlines()]
    return [n for n in names if n and not resolves(n)]


def import_everything() -> Dict[str, str]:
    """Import every module a row may use (the dry run's check); optional packages report their absence."""
    import importlib

    required = ["torch.profiler", "torch.nn.attention.flex_attention", "triton", "mvar_dist.ops.triton_ssd",
                "mvar_dist.ops.triton_ssd_bwd", "mvar_dist.model.sampler"]
    for name in required:
        importlib.import_module(name)
    found = {name: "ok" for name in required}
    found["torch APIs missing vs tests/helpers/torch_api_floor.txt"] = ", ".join(floor_api_missing()) or "none"
    for name in ("mamba_ssm", "flash_attn", "deepspeed"):  # baselines / extras only, never needed
        try:
            importlib.import_module(name)
            found[name] = "ok"
        except Exception as e:  # noqa: BLE001 - a broken optional install counts as absent
            found[name] = f"absent ({type(e).__name__})"
    return found


def rows() -> List[Row]:
    fast, ref = "compiled blocks, Triton SSD, flex attention", "eager, torch reference SSD, dense-mask SDPA"
    return [
        Row("train_mvar_d16", fast, ref, row_train("mvar")),
        Row("train_var_d16", fast, ref, row_train("var")),
        Row("max_depth_mvar", "activation checkpointing", "no checkpointing", row_max_depth),
        Row("ssd_fwd_bwd", "Triton SSD (chunk 256)", "torch chunked reference; mamba-ssm if installed", row_ssd),
        Row("attn_intra_fwd_bwd", "scale_attention (flex on CUDA)", "per-scale SDPA loop; dense no-mask SDPA",
            row_attention),
        Row("sample_mvar_d30", "incremental sampler", "recompute sampler", row_sample("sample_mvar")),
        Row("sample_var_d30", "incremental sampler (KV cache)", "recompute sampler", row_sample("sample_var")),
        Row("tokenizer_encode", "TF32 encode", "fp32-exact encode", row_encode),
        Row("profile_d16", "top-15 ops, ours", "top-15 ops, baseline", row_profile),
    ]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items() if k != "top_ops")
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def markdown(meta: Dict, table: List[Row]) -> str:
    lines = [f"GPU suite on {meta['device']} (torch {meta['torch']}, {meta['mode']}, {meta['wall_s']:.0f} s)", "",
             "| row | ours | baseline (same run) | ours: result | baseline: result |", "|---|---|---|---|---|"]
    for r in table:
        res = r.result
        if "status" in res:
            lines.append(f"| {r.name} | {r.ours} | {r.baseline} | {res['status']} | |")
        else:
            lines.append(f"| {r.name} | {r.ours} | {r.baseline} | {_fmt(res.get('ours'))} | {_fmt(res.get('baseline'))} |")
    for r in table:  # the profile tables
        if "top_ops" in r.result.get("ours", {}):
            for side in ("ours", "baseline"):
                lines += ["", f"{r.name}, {side}:", "", "| op | self ms | calls |", "|---|---:|---:|"]
                lines += [f"| `{o['op']}` | {o['self_ms']:.2f} | {o['calls']} |" for o in r.result[side]["top_ops"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_suite_out", help="folder for suite.json and suite.md")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dry-run", action="store_true", help="import everything, list the rows, run nothing")
    ap.add_argument("--smoke", action="store_true", help="toy sizes (a CPU check of the code, not a benchmark)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these rows")
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    sz = SMOKE if a.smoke else Sizes()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    table = [r for r in rows() if a.only is None or r.name in a.only]
    t0 = time.perf_counter()
    imports = import_everything()
    print("imports: " + ", ".join(f"{k} {v}" for k, v in imports.items()))
    for r in table:
        print(f"{r.name:20s} ours: {r.ours} | baseline: {r.baseline}", flush=True)
        if a.dry_run:
            r.result = {"status": "dry run"}
        elif time.perf_counter() - t0 > BUDGET_S:
            r.result = {"status": f"skipped: past the {BUDGET_S} s budget"}
        else:
            set_tf32(dev.type == "cuda")  # the training policy (mvar_dist.precision)
            try:
                r.result = r.fn(sz, dev, dtype)
            except Exception as e:  # noqa: BLE001 - one failing row must not lose the others
                r.result = {"status": f"failed: {type(e).__name__}: {str(e)[:300]}"}
            r.result["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"    -> {_fmt(r.result)}", flush=True)
    meta = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu", "torch": torch.__version__,
            "python": sys.version.split()[0], "mode": "dry-run" if a.dry_run else ("smoke" if a.smoke else "full"),
            "sizes": asdict(sz), "imports": imports, "wall_s": time.perf_counter() - t0}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "rows": [{"name": r.name, "compares": {"ours": r.ours, "baseline": r.baseline}, **r.result}
                                  for r in table]}
    (out / "suite.json").write_text(json.dumps(doc, indent=1, default=str))
    (out / "suite.md").write_text(markdown(meta, table))
    print(f"wrote {out / 'suite.json'} and {out / 'suite.md'}")
    return 0 if a.dry_run or all("failed" not in str(r.result.get("status", "")) for r in table) else 1


if __name__ == "__main__":
    sys.exit(main())
