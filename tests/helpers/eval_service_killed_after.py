"""launchers/eval_service.py whose rank $KILL_RANK dies (os._exit, no cleanup) after writing $KILL_AFTER PNGs."""
import os
import runpy
import sys
from pathlib import Path

import mvar_dist.eval.sampling as sampling

_save, _saved = sampling.save_png, [0]


def _save_then_die(img, path):
    _save(img, path)
    _saved[0] += 1
    if os.environ.get("RANK", "0") == os.environ["KILL_RANK"] and _saved[0] >= int(os.environ["KILL_AFTER"]):
        os._exit(9)


sampling.save_png = _save_then_die
launcher = Path(__file__).resolve().parents[2] / "launchers" / "eval_service.py"
sys.argv = [str(launcher), *sys.argv[1:]]
runpy.run_path(str(launcher), run_name="__main__")
