"""Token shards: the on-disk contract (shards.py) and the elastic streaming loader (loader.py).

Names are imported lazily so that `mvar_dist.data.shards` stays light for the tokenisation job."""
from importlib import import_module

_EXPORTS = {"TokenLoader": ".loader", "LoaderSettings": ".loader", "ShardError": ".io", "read_manifest": ".io"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
