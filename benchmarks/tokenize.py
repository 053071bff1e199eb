"""Tokenisation benchmark: end-to-end Ray job images/s on the embedded dataset (CPU), the encoder's
images/s at 256 px with the full-size tokenizer (GPU when present), and the time/storage estimate for
ImageNet-1k with K variants. Prints markdown tables.

    python benchmarks/tokenize.py                      # all tables
    python benchmarks/tokenize.py --skip-job           # encoder + estimate only (bare GPU box, no Ray)
"""
import os
import sys

if __name__ == "__main__":
    # benchmarks/ is sys.path[0] and this file's name shadows the stdlib `tokenize`: drop the folder first.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    from mvar_dist.data_pipeline.bench import run_benchmark

    sys.exit(run_benchmark())
else:
    # A sibling benchmark imported `tokenize` and found this file: become the stdlib module.
    import sysconfig

    _std = os.path.join(sysconfig.get_paths()["stdlib"], "tokenize.py")
    with open(_std, encoding="utf-8") as _f:
        exec(compile(_f.read(), _std, "exec"), globals())
