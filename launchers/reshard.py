"""Rewrite a finished token dataset into class-mixed shards, without re-encoding any image.

    python launchers/reshard.py --source outputs/old/shards --dest outputs/new/shards
    python launchers/reshard.py --source s3://bucket/tokens/d16 --dest s3://bucket/tokens/d16-mixed --work-dir /scratch

Streams shard by shard (one shard in memory), checks every input shard against its manifest's sha256,
resumes after a kill, writes the manifest last. See docs/data_pipeline.md, "Class-mixed shards".
"""

import sys

from mvar_dist.data_pipeline.reshard_cli import main

if __name__ == "__main__":
    sys.exit(main())
