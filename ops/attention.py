"""Scale-structured attention for multi-scale token sequences, with a dispatcher.

Two mask kinds over the concatenated scales (coarse to fine, each scale raster-ordered):
  * "intra":  block-diagonal, a token sees only the tokens of its own scale (M-VAR);
  * "causal": block-causal, a token sees its own scale and every earlier one (VAR).
Both are bidirectional inside a scale. Any prefix of whole scales is a valid sequence, which the
recomputing sampler uses.

Paths (picked by `scale_attention`, reported by `describe`):
  * "sdpa-mask":  SDPA with a dense boolean (L, L) mask; runs everywhere (the CPU path, fwd+bwd);
  * "flex":       FlexAttention with a BlockMask (CUDA only: its CPU backward is not implemented),
                   tiles chosen for the scale layout, one compiled function per input signature;
  * "flash-varlen": flash-attn varlen over per-scale segments (intra only, CUDA, fp16/bf16),
                   cu_seqlens precomputed per batch size, max_seqlen = the largest scale;
  * "reference":  an fp32 per-scale loop (intra) / explicit softmax (causal), used by tests.
"""
from __future__ import annotations

import functools
import os
import types
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

KINDS = ("intra", "causal")


def _check(patch_nums: Sequence[int], kind: str) -> Tuple[int, ...]:
    if kind not in KINDS:
        raise ValueError(f"attention mask kind must be one of {KINDS}, got {kind!r}")
    pns = tuple(int(p) for p in patch_nums)
    if not pns or any(p <= 0 for p in pns):
        raise ValueError(f"patch_nums must be positive ints, got {patch_nums}")
    return pns


@functools.lru_cache(maxsize=64)
def scale_ids(patch_nums: Tuple[int, ...]) -> torch.Tensor:
    """(L,) int64 on the CPU (even under a `torch.device("meta")` build, since cached masks derive from it)."""
    return torch.cat([torch.full((p * p,), si, dtype=torch.long, device="cpu") for si, p in enumerate(patch_nums)])


def scale_bounds(patch_nums: Sequence[int]) -> Tuple[int, ...]:
    """Cumulative token offsets (0, pn0², pn0²+pn1², ...): scale si spans [b[si], b[si+1])."""
    out = [0]
    for p in patch_nums:
        out.append(out[-1] + int(p) * int(p))
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _dense_mask_cpu(patch_nums: Tuple[int, ...], kind: str) -> torch.Tensor:
    lvl = scale_ids(patch_nums)
    if kind == "intra":
        return lvl[:, None] == lvl[None, :]
    return lvl[:, None] >= lvl[None, :]


_DEVICE_MASKS: Dict[Tuple, torch.Tensor] = {}


def dense_mask(patch_nums: Sequence[int], kind: str, device=None) -> torch.Tensor:
    """(L, L) bool, True where query i may attend to key j. Cached per (patch_nums, kind, device)."""
    pns = _check(patch_nums, kind)
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (pns, kind, str(device))
    mask = _DEVICE_MASKS.get(key)
    if mask is None:
        mask = _dense_mask_cpu(pns, kind).to(device)
        _DEVICE_MASKS[key] = mask
    return mask


def _prefix_scales(patch_nums: Tuple[int, ...], L: int) -> Tuple[int, ...]:
    bounds = scale_bounds(patch_nums)
    if L not in bounds[1:]:
        raise ValueError(f"sequence length {L} is not a whole-scale prefix of patch_nums {patch_nums} "
                         f"(valid lengths: {bounds[1:]})")
    return patch_nums[: bounds.index(L)]


# ------------------------------------------------------------------------------------------ paths
def attention_reference(q_BHLD, k_BHLD, v_BHLD, patch_nums, kind: str, scale: float) -> torch.Tensor:
    """fp32 reference: explicit softmax over the masked scores (the ground truth for the fast paths)."""
    pns = _prefix_scales(_check(patch_nums, kind), q_BHLD.shape[2])
    mask_LL = dense_mask(pns, kind, q_BHLD.device)
    s_BHLL = torch.einsum("bhld,bhmd->bhlm", q_BHLD.float(), k_BHLD.float()) * scale
    s_BHLL = s_BHLL.masked_fill(~mask_LL, float("-inf"))
    return torch.einsum("bhlm,bhmd->bhld", s_BHLL.softmax(-1), v_BHLD.float()).to(q_BHLD.dtype)


def _sdpa_mask(q, k, v, pns, kind, scale):
    mask_LL = dense_mask(pns, kind, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask_LL, scale=scale)


# Flex tile candidates (query rows, key columns). The block mask skips tiles with no allowed pair, so
# small tiles skip more of M-VAR's block diagonal; rows >= 64 and columns >= 32 keep tensor-core
# tiles full. Not yet timed on a GPU: benchmarks/gpu_suite.py times the choice against dense SDPA.
_TILES = ((128, 128), (128, 64), (64, 64), (64, 32))


def computed_pairs(patch_nums: Sequence[int], kind: str, tile: Tuple[int, int]) -> int:
    """(query, key) pairs a flex kernel computes with `tile`: every tile holding an allowed pair."""
    pns = _check(patch_nums, kind)
    mask = _dense_mask_cpu(pns, kind)
    L = mask.shape[0]
    bq, bk = tile
    nq, nk = -(-L // bq), -(-L // bk)
    padded = F.pad(mask, (0, nk * bk - L, 0, nq * bq - L))
    live = padded.view(nq, bq, nk, bk).any(dim=3).any(dim=1)
    return int(live.sum()) * bq * bk


_ENV_TILE = "MVAR_FLEX_TILE"  # e.g. "128x128": overrides the choice (an escape hatch until GPU-timed)


@functools.lru_cache(maxsize=64)
def flex_tile(patch_nums: Tuple[int, ...], kind: str) -> Tuple[int, int]:
    """The tile with the fewest computed pairs for the *full* scale layout (so every prefix of it, as
    the recomputing sampler runs, uses the same kernel options); ties go to the larger tile."""
    forced = os.environ.get(_ENV_TILE, "").strip()
    if forced:
        try:
            rows, cols = (int(v) for v in forced.lower().split("x"))
        except ValueError:
            raise ValueError(f"{_ENV_TILE}={forced!r}: expected ROWSxCOLS, e.g. 128x128") from None
        return rows, cols
    return min(_TILES, key=lambda t: (computed_pairs(patch_nums, kind, t), -t[0] * t[1]))


def flex_kernel_options(tile: Tuple[int, int]) -> Dict[str, int]:
    """CUDA kernel tiles that divide the block mask's: forward (M, N) = the tile; backward dK/dV walks
    key blocks of N1 = the tile's columns over query blocks of M1, dQ query blocks of M2 = the tile's
    rows over key blocks of N2 (flex needs the mask's block sizes to be multiples of them)."""
    rows, cols = tile
    return {"BLOCK_M": rows, "BLOCK_N": cols, "BLOCK_M1": min(32, rows), "BLOCK_N1": cols,
            "BLOCK_M2": rows, "BLOCK_N2": min(32, cols)}


_FLEX_MASKS: Dict[Tuple, object] = {}


def _block_mask(pns: Tuple[int, ...], kind: str, tile: Tuple[int, int], device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    key = (pns, kind, tile, str(device))
    block_mask = _FLEX_MASKS.get(key)
    if block_mask is None:
        lvl = scale_ids(pns).to(device)
        if kind == "intra":
            def mask_mod(b, h, qi, ki):
                return lvl[qi] == lvl[ki]
        else:
            def mask_mod(b, h, qi, ki):
                return lvl[qi] >= lvl[ki]
        L = lvl.numel()
        block_mask = create_block_mask(mask_mod, None, None, L, L, device=device, BLOCK_SIZE=tile)
        _FLEX_MASKS[key] = block_mask
    return block_mask


def _flex_call(q, k, v, block_mask, scale, kernel_options):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, k, v, block_mask=block_mask, scale=scale, kernel_options=kernel_options)


# One compiled function per input signature, each around its own copy of `_flex_call`'s code object.
# torch.compile caches compiled graphs on the code object and, past `recompile_limit` (8) entries,
# silently falls back to the unfused eager path; a code object per signature holds exactly one entry,
# so no number of shapes (sampler prefixes, batch sizes, dtypes, grad modes) reaches that cliff.
_FLEX_FNS: Dict[Tuple, object] = {}
FLEX_COMPILE_BACKEND = "inductor"  # tests swap in "eager" to check the caching quickly on CPU


def _compiled_flex(signature: Tuple):
    fn = _FLEX_FNS.get(signature)
    if fn is None:
        code = _flex_call.__code__.replace(co_name=f"_flex_call_{len(_FLEX_FNS)}")
        fresh = types.FunctionType(code, _flex_call.__globals__, code.co_name)
        fn = torch.compile(fresh, dynamic=False, backend=FLEX_COMPILE_BACKEND)
        _FLEX_FNS[signature] = fn
    return fn


def _flex(q, k, v, pns, kind, scale, full_pns=None):
    tile = flex_tile(full_pns or pns, kind)
    block_mask = _block_mask(pns, kind, tile, q.device)
    # the CUDA kernel's tiles must match the block mask's; the CPU template picks its own
    options = flex_kernel_options(tile) if q.device.type == "cuda" else None
    if torch.compiler.is_compiling():
        # inside a compiled region (model.compile): flex is traced into that graph, no wrapper needed
        return _flex_call(q, k, v, block_mask, scale, options)
    signature = (tuple(q.shape), q.dtype, str(q.device), kind, pns, tile, torch.is_grad_enabled(),
                 q.requires_grad or k.requires_grad or v.requires_grad, FLEX_COMPILE_BACKEND)
    return _compiled_flex(signature)(q, k, v, block_mask, scale, options)


_CU_SEQLENS: Dict[Tuple, torch.Tensor] = {}


def _flash_varlen(q, k, v, pns, kind, scale):
    from flash_attn import flash_attn_varlen_func

    B, H, L, D = q.shape
    key = (pns, B, str(q.device))
    cu = _CU_SEQLENS.get(key)
    if cu is None:
        lens = torch.tensor([p * p for p in pns] * B, dtype=torch.int32)
        cu = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0)).to(q.device)
        _CU_SEQLENS[key] = cu
    max_len = max(pns) ** 2  # not the official hard-coded 256: any patch_nums (docs/model.md)
    flat = [t.transpose(1, 2).reshape(B * L, H, D) for t in (q, k, v)]
    o = flash_attn_varlen_func(*flat, cu, cu, max_len, max_len, softmax_scale=scale, causal=False)
    return o.view(B, L, H, D).transpose(1, 2)


@functools.lru_cache(maxsize=None)
def _has(mod: str) -> bool:
    # cached: `select_path` runs on every forward, and a failing import searches sys.path each time
    try:
        __import__(mod)
        return True
    except Exception:  # noqa: BLE001 - a broken optional install counts as absent
        return False


def _flex_available() -> bool:
    return _has("torch.nn.attention.flex_attention")


_FORCED: Optional[str] = None


def set_backend(name: Optional[str]) -> None:
    """Force one path ("sdpa-mask", "flex", "flash-varlen", "reference") or None for automatic."""
    global _FORCED
    if name is not None and name not in _PATHS:
        raise ValueError(f"unknown attention backend {name!r}; choose from {sorted(_PATHS)}")
    _FORCED = name


def select_path(device, dtype, kind: str) -> str:
    """The path `scale_attention` takes for tensors on `device` with `dtype`."""
    if _FORCED is not None:
        return _FORCED
    device = torch.device(device)
    if device.type != "cuda":
        return "sdpa-mask"
    if kind == "intra" and dtype in (torch.float16, torch.bfloat16) and _has("flash_attn"):
        return "flash-varlen"
    if _flex_available():
        return "flex"
    return "sdpa-mask"


_PATHS = {"sdpa-mask": _sdpa_mask, "flex": _flex, "flash-varlen": _flash_varlen, "reference": attention_reference}


def scale_attention(q_BHLD: torch.Tensor, k_BHLD: torch.Tensor, v_BHLD: torch.Tensor,
                    patch_nums: Sequence[int], kind: str, scale: float) -> torch.Tensor:
    """Masked multi-scale attention; L may be any whole-scale prefix of patch_nums. -> (B, H, L, D)."""
    pns = _prefix_scales(_check(patch_nums, kind), q_BHLD.shape[2])
    if k_BHLD.shape != q_BHLD.shape or v_BHLD.shape != q_BHLD.shape:
        raise ValueError(f"q, k, v shapes differ: {tuple(q_BHLD.shape)}, {tuple(k_BHLD.shape)}, "
                         f"{tuple(v_BHLD.shape)}")
    path = select_path(q_BHLD.device, q_BHLD.dtype, kind)
    if path == "flash-varlen" and kind != "intra":
        path = "flex"
    if path == "flex":
        return _flex(q_BHLD, k_BHLD, v_BHLD, pns, kind, scale, full_pns=_check(patch_nums, kind))
    return _PATHS[path](q_BHLD, k_BHLD, v_BHLD, pns, kind, scale)


def describe(device=None, dtype=torch.bfloat16) -> Dict[str, str]:
    """Which path each mask kind takes on `device` (default: cuda if available, else cpu)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return {f"attention ({kind})": select_path(device, dtype, kind) for kind in KINDS}


def attention_pairs(patch_nums: Sequence[int], kind: str) -> int:
    """Number of (query, key) pairs the mask allows: the attention FLOP count's unit."""
    n = [int(p) ** 4 for p in patch_nums]
    if kind == "intra":
        return sum(n)
    sizes = [int(p) ** 2 for p in patch_nums]
    return sum(s * sum(sizes[: i + 1]) for i, s in enumerate(sizes))
