# Shipped YAML presets and DeepSpeed configs; installed as the data package `mvar_dist.configs`.
