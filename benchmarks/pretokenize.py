"""Tokenisation benchmark: end-to-end Ray job images/s on the embedded dataset (CPU), the encoder's
images/s at 256 px with the full-size tokenizer (GPU when present), and the time/storage estimate for
ImageNet-1k with K variants. Prints markdown tables.

    python benchmarks/pretokenize.py                      # all tables
    python benchmarks/pretokenize.py --skip-job           # encoder + estimate only (bare GPU box, no Ray)
"""

import sys

from mvar_dist.data_pipeline.bench import run_benchmark

if __name__ == "__main__":
    sys.exit(run_benchmark())
