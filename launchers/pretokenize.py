"""Pre-tokenise images into multi-scale token shards (Parquet + manifest) with a Ray Data job.

Local (starts a private Ray runtime):
    python launchers/pretokenize.py --config demo --source outputs/demo_data --dest outputs/demo/shards
On a Ray cluster:
    ray job submit --address http://HEAD:8265 -- python launchers/pretokenize.py --config mvar_d16 \
        --source s3://bucket/imagenet/train --dest s3://bucket/tokens/d16 --num-actors 8 --num-gpus 1
Check a finished dataset:
    python launchers/pretokenize.py --verify --dest outputs/demo/shards
Trailing `key=value` arguments are config overrides (e.g. tokenizer.checkpoint=vae_ch160v4096z32.pth).
"""

import sys

from mvar_dist.data_pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
