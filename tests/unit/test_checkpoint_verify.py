"""Verified checkpoints without DeepSpeed: the marker's file list, verification, --resume auto's fallback,
and the evaluation service skipping a damaged checkpoint. The 2-rank end-to-end case is in
test_checkpoint_damaged.py."""
import json

import pytest

from mvar_dist.train import checkpoint as ck
from mvar_dist.runs import manifest as mf

SHARD = "ds/state/zero_pp_rank_{}_mp_rank_00_{}_states.pt"


def _write(folder, rel, data: bytes):
    p = folder / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _rank_files(folder, rank, size=64):
    """A rank's files as the loop writes them; returns their relative paths (what the rank claims)."""
    rels = [SHARD.format(rank, kind) for kind in ("optim", "model")] + [f"rng/rank_{rank:05d}.pt"]
    for rel in rels[:2]:
        _write(folder, rel, bytes([rank + 1]) * size)
    _write(folder, rels[2], b"rng%d" % rank)
    return rels


def _save(root, step, world=2):
    """A step folder published the way the loop does it: rank files, shared files, reports, marker."""
    writers = [ck.CheckpointWriter(root, rank=r, keep_last=10, keep_every=0) for r in range(world)]
    tmp = writers[0].tmp_folder(step)
    for r, w in enumerate(writers):
        w.claim(step, [tmp / rel for rel in _rank_files(tmp, r, size=100 + step)])
    _write(tmp, "ds/zero_to_fp32.py", b"# script")
    writers[0].write_shared_files(step, {"meta.json": json.dumps({"step": step, "world_size": world, "arch": "mvar"})})
    reports = [w.report(step) for w in writers]
    return writers[0].publish(step, {}, reports)


def test_each_rank_reports_the_files_it_wrote_and_rank0_the_rest(tmp_path):
    own = {r: _rank_files(tmp_path, r) for r in (0, 1)}
    _write(tmp_path, "meta.json", b"{}")
    _write(tmp_path, "ds/universal/x.pt", b"later")  # the cached conversion is never listed
    r0, r1 = mf.rank_report(tmp_path, 0, own[0]), mf.rank_report(tmp_path, 1, own[1])
    assert r0["ok"] and r1["ok"]
    assert sorted(r1["files"]) == sorted(own[1])
    assert r1["files"]["rng/rank_00001.pt"] == {"size": 4, "sha256": mf.sha256_file(tmp_path / "rng/rank_00001.pt")}
    shared = mf.unclaimed(tmp_path, [r0, r1])
    assert shared == ["meta.json"]
    marker = mf.build_marker(7, [r0, r1], mf.describe(tmp_path, shared))
    assert marker["step"] == 7 and marker["world_size"] == 2 and marker["format"] == 3 and len(marker["files"]) == 7
    files = marker["files"]
    assert files[SHARD.format(1, "optim")]["rank"] == 1 and mf.owner(SHARD.format(1, "optim"), files[SHARD.format(1, "optim")]) == 1
    assert mf.owner("meta.json", files["meta.json"]) is None and files["meta.json"]["rank"] == 0


def test_ownership_comes_from_the_writer_not_the_file_name(tmp_path):
    """A per-rank file under any name is the writer's (new per-rank state needs no pattern); a file named
    like a ZeRO shard that no rank claimed is shared."""
    _write(tmp_path, "newstate/whatever.bin", b"rank 1's")
    _write(tmp_path, SHARD.format(5, "optim"), b"odd")
    r1 = mf.rank_report(tmp_path, 1, ["newstate/whatever.bin"])
    r0 = mf.rank_report(tmp_path, 0, [])
    files = mf.build_marker(2, [r0, r1], mf.describe(tmp_path, mf.unclaimed(tmp_path, [r0, r1])))["files"]
    assert mf.owner("newstate/whatever.bin", files["newstate/whatever.bin"]) == 1
    assert mf.owner(SHARD.format(5, "optim"), files[SHARD.format(5, "optim")]) is None


def test_format2_markers_still_tell_rank_files_by_name():
    entry = {"size": 1, "sha256": "a", "rank": 3}  # format 2: no "per_rank"
    assert mf.owner("ds/state/bf16_zero_pp_rank_3_mp_rank_00_optim_states.pt", entry) == 3
    assert mf.owner("rng/rank_00002.pt", entry) == 2 and mf.owner("ema/rank_00004.safetensors", entry) == 4
    assert mf.owner("meta.json", {"size": 1, "sha256": "a", "rank": 0}) is None


def test_a_rank_that_failed_means_no_marker(tmp_path):
    own = _rank_files(tmp_path, 0)
    (tmp_path / SHARD.format(0, "optim")).unlink()
    bad = mf.rank_report(tmp_path, 0, own)
    assert not bad["ok"] and "FileNotFoundError" in bad["error"] and "optim_states.pt" in bad["error"]
    with pytest.raises(ValueError, match="rank 0: FileNotFoundError"):
        mf.build_marker(3, [bad, {"rank": 1, "ok": True, "error": "", "files": {}}])
    two = [{"rank": r, "ok": True, "error": "", "files": {"x": {"size": 1, "sha256": "a"}}} for r in (0, 1)]
    with pytest.raises(ValueError, match="reported by rank 0 and rank 1"):
        mf.build_marker(3, two)
    with pytest.raises(ValueError, match="reported by rank 0 and as a shared file"):
        mf.build_marker(3, two[:1], {"x": {"size": 1, "sha256": "a"}})
    w = ck.CheckpointWriter(tmp_path / "root", 0, 2, 0)
    w.tmp_folder(5).mkdir(parents=True)
    with pytest.raises(ValueError, match="rank 1: disk full"):
        w.publish(5, {}, [{"rank": 0, "ok": True, "error": "", "files": {}},
                          {"rank": 1, "ok": False, "error": "disk full", "files": {}}])
    assert ck.list_checkpoints(w.root, complete_only=False) == []
    with pytest.raises(ValueError, match="not inside the step folder"):
        w.claim(5, [tmp_path / "elsewhere.pt"])


def test_verify_size_hash_missing_and_bad_marker(tmp_path):
    folder = _save(tmp_path, 10)
    marker = json.loads((folder / ck.MARKER).read_text())
    assert marker["format"] == mf.MARKER_FORMAT and "meta.json" in marker["files"]
    assert mf.verify_folder(folder, "hash") is None
    optim1 = folder / SHARD.format(1, "optim")
    data = optim1.read_bytes()
    optim1.write_bytes(data[:-3] + b"xyz")  # same size, other bytes
    assert mf.verify_folder(folder, "size") is None
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt has sha256" in mf.verify_folder(folder, "hash")
    optim1.write_bytes(data[:50])
    want = f"{SHARD.format(1, 'optim')} has 50 bytes, the marker says {len(data)}"
    assert mf.verify_folder(folder, "size") == want
    optim1.unlink()
    assert mf.verify_folder(folder, "hash") == f"{SHARD.format(1, 'optim')} is missing"
    assert mf.verify_folder(folder, "hash", only=["meta.json"]) is None  # a reader of a few files
    (folder / ck.MARKER).write_text('{"step": 10, "fi')
    assert mf.verify_folder(folder, "hash") == "COMPLETE is not valid JSON"
    with pytest.raises(ValueError, match="ckpt.verify"):
        mf.verify_folder(folder, "none")


def test_old_markers_are_accepted_with_a_warning(tmp_path):
    for text, step in (("", 4), ('{"step": 8}\n', 8)):
        folder = _save(tmp_path, step)
        (folder / ck.MARKER).write_text(text)
        (folder / SHARD.format(0, "optim")).write_bytes(b"x")  # damage cannot be seen without a file list
    plan = ck.choose_resume("auto", tmp_path, 2, {"arch": "mvar"})
    assert plan.folder.name == "step_00000008"
    assert any("no file list" in n and "unverified" in n for n in plan.notes)


def test_resume_auto_falls_back_to_newest_verified_and_keeps_damaged(tmp_path):
    for step in (4, 8, 12):
        _save(tmp_path, step)
    bad = tmp_path / "step_00000012" / SHARD.format(1, "optim")
    bad.write_bytes(bad.read_bytes()[:10])

    with pytest.raises(ValueError) as e:  # 4 steps back, the limit is 3: refused, nothing moved
        ck.choose_resume("auto", tmp_path, 2, {}, "hash", max_fallback_steps=3)
    msg = str(e.value)
    assert "step_00000012 is damaged: ds/state/zero_pp_rank_1_mp_rank_00_optim_states.pt has 10 bytes" in msg
    assert "step_00000008, is 4 steps before step_00000012" in msg and "ckpt.allow_fallback=true" in msg
    assert (tmp_path / "step_00000012").is_dir()

    plan = ck.choose_resume("auto", tmp_path, 2, {}, "size", max_fallback_steps=4)
    assert plan.folder.name == "step_00000008" and not plan.universal
    notes = "\n".join(plan.notes)
    assert "checkpoint step_00000012 is damaged: ds/state/zero_pp_rank_1_mp_rank_00_optim_states.pt" in notes
    assert "falling back to step_00000008" in notes
    kept = tmp_path / "damaged.step_00000012"
    assert (kept / SHARD.format(1, "optim")).is_file() and (kept / ck.MARKER).is_file()  # never deleted
    w = ck.CheckpointWriter(tmp_path, 0, keep_last=1, keep_every=0)
    w.clean_stale()
    w.apply_retention()
    assert kept.is_dir() and [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000008"]


def test_fallback_flag_explicit_folder_and_nothing_verifies(tmp_path):
    for step in (4, 8):
        _save(tmp_path, step)
    bad = tmp_path / "step_00000008" / "meta.json"
    bad.write_text(bad.read_text().replace("mvar", "MVAR"))  # same size
    with pytest.raises(ck.CheckpointDamaged, match="step_00000008 is damaged: meta.json has sha256"):
        ck.choose_resume(str(tmp_path / "step_00000008"), tmp_path, 2, {})
    assert (tmp_path / "step_00000008").is_dir()  # an explicit choice is refused, not moved
    plan = ck.choose_resume("auto", tmp_path, 2, {}, max_fallback_steps=0, allow_fallback=True)
    assert plan.folder.name == "step_00000004"
    (tmp_path / "step_00000004" / "rng" / "rank_00000.pt").unlink()
    with pytest.raises(ValueError, match="no checkpoint under .* verifies .*rng/rank_00000.pt is missing"):
        ck.choose_resume("auto", tmp_path, 2, {}, allow_fallback=True)


def test_clean_stale_keeps_marked_damaged_folders(tmp_path):
    folder = _save(tmp_path, 6)
    (folder / "meta.json").write_text("{}")
    ck.CheckpointWriter(tmp_path, 0, 2, 0).clean_stale()
    assert folder.is_dir()


def test_ckpt_config_fields():
    from mvar_dist.config import ConfigError, load_config

    cfg = load_config("mvar_tiny", ["ckpt.every_steps=7"])
    assert cfg.ckpt.verify == "hash" and cfg.ckpt.fallback_limit == 7 and not cfg.ckpt.allow_fallback
    assert load_config("mvar_tiny", ["ckpt.max_fallback_steps=0"]).ckpt.fallback_limit == 0
    with pytest.raises(ConfigError, match="ckpt.verify"):
        load_config("mvar_tiny", ["ckpt.verify=sha1"])


def test_eval_service_skips_and_reports_a_damaged_checkpoint(tmp_path):
    import torch

    from test_eval_service import _opts, write_checkpoint
    from mvar_dist.eval.service import EvalService

    run, logs = tmp_path / "runs" / "tiny", []
    for step in (10, 20):
        folder = write_checkpoint(run, step)
        report = {"rank": 0, "ok": True, "error": "", "files": mf.describe(folder, mf.folder_files(folder))}
        (folder / ck.MARKER).write_text(mf.marker_text(mf.build_marker(step, [report])))
    model = run / "checkpoints" / "step_00000020" / "model.safetensors"
    size = model.stat().st_size
    with open(model, "r+b") as f:
        f.truncate(size - 100)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        svc = EvalService(_opts(tmp_path / "runs", tmp_path / "eval", logs))
        rows = svc.run_once()
        assert [r["checkpoint_id"] for r in rows] == ["tiny/step_00000010"]
        want = (f"[eval] tiny/step_00000020: skipped, checkpoint step_00000020 is damaged: model.safetensors "
                f"has {size - 100} bytes, the marker says {size}")
        assert want in logs
        damaged = json.loads((tmp_path / "eval" / "damaged.json").read_text())
        assert list(damaged) == ["tiny/step_00000020"]
        assert "model.safetensors has" in damaged["tiny/step_00000020"]["problem"]
        assert svc.run_once() == [] and logs.count(want) == 1  # reported once, not every pass
    finally:
        torch.set_num_threads(threads)
    assert model.stat().st_size == size - 100  # the service never touches a local checkpoint
