"""M-VAR and VAR models: `MVAR` (arch "mvar" or "var"), official checkpoint import/export, the
stateful sampler and FLOP counts."""
from .mamba2 import Mamba2, MambaState
from .mvar import MVAR

__all__ = ["MVAR", "Mamba2", "MambaState"]
