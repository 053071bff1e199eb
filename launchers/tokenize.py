"""Pre-tokenise images into multi-scale token shards (Parquet + manifest) with a Ray Data job.

Local (starts a private Ray runtime):
    python launchers/tokenize.py --config demo128 --source outputs/demo_data --dest outputs/demo128/shards
On a Ray cluster:
    ray job submit --address http://HEAD:8265 -- python launchers/tokenize.py --config mvar_d16 \
        --source s3://bucket/imagenet/train --dest s3://bucket/tokens/d16 --num-actors 8 --num-gpus 1
Check a finished dataset:
    python launchers/tokenize.py --verify --dest outputs/demo128/shards
Trailing `key=value` arguments are config overrides (e.g. tokenizer.checkpoint=vae_ch160v4096z32.pth).
"""
import os
import sys

if __name__ == "__main__":
    # launchers/ is sys.path[0] here and this file's name shadows the stdlib `tokenize` (which inspect
    # and linecache import): drop the folder before anything else is imported, so Ray workers never
    # inherit it either.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    from mvar_dist.data_pipeline.cli import main

    sys.exit(main())
else:
    # A sibling launcher (launchers/ on its sys.path) imported `tokenize` and found this file:
    # become the stdlib module so that import keeps working.
    import sysconfig

    _std = os.path.join(sysconfig.get_paths()["stdlib"], "tokenize.py")
    with open(_std, encoding="utf-8") as _f:
        exec(compile(_f.read(), _std, "exec"), globals())
