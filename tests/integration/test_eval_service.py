"""The checkpoint-watching service on real tiny MVAR checkpoints written in the trainer's layout."""
import json

import numpy as np
import pytest
import torch

from mvar_dist.eval.service import EvalService, ServiceOptions


pytestmark = pytest.mark.usefixtures("one_thread")


def write_checkpoint(run_dir, step, complete=True):
    """A step folder as the trainer publishes it: model.safetensors, config.yaml, meta.json, COMPLETE last."""
    from safetensors.torch import save_file

    from mvar_dist.config import load_config, save_config
    from mvar_dist.model import MVAR

    cfg = load_config("mvar_tiny", [f"seed={step}", f"out_dir={run_dir}"])
    folder = run_dir / "checkpoints" / f"step_{step:08d}"
    folder.mkdir(parents=True)
    model = MVAR.from_config(cfg)
    save_file({k: v.contiguous() for k, v in model.official_state_dict().items()}, folder / "model.safetensors")
    save_config(cfg, folder)
    (folder / "meta.json").write_text(json.dumps({"step": step, "epoch": 0, "arch": "mvar", "world_size": 1}))
    if complete:
        (folder / "COMPLETE").write_text(json.dumps({"step": step}))
    return folder


def _opts(root, work, logs, **kw):
    kw = {"batch_size": 5, **kw}
    return ServiceOptions(roots=[str(root)], work_dir=str(work), num_per_class=1, top_k=50,
                          poll_s=0, log=logs.append, **kw)


def test_service_evaluates_complete_checkpoints_once_and_survives_restart(tmp_path):
    run = tmp_path / "runs" / "tiny"
    work = tmp_path / "eval"
    logs = []
    write_checkpoint(run, 10)
    pending = write_checkpoint(run, 20, complete=False)  # still being written: no marker

    svc = EvalService(_opts(tmp_path / "runs", work, logs))
    assert any("FID skipped" in line and "--inception-weights" in line for line in logs)
    rows = svc.run_once()
    assert [r["checkpoint_id"] for r in rows] == ["tiny/step_00000010"]

    write_checkpoint(run, 30)  # appears while the service runs
    assert [r["checkpoint_id"] for r in svc.run_once()] == ["tiny/step_00000030"]
    assert svc.run_once() == []

    # restart: a new process finds every row in the table and does nothing
    logs.clear()
    restarted = EvalService(_opts(tmp_path / "runs", work, logs))
    assert restarted.run_once() == []
    assert not any("sampling" in line for line in logs)

    # the pending checkpoint completes: evaluated, exactly once
    (pending / "COMPLETE").write_text("{}")
    assert [r["checkpoint_id"] for r in restarted.run_once()] == ["tiny/step_00000020"]
    table = restarted.table.rows()
    assert sorted(r["checkpoint_id"] for r in table) == ["tiny/step_00000010", "tiny/step_00000020",
                                                        "tiny/step_00000030"]
    row = table[0]
    # the protocol travels with every row; without weights no metric is filled in and the row says why
    assert row["status"] == "fid_skipped" and row["fid"] == "" and "pt_inception-2015-12-05" in row["note"]
    assert (row["num_samples"], row["num_per_class"], row["cfg_scale"], row["top_k"], row["top_p"], row["seed"]) == \
        ("10", "1", "1.5", "50", "0.96", "0")
    assert row["image_format"] == "png" and row["inception_sha256"] == "" and len(row["model_sha256"]) == 64
    assert len(list((work / "samples" / "tiny" / "step_00000010").glob("*/*.png"))) == 10

    # TensorBoard under the run: the status text and a sample strip per checkpoint step
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb" / "eval"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    assert sorted(e.step for e in acc.Images("eval/samples")) == [10, 20, 30]
    assert sorted(e.step for e in acc.Tensors("eval/protocol/text_summary")) == [10, 20, 30]


def test_service_resumes_half_done_sampling(tmp_path):
    run = tmp_path / "run"
    write_checkpoint(run, 5)
    logs = []
    svc = EvalService(_opts(run, tmp_path / "eval", logs))
    (row,) = svc.run_once()
    sample_dir = tmp_path / "eval" / "samples" / "run" / "step_00000005"
    first = {p.name: p.read_bytes() for p in sample_dir.glob("*/*.png")}
    # simulate a crash during the second batch: drop the row and two of its images
    (tmp_path / "eval" / "eval_results.csv").unlink()
    for name in ("000005.png", "000009.png"):
        next(sample_dir.glob(f"*/{name}")).unlink()
    logs.clear()
    # restarted with another batch size: same protocol and folder (per-image seeds), only the 2 missing made
    (again,) = EvalService(_opts(run, tmp_path / "eval", logs, batch_size=3)).run_once()
    assert any("rank 0 resumed, 8 images already on disk" in line for line in logs)
    assert {p.name: p.read_bytes() for p in sample_dir.glob("*/*.png")} == first
    assert again["protocol_hash"] == row["protocol_hash"]


@pytest.mark.slow  # two 2048-dim eigendecompositions: seconds alone, minutes on the shared 2 cores
def test_service_with_inception_weights_reports_metrics(tmp_path):
    """The full metric path, with random Inception weights saved to a file (a test of wiring, not of quality)."""
    from mvar_dist.eval.inception import random_state_dict
    from mvar_dist.eval.reference import write_reference

    run = tmp_path / "run"
    write_checkpoint(run, 1)
    weights = tmp_path / "inception.pth"
    torch.save(random_state_dict(3), weights)
    # a reference batch in the ADM layout: statistics from random features plus 8 images for precision/recall
    rng = np.random.default_rng(0)
    feats = {"pool": rng.standard_normal((16, 2048)), "spatial": rng.standard_normal((16, 2023))}
    write_reference(tmp_path / "ref.npz", feats, "adm", rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    logs = []
    (skipped,) = EvalService(_opts(run, tmp_path / "eval", logs)).run_once()
    svc = EvalService(_opts(run, tmp_path / "eval", logs, inception_weights=str(weights),
                            reference_npz=str(tmp_path / "ref.npz")))
    (row,) = svc.run_once()
    assert row["status"] == "ok" and row["note"] == ""
    for k in ("fid", "sfid", "inception_score", "precision", "recall"):
        assert row[k] is not None and np.isfinite(row[k]), k
    assert row["fid"] > 0 and 1.0 <= row["inception_score"] <= 1008
    assert row["inception_sha256"] == svc.evaluator.inception_sha256 != ""
    assert len(row["reference_sha256"]) == 64
    # adding weights is a new protocol: the checkpoint is evaluated again, reusing the samples on disk
    assert row["protocol_hash"] != skipped["protocol_hash"] and row["sample_dir"] == skipped["sample_dir"]
    assert any("rank 0 resumed, 10 images already on disk" in line for line in logs)
    assert len(svc.table.rows()) == 2


def test_weights_ema_is_its_own_protocol_and_samples_model_ema(tmp_path):
    """weights=ema: model_ema.safetensors is verified and sampled, the row and sample folder are its own
    (another protocol hash), the raw protocol hash is the one it had before the field existed."""
    import dataclasses
    import hashlib
    import shutil

    from mvar_dist.eval.results import Protocol

    proto = Protocol(num_classes=10, num_per_class=1, cfg_scale=1.5, top_k=50, top_p=0.96, more_smooth=False, seed=0,
                     resolution=64)
    old = {k: v for k, v in dataclasses.asdict(proto).items() if k != "weights"}
    assert proto.hash() == hashlib.sha256(json.dumps(old, sort_keys=True, separators=(",", ":")).encode()
                                          ).hexdigest()[:16]
    assert dataclasses.replace(proto, weights="ema").hash() != proto.hash()

    run, work, logs = tmp_path / "runs" / "tiny", tmp_path / "eval", []
    folder = write_checkpoint(run, 10)
    raw_rows = EvalService(_opts(tmp_path / "runs", work, logs)).run_once()
    ema_svc = EvalService(_opts(tmp_path / "runs", work, logs, weights="ema"))
    assert ema_svc.run_once() == []  # no model_ema.safetensors: skipped and said so, not sampled, not "damaged"
    assert any("no model_ema.safetensors (trained without ema.enabled)" in line for line in logs)
    assert not (work / "damaged.json").exists()
    # An "EMA" that differs from the raw weights (another init), listed in the marker like the trainer does.
    other = write_checkpoint(tmp_path / "other", 11)  # seed 11: other weights
    shutil.copy(other / "model.safetensors", folder / "model_ema.safetensors")
    from mvar_dist.runs import manifest as mf

    names = ["model.safetensors", "model_ema.safetensors", "config.yaml", "meta.json"]
    (folder / "COMPLETE").write_text(mf.marker_text(mf.build_marker(10, [
        {"rank": 0, "ok": True, "error": "", "files": mf.describe(folder, names)}])))
    (ema_row,) = ema_svc.run_once()
    assert ema_row["weights"] == "ema" and ema_row["protocol_hash"] != raw_rows[0]["protocol_hash"]
    assert ema_row["model_sha256"] != raw_rows[0]["model_sha256"] and ema_row["sample_dir"] != raw_rows[0]["sample_dir"]
    assert len(ema_svc.table.rows()) == 2 and (run / "tb" / "eval_ema").is_dir()
