"""Test-only wrapper: `python tests/helpers/train_with_paused_upload.py STEP RANK FLAG <launchers/train.py arguments>`.

Runs the real training launcher with a hook that, when RANK is about to upload its checkpoint files
of optimizer step STEP, writes the file FLAG and sleeps: the test then kills that node mid-save
(tests/integration/test_multinode.py). No fault injection lives in the library."""
import sys
import time
from pathlib import Path

from train_with_nan_steps import load_launcher


def pause_at(step: int, rank: int, flag: Path):
    def before_upload(s, r):
        if (s, r) == (step, rank):
            flag.write_text(f"step {s} rank {r}\n")
            time.sleep(600)  # killed by the test long before this ends
    return before_upload


if __name__ == "__main__":
    from mvar_dist.train.loop import TrainHooks

    # deepspeed's launch.py puts --local_rank=N before the script's own arguments: pass it on.
    local = [a for a in sys.argv[1:] if a.startswith(("--local_rank", "--local-rank"))]
    rest = [a for a in sys.argv[1:] if not a.startswith(("--local_rank", "--local-rank"))]
    step, rank, flag = int(rest[0]), int(rest[1]), Path(rest[2])
    hooks = TrainHooks(before_upload=pause_at(step, rank, flag))
    sys.exit(load_launcher().main([*local, *rest[3:]], hooks=hooks))
