"""Test-only wrapper: `python tests/helpers/train_with_failed_upload.py STEP RANK <launchers/train.py arguments>`.

Runs the real training launcher with a hook that makes RANK's checkpoint upload at optimizer step
STEP fail, for the s3:// checkpoint test (no fault injection lives in the library)."""
import sys

from train_with_nan_steps import load_launcher


def fail_at(step: int, rank: int):
    def before_upload(s, r):
        if (s, r) == (step, rank):
            raise OSError(f"injected upload failure (step {s}, rank {r})")
    return before_upload


if __name__ == "__main__":
    from mvar_dist.train.loop import TrainHooks

    step, rank = int(sys.argv[1]), int(sys.argv[2])
    sys.exit(load_launcher().main(sys.argv[3:], hooks=TrainHooks(before_upload=fail_at(step, rank))))
