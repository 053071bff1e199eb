"""`python -m mvar_dist doctor`: what this machine can run and which code path each op takes.

Never prints secrets: for S3 it only says whether credentials are present and where from.
"""
from __future__ import annotations

import importlib
import os
import platform
from typing import Dict, List, Tuple


def _version(mod: str) -> Tuple[bool, str]:
    try:
        m = importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        return False, f"not usable ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''})"
    return True, getattr(m, "__version__", "installed")


def _s3_credentials() -> str:
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return "present (environment)"
    if os.environ.get("AWS_PROFILE"):
        return "profile named in AWS_PROFILE"
    cred = os.path.expanduser(os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"))
    if os.path.isfile(cred):
        return "present (shared credentials file)"
    return "none found (s3:// paths will fail; set the standard AWS variables or ~/.aws/credentials)"


def report() -> List[Tuple[str, str]]:
    import torch

    rows: List[Tuple[str, str]] = [
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("cpu threads", str(torch.get_num_threads())),
    ]
    cuda = torch.cuda.is_available()
    if cuda:
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        rows.append(("cuda", f"{torch.version.cuda} ({torch.cuda.device_count()} GPU: {names})"))
        rows.append(("bf16", str(torch.cuda.is_bf16_supported())))
    else:
        rows.append(("cuda", "not available (CPU reference paths, gloo for multi-rank)"))
    usable: Dict[str, bool] = {}
    for mod in ("triton", "flash_attn", "mamba_ssm", "causal_conv1d", "deepspeed", "ray", "pyarrow", "s3fs",
                "tensorboard", "scipy"):
        ok, ver = _version(mod)
        usable[mod] = ok
        rows.append((mod, ver))
    rows.append(("s3 credentials", _s3_credentials()))
    rows += op_paths(cuda, usable)
    return rows


def op_paths(cuda: bool, usable: Dict[str, bool]) -> List[Tuple[str, str]]:
    """Which implementation each fused op dispatches to on this machine (ops register their own)."""
    rows = []
    try:
        from mvar_dist.ops import dispatch_report  # provided by ops/ once the ops land
    except ImportError:
        triton_gpu = cuda and usable.get("triton", False)
        rows.append(("op: nearest-code search", "triton/chunked GPU" if triton_gpu else "torch reference"))
        rows.append(("op: ssd scan (Mamba2)",
                     "mamba-ssm" if cuda and usable.get("mamba_ssm") else
                     ("triton" if triton_gpu else "torch chunked reference (fp32 states)")))
        rows.append(("op: intra-scale attention",
                     "flash-attn varlen" if cuda and usable.get("flash_attn") else
                     ("FlexAttention block mask" if cuda else "SDPA + dense boolean mask")))
        return rows
    return [(f"op: {k}", v) for k, v in dispatch_report().items()]


def main() -> None:
    rows = report()
    width = max(len(k) for k, _ in rows)
    print("mvar-dist doctor")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
