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
    def _operand(v, DOT_DTYPE: tl.constexpr, ROUND_BF16: tl.constexpr):
        """A dot operand in the dot dtype. ROUND_BF16 (interpreter only) rounds it through bf16 and
        keeps fp32: the operand rounding of a bf16 tensor-core dot, which the interpreter cannot run."""
        if ROUND_BF16:
            v = v.to(tl.bfloat16)
        return v.to(DOT_DTYPE)

    @triton.jit
    def _chunk_state(u_ptr, v_ptr, w_ptr, st_ptr,
                     L, H, P, N, NC, Q, LP,
                     su_b, su_l, su_h, su_p, sv_b, sv_l, sv_n,
                     BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr,
                     DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, ROUND_BF16: tl.constexpr):
        """st[b, c, h] = sum_{t in chunk c} w[b, h, t] u[b, t, h] v[b, t]^T  (P x N, fp32).
        Forward: u = x, v = B, w = dt exp(acs_last - acs) (each chunk's own end state).
        Backward: u = dy, v = C, w = exp(acs) (the gradient reaching the state entering the chunk)."""
        c, bh, pid, bi, h, n_pb = _program_coords(H, P, BLOCK_P)
        offs_p = (pid % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_n = (pid // n_pb) * BLOCK_N + tl.arange(0, BLOCK_N)
        t0 = c * Q
        t_end = tl.minimum(t0 + Q, L)
        acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for j0 in range(t0, t_end, BLOCK_Q):
            offs_t = j0 + tl.arange(0, BLOCK_Q)
            mt = offs_t < t_end
            uT = tl.load(u_ptr + bi * su_b + h * su_h + offs_t[None, :] * su_l + offs_p[:, None] * su_p,
                         mask=(offs_p[:, None] < P) & mt[None, :], other=0.0).to(tl.float32)
            w = tl.load(w_ptr + bh * LP + offs_t, mask=mt, other=0.0)
            uT = _operand(uT * w[None, :], DOT_DTYPE, ROUND_BF16)
            vm = tl.load(v_ptr + bi * sv_b + offs_t[:, None] * sv_l + offs_n[None, :] * sv_n,
                         mask=mt[:, None] & (offs_n[None, :] < N), other=0.0)
            acc += tl.dot(uT, _operand(vm, DOT_DTYPE, ROUND_BF16), input_precision=PREC)
        base = ((bi * NC + c) * H + h) * P * N
        tl.store(st_ptr + base + offs_p[:, None] * N + offs_n[None, :], acc,
                 mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))

    @triton.jit
    def _state_pass(st_ptr, acs_ptr, init_ptr, final_ptr, H, PN, NC, Q, LP,
                    HAS_INIT: tl.constexpr, BLOCK: tl.constexpr, REVERSE: tl.constexpr):
        """Forward: s = init; per chunk c in order, st[c] <- s (the state entering c), s = decay_c s + own_c.
        REVERSE (backward): s = dfinal; per chunk from the last, st[c] <- s (the gradient of chunk c's own
        state), s = decay_c s + local_c; the last s is the initial state's gradient."""
        bh = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = offs < PN
        bi = bh // H
        h = bh % H
        if HAS_INIT:
            s = tl.load(init_ptr + bh * PN + offs, mask=m, other=0.0).to(tl.float32)
        else:
            s = tl.zeros((BLOCK,), dtype=tl.float32)
        for k in range(NC):
            if REVERSE:
                c = NC - 1 - k
            else:
                c = k
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
                    DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, STATE_PREC: tl.constexpr,
                    ROUND_BF16: tl.constexpr):
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
        cmd = _operand(cm, DOT_DTYPE, ROUND_BF16)
        for j0 in range(t0, i_hi, BLOCK_K):
            offs_j = j0 + tl.arange(0, BLOCK_K)
            mj = offs_j < i_hi
            bT = tl.load(b_ptr + bi * sb_b + offs_j[None, :] * sb_l + offs_n[:, None] * sb_n,
                         mask=mj[None, :] & mn[:, None], other=0.0)
            bT = _operand(bT, DOT_DTYPE, ROUND_BF16)
            cb = tl.dot(cmd, bT, input_precision=PREC)
            dt_j = tl.load(dt_ptr + bh * LP + offs_j, mask=mj, other=0.0)
            acs_j = tl.load(acs_ptr + bh * LP + offs_j, mask=mj, other=0.0)
            causal = (offs_j[None, :] <= offs_i[:, None]) & mj[None, :] & mi[:, None]
            # mask before exp: above the diagonal acs_i - acs_j > 0 and could overflow
            decay = tl.exp(tl.where(causal, acs_i[:, None] - acs_j[None, :], float("-inf")))
            w = _operand(cb * decay * dt_j[None, :], DOT_DTYPE, ROUND_BF16)
            xj = tl.load(x_ptr + bi * sx_b + h * sx_h + offs_j[:, None] * sx_l + offs_p[None, :] * sx_p,
                         mask=mj[:, None] & mp[None, :], other=0.0)
            xj = _operand(xj, DOT_DTYPE, ROUND_BF16)
            acc += tl.dot(w, xj, input_precision=PREC)

        if HAS_D:
            xi = tl.load(x_ptr + bi * sx_b + h * sx_h + offs_i[:, None] * sx_l + offs_p[None, :] * sx_p,
                         mask=mi[:, None] & mp[None, :], other=0.0).to(tl.float32)
            acc += tl.load(d_ptr + h).to(tl.float32) * xi
        tl.store(y_ptr + bi * sy_b + h * sy_h + offs_i[:, None] * sy_l + offs_p[None, :] * sy_p,
                 acc.to(y_ptr.dtype.element_ty), mask=mi[:, None] & mp[None, :])


def _dot_dtype(dtype: torch.dtype):
    """(dot operand dtype, round operands through bf16). Triton's CPU interpreter returns garbage for
    bf16 tl.dot operands (fp16 is fine), so there the dots run in fp32 on operands rounded to bf16:
    the same operand rounding as a tensor-core bf16 dot with fp32 accumulation."""
    if dtype == torch.bfloat16 and _interpreting():
        return tl.float32, True
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(dtype, tl.float32), False


def _precisions(dtype: torch.dtype) -> tuple[str, str]:
    """(input_precision of dots between inputs, of dots with an fp32 state) for `dtype` inputs.
    fp32 inputs use IEEE dots unless the TF32 policy (`mvar_dist.precision`) allows TF32 matmuls."""
    from mvar_dist.precision import tf32_enabled

    prec = "tf32" if (dtype == torch.float32 and tf32_enabled()) else "ieee"
    # the fp32 state meets half-precision operands: TF32 is already finer than those inputs
    state_prec = "ieee" if dtype in (torch.float32, torch.float64) and prec == "ieee" else "tf32"
    return prec, state_prec


def _pow2(v: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(v))


class Layout:
    """Sizes and the fp32 (B, H, Lp) dt / chunk-local cumsum of dt*A shared by forward and backward.
    Padding with dt = 0 is exact: decay 1, no input, so states and outputs are unchanged."""

    def __init__(self, x_BLHP, dt_BLH, A_H, B_BLN, chunk_size: int):
        self.b, self.l, self.h, self.p = x_BLHP.shape
        self.n = B_BLN.shape[-1]
        if self.n > 256:
            raise ValueError(f"ssd_triton: d_state N={self.n} > 256 is not supported by the Triton kernels")
        if x_BLHP.device.type != "cuda" and not _interpreting():
            raise RuntimeError("ssd_triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tests)")
        self.q = int(chunk_size)
        self.nc = max(1, -(-self.l // self.q))
        self.lp = self.nc * self.q
        b, h, nc, q = self.b, self.h, self.nc, self.q
        self.dt_BHL = torch.nn.functional.pad(dt_BLH.float().transpose(1, 2), (0, self.lp - self.l)).contiguous()
        acs = torch.cumsum((self.dt_BHL * A_H.float()[None, :, None]).view(b, h, nc, q), dim=-1)
        self.acs_BHL = acs.view(b, h, self.lp).contiguous()
        self.acs_last_BHc = acs[..., -1]
        self.dot_dtype, self.round_bf16 = _dot_dtype(x_BLHP.dtype)
        self.prec, self.state_prec = _precisions(x_BLHP.dtype)
        self.block_p, self.block_n, self.block_q = min(_pow2(self.p), 64), _pow2(self.n), min(_pow2(q), 64)

    def states(self, u, v, w_BHL):
        """Per-chunk sum_t w_t u_t v_t^T -> (B, NC, H, P, N) fp32 (`_chunk_state`)."""
        out = torch.empty(self.b, self.nc, self.h, self.p, self.n, device=u.device, dtype=torch.float32)
        grid = (self.nc, self.b * self.h, triton.cdiv(self.p, self.block_p) * triton.cdiv(self.n, self.block_n))
        _chunk_state[grid](u, v, w_BHL.contiguous(), out, self.l, self.h, self.p, self.n, self.nc, self.q, self.lp,
                           *u.stride(), *v.stride(), BLOCK_P=self.block_p, BLOCK_N=self.block_n,
                           BLOCK_Q=self.block_q, DOT_DTYPE=self.dot_dtype, PREC=self.prec,
                           ROUND_BF16=self.round_bf16)
        return out

    def state_pass(self, st_BcHPN, init_BHPN, reverse: bool):
        """In place: st[c] <- state entering chunk c (or, reversed, the gradient of chunk c's own state).
        Returns the final state (reversed: the initial state's gradient), fp32 (B, H, P, N)."""
        pn = self.p * self.n
        last = torch.empty(self.b, self.h, self.p, self.n, device=st_BcHPN.device, dtype=torch.float32)
        init = init_BHPN.float().contiguous() if init_BHPN is not None else last
        block = min(1024, triton.next_power_of_2(pn))
        _state_pass[(self.b * self.h, triton.cdiv(pn, block))](
            st_BcHPN, self.acs_BHL, init, last, self.h, pn, self.nc, self.q, self.lp,
            HAS_INIT=init_BHPN is not None, BLOCK=block, REVERSE=reverse)
        return last

    def entering_states(self, x_BLHP, B_BLN, initial_states):
        """(states entering each chunk (B, NC, H, P, N), final state (B, H, P, N)), both fp32."""
        w_BHL = self.dt_BHL * torch.exp(self.acs_last_BHc.repeat_interleave(self.q, dim=-1) - self.acs_BHL)
        st = self.states(x_BLHP, B_BLN, w_BHL)
        return st, self.state_pass(st, initial_states, reverse=False)


def ssd_triton_forward(x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H=None, initial_states=None, chunk_size=64):
    """Forward only (no autograd). Returns (y_BLHP in x's dtype, final_state_BHPN float32).
    The kernels are stride-aware: slices of a fused projection need no copy."""
    lay = Layout(x_BLHP, dt_BLH, A_H, B_BLN, chunk_size)
    x, Bm, Cm = x_BLHP, B_BLN, C_BLN
    enter, final = lay.entering_states(x, Bm, initial_states)
    y = torch.empty(lay.b, lay.l, lay.h, lay.p, device=x.device, dtype=x.dtype)
    d = D_H.contiguous() if D_H is not None else final
    grid = (lay.nc, lay.b * lay.h, triton.cdiv(lay.q, lay.block_q) * triton.cdiv(lay.p, lay.block_p))
    _chunk_scan[grid](x, Bm, Cm, lay.dt_BHL, lay.acs_BHL, enter, d, y, lay.l, lay.h, lay.p, lay.n, lay.nc,
                      lay.q, lay.lp, *x.stride(), *Bm.stride(), *Cm.stride(), *y.stride(),
                      HAS_D=D_H is not None, BLOCK_Q=lay.block_q, BLOCK_K=lay.block_q, BLOCK_P=lay.block_p,
                      BLOCK_N=lay.block_n, DOT_DTYPE=lay.dot_dtype, PREC=lay.prec, STATE_PREC=lay.state_prec,
                      ROUND_BF16=lay.round_bf16)
    return y, final


class _SSDTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, s0, chunk_size):
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(x, dt, A, B, C, D, s0)
        return ssd_triton_forward(x, dt, A, B, C, D, s0, chunk_size)

    @staticmethod
    def backward(ctx, gy, gs):
        # the chunk states are recomputed (two cheap kernels) instead of kept alive since the forward
        from mvar_dist.ops.triton_ssd_bwd import ssd_triton_backward

        x, dt, A, B, C, D, s0 = ctx.saved_tensors
        grads = ssd_triton_backward(gy, gs, x, dt, A, B, C, D, s0, ctx.chunk_size)
        return (*[g if need else None for g, need in zip(grads, ctx.needs_input_grad[:7])], None)


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
