"""The Ray pre-tokenisation job, installed as `mvar_dist.data_pipeline`."""
