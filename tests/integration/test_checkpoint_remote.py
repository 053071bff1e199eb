"""s3:// checkpoint roots against the moto server on 127.0.0.1, without DeepSpeed: upload and marker,
remote verification and fallback, retention and clean-up, and the evaluation service on a damaged remote
checkpoint. The 2-rank training case is in test_checkpoint_damaged.py."""
import json

import pytest
from s3_utils import moto_s3  # noqa: F401  (fixture)
from test_checkpoint_verify import SHARD, _rank_files, _write

from mvar_dist.train import checkpoint as ck
from mvar_dist.runs import manifest as mf
from mvar_dist.runs.storage import RemoteRoot
from mvar_dist.train.remote_fetch import files_for_rank

pytestmark = pytest.mark.slow


def _save_remote(root, stage, step, fail_rank=None):
    """The loop's remote save with two ranks on one disk: stage, report (= upload), publish."""
    writers = [ck.CheckpointWriter(root, r, keep_last=2, keep_every=0, stage_dir=stage) for r in (0, 1)]
    tmp = writers[0].tmp_folder(step)
    for r in (0, 1):
        writers[r].claim(step, [tmp / rel for rel in _rank_files(tmp, r, size=100 + step)])
    writers[0].write_shared_files(step, {"meta.json": json.dumps({"step": step, "world_size": 2}),
                                         "loader.json": "{}"})

    def boom(s, r):
        if r == fail_rank:
            raise OSError("network down")

    reports = [w.report(step, boom) for w in writers]
    return writers[0].publish(step, {}, reports)


def test_upload_marker_retention_and_clean_up(moto_s3, tmp_path):
    root = f"s3://{moto_s3[1]}/a/checkpoints"
    for step in (4, 8, 12):
        assert _save_remote(root, tmp_path / "stage", step) == f"{root}/{ck.step_name(step)}"
    store = RemoteRoot(root)
    assert store.names() == ["step_00000008", "step_00000012"]  # keep_last=2, deleted remotely
    files = mf.parse_marker(store.read_text("step_00000012", mf.MARKER))
    assert files[SHARD.format(1, "optim")]["rank"] == 1 and store.problem("step_00000012", "hash") is None
    assert files_for_rank(files, 1) == [SHARD.format(1, "model"), SHARD.format(1, "optim"), "loader.json",
                                        "meta.json", "rng/rank_00001.pt"]

    with pytest.raises(ValueError, match="rank 1: upload failed .OSError: network down"):
        _save_remote(root, tmp_path / "stage", 16, fail_rank=1)
    assert store.names() == ["step_00000008", "step_00000012"]  # no marker: invisible
    assert "step_00000016" in store.names(complete_only=False)
    ck.CheckpointWriter(root, 0, 2, 0, stage_dir=tmp_path / "stage").clean_stale()
    assert store.names(complete_only=False) == ["step_00000008", "step_00000012"]
    assert not (tmp_path / "stage").exists()


def test_remote_resume_verifies_and_falls_back(moto_s3, tmp_path):
    root = f"s3://{moto_s3[1]}/b/checkpoints"
    for step in (4, 8):
        _save_remote(root, tmp_path / "stage", step)
    store = RemoteRoot(root)
    key = f"{store.base}/step_00000008/{SHARD.format(0, 'model')}"
    store.fs.pipe_file(key, b"\0" * 108)  # same size, other bytes
    assert store.problem("step_00000008", "size") is None
    assert "has sha256" in store.problem("step_00000008", "hash")

    plan = ck.choose_resume("auto", root, 2, {}, "hash", max_fallback_steps=4, stage_dir=tmp_path / "dl")
    assert plan.remote == f"{root}/step_00000004" and plan.folder == tmp_path / "dl" / "step_00000004"
    assert any("step_00000008 is damaged" in n for n in plan.notes)
    assert store.names() == ["step_00000004"] and store.exists("damaged.step_00000008")  # kept, not deleted
    other = ck.choose_resume("auto", root, 1, {}, stage_dir=tmp_path / "dl")  # another world size: universal copy
    assert other.universal and other.tag == ck.UNIVERSAL_TAG and other.remote == f"{root}/step_00000004"


def test_eval_service_skips_damaged_remote_checkpoint(moto_s3, tmp_path):
    import s3fs

    from test_eval_service import _opts, write_checkpoint
    from mvar_dist.eval.service import EvalService

    local = tmp_path / "local" / "runA"
    for step in (10, 20):
        folder = write_checkpoint(local, step)
        report = {"rank": 0, "ok": True, "error": "", "files": mf.describe(folder, mf.folder_files(folder))}
        (folder / ck.MARKER).write_text(mf.marker_text(mf.build_marker(step, [report])))
    _write(local / "checkpoints" / "step_00000020", "config.yaml",
           (local / "checkpoints" / "step_00000020" / "config.yaml").read_bytes() + b"\n")
    fs = s3fs.S3FileSystem(endpoint_url=moto_s3[0])
    fs.put(str(local), f"{moto_s3[1]}/runs/runA", recursive=True)
    logs = []
    svc = EvalService(_opts(f"s3://{moto_s3[1]}/runs", tmp_path / "eval", logs))
    assert [r["checkpoint_id"] for r in svc.run_once()] == ["runA/step_00000010"]
    assert any("runA/step_00000020: skipped" in line and "config.yaml has" in line for line in logs)
    assert not (tmp_path / "eval" / "staged" / "runA" / "step_00000020").exists()  # the bad copy is dropped


def test_universal_copy_upload_and_download(moto_s3, tmp_path):
    """The cached universal copy of a remote checkpoint: uploaded with its own marker (last), downloaded
    whole by a rank on another node with sizes checked; a half-uploaded copy (no marker) does not count."""
    from mvar_dist.train import remote_fetch as remote

    root = f"s3://{moto_s3[1]}/u/checkpoints"
    _save_remote(root, tmp_path / "stage", 4)
    store = RemoteRoot(root)
    assert not remote.has_universal(store, "step_00000004")
    made = tmp_path / "rank0" / "step_00000004"
    for rel, data in (("zero/blocks.0.w/fp32.pt", b"a" * 10), ("zero/blocks.0.w/exp_avg.pt", b"b" * 7),
                      ("mp_rank_00_model_states.pt", b"c" * 5), (ck.MARKER, b"")):
        _write(made / "ds" / "universal", rel, data)
    remote.upload_universal(store, "step_00000004", made)
    assert remote.has_universal(store, "step_00000004")
    assert store.problem("step_00000004", "hash") is None  # the step's own marker is untouched

    other = tmp_path / "rank1" / "step_00000004"
    assert remote.download_universal(store, "step_00000004", other) is None
    got = sorted(p.relative_to(other).as_posix() for p in other.rglob("*") if p.is_file())
    assert got == ["ds/universal/COMPLETE", "ds/universal/mp_rank_00_model_states.pt",
                   "ds/universal/zero/blocks.0.w/exp_avg.pt", "ds/universal/zero/blocks.0.w/fp32.pt"]
    assert (other / "ds/universal/zero/blocks.0.w/fp32.pt").read_bytes() == b"a" * 10

    store.fs.pipe_file(f"{store.base}/step_00000004/ds/universal/zero/blocks.0.w/fp32.pt", b"a" * 9)
    third = tmp_path / "rank2" / "step_00000004"
    assert "zero/blocks.0.w/fp32.pt has 9 bytes, the marker says 10" in remote.download_universal(
        store, "step_00000004", third)
    assert not (third / "ds/universal" / ck.MARKER).exists()  # not trusted by another rank of this node
