"""Triton kernels for the chunked SSD scan (forward), with the backward recomputed through the torch
reference (`ssd_chunked`) under autograd.

Forward, for chunks of Q tokens (a_t = dt_t * A_h, acs = cumsum of a within the chunk, fp32):
  1. `_chunk_state`: each chunk's own end state  S_c = sum_j exp(acs_last - acs_j) dt_j x_j B_j^T
  2. `_state_pass`:  sequential over chunks, S_in_{c+1} = exp(acs_last_c) S_in_c + S_c  (in place);
                     also writes the final state
  3. `_chunk_scan`:  y_i = exp(acs_i) C_i S_in + sum_{j<=i in chunk} (C_i.B_j) exp(acs_i-acs_j) dt_j x_j
                     + D x_i
All accumulation is fp32; matmul operands take the input dtype (bf16/fp16 tensor cores), fp32 inputs
use IEEE fp32 dots unless torch allows TF32 matmuls. Runs on CUDA, or on CPU under TRITON_INTERPRET=1
(for tests only: that interpreter is slow).
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # optional dependency: `available()` reports it
    triton = None
    tl = None


def available() -> bool:
    """True when triton imports (kernels need CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    return triton is not None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:

    @triton.jit
    def _program_coords(H, P, BLOCK_P: tl.constexpr):
        """The (chunk, batch*head, tile) grid of _chunk_state/_chunk_scan: returns (chunk c, flat bh,
        tile id, batch bi, head h, number of P blocks)."""
        bh = tl.program_id(1)
        return tl.program_id(0), bh, tl.program_id(2), bh // H, bh % H, tl.cdiv(P, BLOCK_P)

    @triton.jit
    def _chunk_state(x_ptr, b_ptr, dt_ptr, acs_ptr, st_ptr,
                     L, H, P, N, NC, Q, LP,
                     sx_b, sx_l, sx_h, sx_p, sb_b, sb_l, sb_n,
                     BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr,
                     DOT_DTYPE: tl.constexpr, PREC: tl.constexpr):
        c, bh, pid, bi, h, n_pb = _program_coords(H, P, BLOCK_P)
        offs_p = (pid % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_n = (pid // n_pb) * BLOCK_N + tl.arange(0, BLOCK_N)
        t0 = c * Q
        t_end = tl.minimum(t0 + Q, L)
        a_last = tl.load(acs_ptr + bh * LP + t0 + Q - 1)
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for j0 in range(t0, t_end, BLOCK_Q):
            offs_t = j0 + tl.arange(0, BLOCK_Q)
            mt = offs_t < t_end
            xT = tl.load(x_ptr + bi * sx_b + h * sx_h + offs_t[None, :] * sx_l + offs_p[:, None] * sx_p,
                         mask=(offs_p[:, None] < P) & mt[None, :], other=0.0).to(tl.float32)
            dt = tl.load(dt_ptr + bh * LP + offs_t, mask=mt, other=0.0)
            acs = tl.load(acs_ptr + bh * LP + offs_t, mask=mt, other=0.0)
            xT = (xT * (dt * tl.exp(a_last - acs))[None, :]).to(DOT_DTYPE)
            bm = tl.load(b_ptr + bi * sb_b + offs_t[:, None] * sb_l + offs_n[None, :] * sb_n,
                         mask=mt[:, None] & (offs_n[None, :] < N), other=0.0).to(DOT_DTYPE)
            acc += tl.dot(xT, bm, input_precision=PREC)
        base = ((bi * NC + c) * H + h) * P * N
        tl.store(st_ptr + base + offs_p[:, None] * N + offs_n[None, :], acc,
                 mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))

    @triton.jit
    def _state_pass(st_ptr, acs_ptr, init_ptr, final_ptr, H, PN, NC, Q, LP,
                    HAS_INIT: tl.constexpr, BLOCK: tl.constexpr):
        bh = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < PN
        bi = bh // H
        h = bh % H
        if HAS_INIT:
            s = tl.load(init_ptr + bh * PN + offs, mask=m, other=0.0).to(tl.float32)
        else:
            s = tl.zeros((BLOCK,), dtype=tl.float32)
        for c in range(NC):
            base = ((bi * NC + c) * H + h) * PN
            own = tl.load(st_ptr + base + offs, mask=m, other=0.0)
            # the buffer is reused: chunk c's own state is replaced by the state entering chunk c
            tl.store(st_ptr + base + offs, s, mask=m)
            s = tl.exp(tl.load(acs_ptr + bh * LP + c * Q + Q - 1)) * s + own
        tl.store(final_ptr + bh * PN + offs, s, mask=m)

    @triton.jit
    def _chunk_scan(x_ptr, b_ptr, c_ptr, dt_ptr, acs_ptr, enter_ptr, d_ptr, y_ptr,
                    L, H, P, N, NC, Q, LP,
                    sx_b, sx_l, sx_h, sx_p, sb_b, sb_l, sb_n, sc_b, sc_l, sc_n, sy_b, sy_l, sy_h, sy_p,
                    HAS_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, STATE_PREC: tl.constexpr):
        c, bh, pid, bi, h, n_pb = _program_coords(H, P, BLOCK_P)
        qb = pid // n_pb
        offs_p = (pid % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_n = tl.arange(0, BLOCK_N)
        mp = offs_p < P
        mn = offs_n < N
        t0 = c * Q
        t_end = tl.minimum(t0 + Q, L)
        offs_i = t0 + qb * BLOCK_Q + tl.arange(0, BLOCK_Q)
        mi = offs_i < t_end
        acs_i = tl.load(acs_ptr + bh * LP + offs_i, mask=mi, other=0.0)
        cm = tl.load(c_ptr + bi * sc_b + offs_i[:, None] * sc_l + offs_n[None, :] * sc_n,
                     mask=mi[:, None] & mn[None, :], other=0.0)

        # contribution of the state entering the chunk (fp32 state, so an fp32 dot)
        sT = tl.load(enter_ptr + ((bi * NC + c) * H + h) * P * N + offs_p[None, :] * N + offs_n[:, None],
                     mask=mp[None, :] & mn[:, None], other=0.0)
        acc = tl.dot(cm.to(tl.float32), sT, input_precision=STATE_PREC) * tl.exp(acs_i)[:, None]

        # causal part inside the chunk: only key blocks that start at or before this row block's end
        i_hi = tl.minimum(t0 + (qb + 1) * BLOCK_Q, t_end)
        cmd = cm.to(DOT_DTYPE)
        for j0 in range(t0, i_hi, BLOCK_K):
            offs_j = j0 + tl.arange(0, BLOCK_K)
            mj = offs_j < i_hi
            bT = tl.load(b_ptr + bi * sb_b + offs_j[None, :] * sb_l + offs_n[:, None] * sb_n,
                         mask=mj[None, :] & mn[:, None], other=0.0).to(DOT_DTYPE)
            cb = tl.dot(cmd, bT, input_precision=PREC)
            dt_j = tl.load(dt_ptr + bh * LP + offs_j, mask=mj, other=0.0)
            acs_j = tl.load(acs_ptr + bh * LP + offs_j, mask=mj, other=0.0)
            causal = (offs_j[None, :] <= offs_i[:, None]) & mj[None, :] & mi[:, None]
            # mask before exp: above the diagonal acs_i - acs_j > 0 and could overflow
            decay = tl.exp(tl.where(causal, acs_i[:, None] - acs_j[None, :], float("-inf")))
            w = (cb * decay * dt_j[None, :]).to(DOT_DTYPE)
            xj = tl.load(x_ptr + bi * sx_b + h * sx_h + offs_j[:, None] * sx_l + offs_p[None, :] * sx_p,
                         mask=mj[:, None] & mp[None, :], other=0.0).to(DOT_DTYPE)
            acc += tl.dot(w, xj, input_precision=PREC)

        if HAS_D:
            xi = tl.load(x_ptr + bi * sx_b + h * sx_h + offs_i[:, None] * sx_l + offs_p[None, :] * sx_p,
                         mask=mi[:, None] & mp[None, :], other=0.0).to(tl.float32)
            acc += tl.load(d_ptr + h).to(tl.float32) * xi
        tl.store(y_ptr + bi * sy_b + h * sy_h + offs_i[:, None] * sy_l + offs_p[None, :] * sy_p,
                 acc.to(y_ptr.dtype.element_ty), mask=mi[:, None] & mp[None, :])


def _dot_dtype(dtype: torch.dtype):
    if dtype == torch.bfloat16 and _interpreting():
        # triton's CPU interpreter returns garbage for bf16 tl.dot operands (fp16 is fine)
        return tl.float32
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(dtype, tl.float32)


def _pow2(v: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(v))


def ssd_triton_forward(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H=None, initial_states=None, chunk_size=64):
    """Forward only (no autograd). Returns (y_BLHP in x's dtype, final_state_BHPN float32)."""
    b, l, h, p = x_BLHP.shape
    n = B_BLN.shape[-1]
    if n > 256:
        raise ValueError(f"ssd_triton: d_state N={n} > 256 is not supported by the Triton kernels")
    if x_BLHP.device.type != "cuda" and not _interpreting():
        raise RuntimeError("ssd_triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
    q = int(chunk_size)
    nc = max(1, -(-l // q))
    lp = nc * q
    # the kernels are stride-aware: slices of a fused projection need no copy
    x, Bm, Cm = x_BLHP, B_BLN, C_BLN
    # dt and its chunk-local cumsum in fp32, laid out (B, H, Lp) and padded with dt = 0 (exact)
    dt_BHL = torch.nn.functional.pad(dt_BLH.float().transpose(1, 2), (0, lp - l)).contiguous()
    acs_BHL = torch.cumsum((dt_BHL * A_H.float()[None, :, None]).view(b, h, nc, q), dim=-1).view(b, h, lp)
    acs_BHL = acs_BHL.contiguous()
    states = torch.empty(b, nc, h, p, n, device=x.device, dtype=torch.float32)
    final = torch.empty(b, h, p, n, device=x.device, dtype=torch.float32)
    y = torch.empty(b, l, h, p, device=x.device, dtype=x.dtype)
    dot_dt = _dot_dtype(x.dtype)
    prec = "tf32" if (x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32) else "ieee"
    # the fp32 state meets half-precision C: TF32 is already finer than those inputs
    state_prec = "ieee" if x.dtype in (torch.float32, torch.float64) and prec == "ieee" else "tf32"
    block_p, block_n, block_q = min(_pow2(p), 64), _pow2(n), min(_pow2(q), 64)
    grid = (nc, b * h, triton.cdiv(p, block_p) * triton.cdiv(n, block_n))
    _chunk_state[grid](x, Bm, dt_BHL, acs_BHL, states, l, h, p, n, nc, q, lp,
                       *x.stride(), *Bm.stride(),
                       BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_Q=block_q, DOT_DTYPE=dot_dt, PREC=prec)
    init = initial_states.float().contiguous() if initial_states is not None else final
    block = min(1024, triton.next_power_of_2(p * n))
    _state_pass[(b * h, triton.cdiv(p * n, block))](states, acs_BHL, init, final, h, p * n, nc, q, lp,
                                                    HAS_INIT=initial_states is not None, BLOCK=block)
    d = D_H.contiguous() if D_H is not None else final
    grid = (nc, b * h, triton.cdiv(q, block_q) * triton.cdiv(p, block_p))
    _chunk_scan[grid](x, Bm, Cm, dt_BHL, acs_BHL, states, d, y, l, h, p, n, nc, q, lp,
                      *x.stride(), *Bm.stride(), *Cm.stride(), *y.stride(),
                      HAS_D=D_H is not None, BLOCK_Q=block_q, BLOCK_K=block_q, BLOCK_P=block_p,
                      BLOCK_N=block_n, DOT_DTYPE=dot_dt, PREC=prec, STATE_PREC=state_prec)
    return y, final


class _SSDTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, s0, chunk_size):
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(x, dt, A, B, C, D, s0)
        return ssd_triton_forward(x, dt, A, B, C, D, s0, chunk_size)

    @staticmethod
    def backward(ctx, gy, gs):
        # Recompute through the differentiable torch reference: exact gradients of the same function
        # without keeping the chunk intermediates alive between forward and backward.
        from mvar_dist.ops.ssd import REF_MAX_CHUNK, ssd_chunked

        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(saved, ctx.needs_input_grad[:7])]
        with torch.enable_grad():
            y, s = ssd_chunked(*inputs, return_final_states=True,
                               chunk_size=min(ctx.chunk_size, REF_MAX_CHUNK))
            wrt = [t for t, need in zip(inputs, ctx.needs_input_grad[:7]) if t is not None and need]
            grads = iter(torch.autograd.grad((y, s), wrt, (gy, gs), allow_unused=True)) if wrt else iter(())
        return (*[next(grads) if t is not None and need else None
                  for t, need in zip(inputs, ctx.needs_input_grad[:7])], None)


def ssd_triton(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H=None, initial_states=None,
               return_final_states=False, chunk_size=64):
    """Same contract as `ssd_scan`, always on the Triton kernels (differentiable)."""
    from mvar_dist.ops.ssd import check_inputs

    if triton is None:
        raise RuntimeError("ssd_triton: triton is not installed")
    check_inputs(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states)
    if chunk_size < 1:
        raise ValueError(f"ssd_scan: chunk_size must be >= 1, got {chunk_size}")
    y, s = _SSDTriton.apply(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states, int(chunk_size))
    return (y, s) if return_final_states else y
