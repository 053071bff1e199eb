"""Test-only wrapper: `python tests/helpers/train_with_nan_steps.py 2,4,5 <launchers/train.py arguments>`.

Runs the real training launcher with a hook that makes the loss of the listed optimizer steps NaN,
for the NaN-guard test (no fault injection lives in the library)."""
import importlib.util
import sys
from pathlib import Path


def load_launcher():
    path = Path(__file__).resolve().parents[2] / "launchers" / "train.py"
    spec = importlib.util.spec_from_file_location("train_launcher", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nan_at(steps):
    def loss(step, value):
        return value * float("nan") if step in steps else value
    return loss


if __name__ == "__main__":
    from mvar_dist.train.loop import TrainHooks

    bad_steps = {int(s) for s in sys.argv[1].split(",")}
    sys.exit(load_launcher().main(sys.argv[2:], hooks=TrainHooks(loss=nan_at(bad_steps))))
