"""Triton backward of the chunked SSD scan (the forward is in `triton_ssd.py`).

Per chunk c of Q tokens, with acs = the chunk-local cumsum of a = dt*A, E_c the state entering chunk
c and G_c the gradient reaching the state *leaving* chunk c (dL/dE_{c+1}):
  1. `_chunk_state` with (u, v, w) = (dy, C, exp(acs)): the chunk's local gradient of E_c;
     `_state_pass` reversed turns it into G_c for every chunk and the initial state's gradient.
     The forward states E_c are recomputed by the same two forward kernels (nothing kept alive).
  2. `_bwd_dx` (rows j of the chunk): dx_j, dB_j (per head), the direct dt_j term and the j-side of
     dL/dacs_j, from the state path (B_j G_c^T) and the causal intra-chunk (Q x Q) path.
  3. `_bwd_dc` (rows i): dC_i (per head) and the i-side of dL/dacs_i, from the entering state
     (dy_i E_c) and the intra-chunk path. This kernel mirrors the forward `_chunk_scan`.
  4. torch, all on (B, H, L)-sized fp32 vectors: the chunk-end term dL/dacs_last += <G_c, E_{c+1}>,
     da = reverse cumsum of dL/dacs inside each chunk, ddt += A da, dA = sum dt da, dD = sum dy.x,
     and the per-head dB/dC partials summed over heads (B and C are shared: ngroups = 1).
Dots between inputs take the input dtype (bf16 tensor cores) with fp32 accumulation; dots with an fp32
state or gradient-of-state are fp32. All P and N of a row block sit in one tile (P <= 256, N <= 256).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mvar_dist.ops.triton_ssd import Layout, _operand, _pow2


@triton.jit
def _bwd_dx(x_ptr, b_ptr, c_ptr, gy_ptr, dt_ptr, acs_ptr, gn_ptr, d_ptr,
            dx_ptr, db_ptr, ddt_ptr, dacs_ptr,
            L, H, P, N, NC, Q, LP,
            sx_b, sx_l, sx_h, sx_p, sb_b, sb_l, sb_n, sc_b, sc_l, sc_n, sg_b, sg_l, sg_h, sg_p,
            HAS_D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
            DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, STATE_PREC: tl.constexpr, ROUND_BF16: tl.constexpr):
    c, bh, jb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bi, h = bh // H, bh % H
    t0 = c * Q
    t_end = tl.minimum(t0 + Q, L)
    offs_j = t0 + jb * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mj = offs_j < t_end
    offs_p, offs_n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    xj = tl.load(x_ptr + bi * sx_b + h * sx_h + offs_j[:, None] * sx_l + offs_p[None, :] * sx_p,
                 mask=mj[:, None] & mp[None, :], other=0.0).to(tl.float32)
    bj = tl.load(b_ptr + bi * sb_b + offs_j[:, None] * sb_l + offs_n[None, :] * sb_n,
                 mask=mj[:, None] & mn[None, :], other=0.0).to(tl.float32)
    dt_j = tl.load(dt_ptr + bh * LP + offs_j, mask=mj, other=0.0)
    acs_j = tl.load(acs_ptr + bh * LP + offs_j, mask=mj, other=0.0)
    a_last = tl.load(acs_ptr + bh * LP + t0 + Q - 1)
    gbase = gn_ptr + ((bi * NC + c) * H + h) * P * N
    gn = tl.load(gbase + offs_p[:, None] * N + offs_n[None, :], mask=mp[:, None] & mn[None, :], other=0.0)

    # state path: S_c = sum_j e_j dt_j x_j B_j^T with e_j = exp(acs_last - acs_j), dL/dS_c = G_c
    e_j = tl.where(mj, tl.exp(a_last - acs_j), 0.0)
    z = tl.dot(bj, tl.trans(gn), input_precision=STATE_PREC)            # (Q, P): B_j G_c^T
    r = e_j * tl.sum(xj * z, axis=1)                                     # dL/d(dt_j) of the state path
    dx = z * (e_j * dt_j)[:, None]
    ddt = r
    dacs = -dt_j * r
    db = tl.dot(xj * (e_j * dt_j)[:, None], gn, input_precision=STATE_PREC)  # (Q, N)

    # intra-chunk path over query rows i >= j: y_i += (C_i.B_j) exp(acs_i - acs_j) dt_j x_j
    bjd, xjd = _operand(bj, DOT_DTYPE, ROUND_BF16), _operand(xj, DOT_DTYPE, ROUND_BF16)
    for i0 in range(t0 + jb * BLOCK_Q, t_end, BLOCK_Q):
        offs_i = i0 + tl.arange(0, BLOCK_Q)
        mi = offs_i < t_end
        ci = tl.load(c_ptr + bi * sc_b + offs_i[:, None] * sc_l + offs_n[None, :] * sc_n,
                     mask=mi[:, None] & mn[None, :], other=0.0)
        gyi = tl.load(gy_ptr + bi * sg_b + h * sg_h + offs_i[:, None] * sg_l + offs_p[None, :] * sg_p,
                      mask=mi[:, None] & mp[None, :], other=0.0)
        acs_i = tl.load(acs_ptr + bh * LP + offs_i, mask=mi, other=0.0)
        cid, gyid = _operand(ci, DOT_DTYPE, ROUND_BF16), _operand(gyi, DOT_DTYPE, ROUND_BF16)
        cbt = tl.dot(bjd, tl.trans(cid), input_precision=PREC)          # (Qj, Qi): C_i.B_j
        gt = tl.dot(xjd, tl.trans(gyid), input_precision=PREC)          # (Qj, Qi): dy_i.x_j
        causal = (offs_i[None, :] >= offs_j[:, None]) & mi[None, :] & mj[:, None]
        # mask before exp: where i < j the exponent is positive and could overflow
        lt = tl.exp(tl.where(causal, acs_i[None, :] - acs_j[:, None], float("-inf")))
        mt = cbt * lt * dt_j[:, None]
        dx += tl.dot(_operand(mt, DOT_DTYPE, ROUND_BF16), gyid, input_precision=PREC)
        ddt += tl.sum(gt * cbt * lt, axis=1)
        dacs -= tl.sum(gt * mt, axis=1)
        db += tl.dot(_operand(gt * lt * dt_j[:, None], DOT_DTYPE, ROUND_BF16), cid, input_precision=PREC)

    if HAS_D:
        gyj = tl.load(gy_ptr + bi * sg_b + h * sg_h + offs_j[:, None] * sg_l + offs_p[None, :] * sg_p,
                      mask=mj[:, None] & mp[None, :], other=0.0).to(tl.float32)
        dx += tl.load(d_ptr + h).to(tl.float32) * gyj
    # dx is contiguous (B, L, H, P); the dB partial is fp32 (B, L, H, N)
    tl.store(dx_ptr + ((bi * L + offs_j[:, None]) * H + h) * P + offs_p[None, :],
             dx.to(dx_ptr.dtype.element_ty), mask=mj[:, None] & mp[None, :])
    tl.store(db_ptr + ((bi * L + offs_j[:, None]) * H + h) * N + offs_n[None, :], db,
             mask=mj[:, None] & mn[None, :])
    tl.store(ddt_ptr + bh * LP + offs_j, ddt, mask=mj)
    tl.store(dacs_ptr + bh * LP + offs_j, dacs, mask=mj)


@triton.jit
def _bwd_dc(x_ptr, b_ptr, c_ptr, gy_ptr, dt_ptr, acs_ptr, enter_ptr, dc_ptr, dacs_ptr,
            L, H, P, N, NC, Q, LP,
            sx_b, sx_l, sx_h, sx_p, sb_b, sb_l, sb_n, sc_b, sc_l, sc_n, sg_b, sg_l, sg_h, sg_p,
            BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
            DOT_DTYPE: tl.constexpr, PREC: tl.constexpr, STATE_PREC: tl.constexpr, ROUND_BF16: tl.constexpr):
    c, bh, ib = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    bi, h = bh // H, bh % H
    t0 = c * Q
    t_end = tl.minimum(t0 + Q, L)
    offs_i = t0 + ib * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mi = offs_i < t_end
    offs_p, offs_n = tl.arange(0, BLOCK_P), tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    ci = tl.load(c_ptr + bi * sc_b + offs_i[:, None] * sc_l + offs_n[None, :] * sc_n,
                 mask=mi[:, None] & mn[None, :], other=0.0).to(tl.float32)
    gyi = tl.load(gy_ptr + bi * sg_b + h * sg_h + offs_i[:, None] * sg_l + offs_p[None, :] * sg_p,
                  mask=mi[:, None] & mp[None, :], other=0.0).to(tl.float32)
    acs_i = tl.load(acs_ptr + bh * LP + offs_i, mask=mi, other=0.0)
    enter = tl.load(enter_ptr + ((bi * NC + c) * H + h) * P * N + offs_p[:, None] * N + offs_n[None, :],
                    mask=mp[:, None] & mn[None, :], other=0.0)

    # entering state: y_i += exp(acs_i) E_c C_i  ->  dC_i = exp(acs_i) E_c^T dy_i, dacs_i = C_i.dC_i
    dc = tl.dot(gyi * tl.exp(acs_i)[:, None], enter, input_precision=STATE_PREC)  # (Q, N)
    dacs = tl.sum(ci * dc, axis=1)

    cid, gyid = _operand(ci, DOT_DTYPE, ROUND_BF16), _operand(gyi, DOT_DTYPE, ROUND_BF16)
    i_hi = tl.minimum(t0 + (ib + 1) * BLOCK_Q, t_end)
    for j0 in range(t0, i_hi, BLOCK_Q):
        offs_j = j0 + tl.arange(0, BLOCK_Q)
        mj = offs_j < i_hi
        bj = tl.load(b_ptr + bi * sb_b + offs_j[:, None] * sb_l + offs_n[None, :] * sb_n,
                     mask=mj[:, None] & mn[None, :], other=0.0)
        xj = tl.load(x_ptr + bi * sx_b + h * sx_h + offs_j[:, None] * sx_l + offs_p[None, :] * sx_p,
                     mask=mj[:, None] & mp[None, :], other=0.0)
        dt_j = tl.load(dt_ptr + bh * LP + offs_j, mask=mj, other=0.0)
        acs_j = tl.load(acs_ptr + bh * LP + offs_j, mask=mj, other=0.0)
        bjd = _operand(bj, DOT_DTYPE, ROUND_BF16)
        cb = tl.dot(cid, tl.trans(bjd), input_precision=PREC)                            # (Qi, Qj)
        g = tl.dot(gyid, tl.trans(_operand(xj, DOT_DTYPE, ROUND_BF16)), input_precision=PREC)
        causal = (offs_j[None, :] <= offs_i[:, None]) & mj[None, :] & mi[:, None]
        lmat = tl.exp(tl.where(causal, acs_i[:, None] - acs_j[None, :], float("-inf")))
        dcb = g * lmat * dt_j[None, :]
        dc += tl.dot(_operand(dcb, DOT_DTYPE, ROUND_BF16), bjd, input_precision=PREC)
        dacs += tl.sum(dcb * cb, axis=1)

    tl.store(dc_ptr + ((bi * L + offs_i[:, None]) * H + h) * N + offs_n[None, :], dc,
             mask=mi[:, None] & mn[None, :])
    tl.store(dacs_ptr + bh * LP + offs_i, dacs, mask=mi)


def ssd_triton_backward(gy_BLHP, gfinal_BHPN, x_BLHP, dt_BLH, A_H, B_BLN, C_BLN, D_H, initial_states,
                        chunk_size: int):
    """Gradients (dx, ddt, dA, dB, dC, dD, d_initial_states) in the inputs' dtypes (None for absent D
    or initial state) of the SSD forward, given dL/dy and dL/d(final state)."""
    lay = Layout(x_BLHP, dt_BLH, A_H, B_BLN, chunk_size)
    b, l, h, p, n, nc, q = lay.b, lay.l, lay.h, lay.p, lay.n, lay.nc, lay.q
    if p > 256:
        raise ValueError(f"ssd_triton backward: headdim P={p} > 256 is not supported")
    dev = x_BLHP.device
    enter, final = lay.entering_states(x_BLHP, B_BLN, initial_states)
    gfinal = gfinal_BHPN if gfinal_BHPN is not None else torch.zeros_like(final)
    gn = lay.states(gy_BLHP, C_BLN, torch.exp(lay.acs_BHL))
    ds0 = lay.state_pass(gn, gfinal, reverse=True)  # gn[c] is now G_c = dL/d(state leaving chunk c)

    dx = torch.empty(b, l, h, p, device=dev, dtype=x_BLHP.dtype)
    db_part, dc_part = (torch.empty(b, l, h, n, device=dev, dtype=torch.float32) for _ in range(2))
    ddt, dacs_j, dacs_i = (torch.zeros(b, h, lay.lp, device=dev, dtype=torch.float32) for _ in range(3))
    block_p, block_q = _pow2(p), min(lay.block_q, 32 if max(p, n) > 64 else 64)
    grid = (nc, b * h, triton.cdiv(q, block_q))
    strides = (*x_BLHP.stride(), *B_BLN.stride(), *C_BLN.stride(), *gy_BLHP.stride())
    common = dict(BLOCK_Q=block_q, BLOCK_P=block_p, BLOCK_N=lay.block_n, DOT_DTYPE=lay.dot_dtype,
                  PREC=lay.prec, STATE_PREC=lay.state_prec, ROUND_BF16=lay.round_bf16)
    d = D_H.contiguous() if D_H is not None else ddt
    _bwd_dx[grid](x_BLHP, B_BLN, C_BLN, gy_BLHP, lay.dt_BHL, lay.acs_BHL, gn, d, dx, db_part, ddt, dacs_j,
                  l, h, p, n, nc, q, lay.lp, *strides, HAS_D=D_H is not None, **common)
    _bwd_dc[grid](x_BLHP, B_BLN, C_BLN, gy_BLHP, lay.dt_BHL, lay.acs_BHL, enter, dc_part, dacs_i,
                  l, h, p, n, nc, q, lay.lp, *strides, **common)

    # d acs_last: both the decay of E_c and every e_j of the own state scale with exp(acs_last), so
    # dL/dacs_last = <G_c, E_{c+1}> (E_{nc} is the final state)
    enter_next = torch.cat([enter[:, 1:], final[:, None]], dim=1)
    dacs = (dacs_i + dacs_j).view(b, h, nc, q)
    dacs[..., -1] += (gn * enter_next).sum((-2, -1)).transpose(1, 2)
    da = dacs.flip(-1).cumsum(-1).flip(-1).view(b, h, lay.lp)  # a_t enters every acs_i with i >= t
    ddt_BHL = ddt + A_H.float()[None, :, None] * da
    dA = (lay.dt_BHL * da).sum((0, 2))
    dD = (gy_BLHP.float() * x_BLHP.float()).sum((0, 1, 3)).to(D_H.dtype) if D_H is not None else None
    d_init = ds0.to(initial_states.dtype) if initial_states is not None else None
    return (dx, ddt_BHL[..., :l].transpose(1, 2).to(dt_BLH.dtype), dA.to(A_H.dtype),
            db_part.sum(2).to(B_BLN.dtype), dc_part.sum(2).to(C_BLN.dtype), dD, d_init)
