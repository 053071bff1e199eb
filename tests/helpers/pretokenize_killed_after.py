"""Test-only wrapper: `python tests/helpers/pretokenize_killed_after.py N <launchers/pretokenize.py arguments>`.

Runs the real pre-tokenisation command line, and after this run has written N shards kills the
driver abruptly (exit code 75) with a half-written temp file of the next shard left behind, as a
kill in the middle of a write would (no fault injection lives in the library)."""
import os
import sys


def kill_after(n_shards):
    def shard_written(dest, written, pending):
        if written < n_shards:
            return
        if written < len(pending) and dest.local:
            with dest.fs.open(dest.path(pending[written].name) + ".tmp-killed", "wb") as f:
                f.write(b"PAR1 half a shard")
        sys.stdout.flush()
        os._exit(75)
    return shard_written


if __name__ == "__main__":
    from mvar_dist.data_pipeline import JobHooks
    from mvar_dist.data_pipeline.cli import main

    sys.exit(main(sys.argv[2:], hooks=JobHooks(shard_written=kill_after(int(sys.argv[1])))))
