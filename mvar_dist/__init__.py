"""mvar-dist: distributed pretraining of multi-scale visual autoregressive models (M-VAR and VAR).

Subpackages: config, vqvae, model, data, runs, train, eval, scaling, plan; `mvar_dist.ops` (fused ops,
from the top-level ops/ folder), `mvar_dist.data_pipeline` (the Ray tokenisation job, from
data_pipeline/) and `mvar_dist.configs` (shipped presets, from configs/).
"""
__version__ = "0.1.0"
