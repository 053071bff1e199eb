"""Custom ops, installed as `mvar_dist.ops`: each op is a pure-torch fp32 reference, a fast kernel
(Triton/CUDA) and a dispatcher that takes the fast path only where it can run."""


def dispatch_report() -> dict:
    """Which implementation each op takes on this machine (printed by `python -m mvar_dist doctor`)."""
    from mvar_dist.ops import attention, causal_conv, codebook, ssd

    report = {
        "nearest-code search": codebook.describe(),
        "ssd scan (Mamba2)": ssd.describe(),
        "causal conv1d": causal_conv.describe(),
    }
    report.update(attention.describe())  # one entry per mask kind
    return report
