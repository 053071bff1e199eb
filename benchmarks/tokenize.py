"""Tokenisation benchmark: end-to-end Ray job images/s on the embedded dataset (CPU), the encoder's
images/s at 256 px with the full-size tokenizer (GPU when present), and the time/storage estimate for
ImageNet-1k with K variants. Prints markdown tables.

    python benchmarks/tokenize.py                      # all tables
    python benchmarks/tokenize.py --skip-job           # encoder + estimate only (bare GPU box, no Ray)
"""

import sys

from mvar_dist.stdlib_shadow import become_stdlib, unshadow

if __name__ == "__main__":
    unshadow(__file__)  # this file's name shadows the stdlib `tokenize`
    from mvar_dist.data_pipeline.bench import run_benchmark

    sys.exit(run_benchmark())
else:  # a sibling script imported `tokenize` and found this file
    become_stdlib("tokenize", globals())
