"""Run under TRITON_INTERPRET=1 (set before triton is imported, hence a script of its own): our Triton
SSD forward and backward against the float64 recurrence. Prints one JSON line of max relative errors.

    python tests/helpers/ssd_interpret_check.py small    # tiny + partial-chunk shapes, fp32 and emulated bf16
    python tests/helpers/ssd_interpret_check.py d16      # the d16 Mamba shape: L=680, P=N=64, chunks 64 and 256
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))  # test_ssd's input helpers
from test_ssd import fused_views, make_inputs, rel_err  # noqa: E402

from mvar_dist.ops.ssd import ssd_scan, ssd_sequential  # noqa: E402
from mvar_dist.ops.triton_ssd import ssd_triton  # noqa: E402

NAMES = ("x", "dt", "A", "B", "C", "D", "s0")


def errors(inputs, chunk, with_views=True):
    """Max relative error of y, final state and every gradient vs the float64 recurrence on the same
    (already rounded) inputs. The loss weights y and the state by fixed random tensors."""
    args = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    ref = [t.detach().double().requires_grad_() if t is not None else None for t in inputs]
    x, dt, A, B, C, D, s0 = args
    xv, Bv, Cv = fused_views(x, B, C) if with_views else (x, B, C)  # strided, as Mamba2 passes them
    y, s = ssd_triton(xv, dt, A, Bv, Cv, D, s0, return_final_states=True, chunk_size=chunk)
    y_ref, s_ref = ssd_sequential(*ref, return_final_states=True)
    g = torch.Generator().manual_seed(1)
    wy, ws = torch.randn(y.shape, generator=g, dtype=torch.float64), torch.randn(s.shape, generator=g, dtype=torch.float64)
    live = [i for i, t in enumerate(args) if t is not None]
    grads = torch.autograd.grad((y.double() * wy).sum() + (s.double() * ws).sum(), [args[i] for i in live])
    grads_ref = torch.autograd.grad((y_ref * wy).sum() + (s_ref * ws).sum(), [ref[i] for i in live])
    out = {"y": rel_err(y, y_ref), "state": rel_err(s, s_ref)}
    out.update({"d" + NAMES[i]: rel_err(a, b) for i, a, b in zip(live, grads, grads_ref)})
    assert y.dtype == x.dtype and s.dtype == torch.float32
    assert all(a.dtype == args[i].dtype for i, a in zip(live, grads))
    return out


def worst(results):
    return {k: max(r[k] for r in results if k in r) for k in set().union(*results)}


def small():
    fp32 = []
    # (L, P, N, chunk): partial last chunk; non-power-of-2 chunk; chunk spanning two row blocks
    for l, p, n, q in ((21, 4, 8, 16), (30, 5, 3, 24), (90, 4, 4, 80)):
        ins = make_inputs(b=1, l=l, h=2, p=p, n=n, dtype=torch.float32)
        fp32.append(errors(ins, q))
        if q == 16:
            fp32.append(errors(ins[:5] + [None, None], q, with_views=False))  # no D, no initial state
    # bf16 inputs: the interpreter rounds every dot operand to bf16 (what tensor cores see) and
    # accumulates in fp32; the reference is float64 math on the same bf16 inputs
    ins = make_inputs(b=2, l=40, h=2, p=8, n=8, dtype=torch.float32)
    bf16 = errors([t.bfloat16() for t in ins[:6]] + [ins[6]], 16)
    # the dispatcher forced onto the kernels (bf16 out, fp32 state)
    os.environ["MVAR_SSD_IMPL"] = "triton"
    y16, s16 = ssd_scan(*[t.bfloat16() for t in ins[:6]], ins[6], return_final_states=True, chunk_size=16)
    assert y16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    return {"fp32": worst(fp32), "bf16": bf16}


def d16():
    out = {}
    for q in (64, 256):  # 64: our reference's chunk; 256: the model's (mamba-ssm's) chunk
        ins = make_inputs(b=1, l=680, h=2, p=64, n=64, dtype=torch.float32)
        out[f"fp32_q{q}"] = errors(ins, q)
    ins = make_inputs(b=1, l=680, h=2, p=64, n=64, dtype=torch.float32)
    out["bf16_q256"] = errors([t.bfloat16() for t in ins[:6]] + [ins[6]], 256)
    return out


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    print("RESULT " + json.dumps({"small": small, "d16": d16}[sys.argv[1]]()))
