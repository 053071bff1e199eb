"""Custom ops, installed as `mvar_dist.ops`: each op is a pure-torch fp32 reference, a fast kernel
(Triton/CUDA) and a dispatcher that takes the fast path only where it can run."""
