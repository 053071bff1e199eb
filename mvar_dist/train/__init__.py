"""DeepSpeed ZeRO-3 trainer: loop, engine/config filling, schedules, checkpoints, metrics.

Import the submodules directly (`from mvar_dist.train.loop import train`); nothing here imports
DeepSpeed at package import time.
"""
