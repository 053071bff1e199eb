"""End-to-end trainer tests: real DeepSpeed ZeRO-3 on 2 gloo ranks (torchrun), tiny M-VAR, real
token shards made by the tiny random tokenizer from the embedded dataset.

One uninterrupted 2-rank run (the reference) serves several assertions; the other runs are checked
against it: SIGTERM + `--resume auto` (same world size), resume at world size 1 from a 2-rank
checkpoint (universal conversion), the NaN guard, and clear errors for bad input.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from s3_utils import free_port

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "launchers" / "train.py"
NAN_STEPS_LAUNCHER = REPO / "tests" / "helpers" / "train_with_nan_steps.py"  # the launcher with a NaN-loss hook
MAX_STEPS = 12
COMMON = ["--config", "mvar_tiny", f"optim.max_steps={MAX_STEPS}", "optim.tblr=0.05", "ckpt.every_steps=4",
          "ckpt.keep_last=2", "data.val_fraction=0.3", "log.val_every=4"]

pytestmark = pytest.mark.slow


def _cmd(nproc: int, args, script: Path = LAUNCHER) -> list:
    if nproc == 1:
        return [sys.executable, str(script), *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *args]


def _env(extra=None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TORCH_EXTENSIONS_DIR=str(REPO / ".torch_extensions"),
               PYTHONWARNINGS="ignore")
    env.update(extra or {})
    return env


def run_train(nproc: int, args, extra_env=None, timeout=400,
              script: Path = LAUNCHER) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(nproc, args, script), cwd=REPO, env=_env(extra_env), capture_output=True, text=True,
                          timeout=timeout)


def _jsonl(path: Path) -> list:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _losses(out: Path, rank: int = 0) -> dict:
    return {r["step"]: r for r in _jsonl(out / "ranks" / f"rank{rank}.jsonl")}


def _make_token_shards(root: Path) -> Path:
    """Tokenise the embedded dataset (4 images per class, 2 variants: plain and flipped) with the
    run's own tokenizer (mvar_tiny, random weights seed 0) into one shard + manifest."""
    from PIL import Image

    from mvar_dist.config import load_config
    from mvar_dist.data.shards import MANIFEST_NAME, Manifest, ShardInfo, sha256_bytes
    from mvar_dist.data_pipeline.writer import shard_bytes
    from mvar_dist.demo_data import write_dataset
    from mvar_dist.vqvae import MultiScaleVQVAE

    cfg = load_config("mvar_tiny")
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0)
    img_root = write_dataset(root / "img", images_per_class=4, size=64, seed=0)
    classes = sorted(p.name for p in img_root.iterdir())
    paths = sorted(img_root.rglob("*.png"))
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 127.5 - 1)
                     .permute(2, 0, 1) for p in paths])
    toks = [torch.cat(vae.img_to_ids(x if v == 0 else x.flip(-1)), 1).numpy() for v in range(2)]
    ids = [str(p.relative_to(img_root)) for p in paths]
    labels = [classes.index(p.parent.name) for p in paths]
    n = len(ids)
    data = shard_bytes([i for i in ids for _ in range(2)], [lab for lab in labels for _ in range(2)],
                       [v for _ in range(n) for v in range(2)],
                       np.stack([toks[v][i] for i in range(n) for v in range(2)]))
    shards = root / "shards"
    shards.mkdir()
    (shards / "shard-00000.parquet").write_bytes(data)
    m = Manifest(tokenizer={"hash": vae.weights_hash(), "random_weights": True, "vocab_size": 256},
                 patch_nums=[1, 2, 3, 4], resolution=64,
                 variants={"count": 2, "seed": 0, "hflip": True, "scheme": "plain+flip"}, num_classes=10,
                 shards=[ShardInfo("shard-00000.parquet", 2 * n, sha256_bytes(data), len(data))], num_images=n)
    (shards / MANIFEST_NAME).write_text(m.to_json())
    return shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return _make_token_shards(tmp_path_factory.mktemp("tokens"))


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref")
    p = run_train(2, [*COMMON, f"data.shards={shards}", f"out_dir={out}"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return out


def test_loss_decreases_and_ranks_agree(reference):
    r0, r1 = _losses(reference, 0), _losses(reference, 1)
    assert sorted(r0) == list(range(1, MAX_STEPS + 1))
    first = np.mean([r0[s]["loss"] for s in (1, 2, 3)])
    last = np.mean([r0[s]["loss"] for s in (10, 11, 12)])
    assert last < first - 0.05, (first, last)
    for s in r0:  # the logged (all-reduced) loss is identical on both ranks; their own halves differ
        assert r0[s]["loss"] == r1[s]["loss"]
    assert any(abs(r0[s]["local_loss"] - r1[s]["local_loss"]) > 1e-4 for s in r0)
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == MAX_STEPS
    assert summary["images_seen"] == MAX_STEPS * 8
    assert summary["train_flops"] == pytest.approx(summary["flops_per_image"] * MAX_STEPS * 8)
    rec = _jsonl(reference / "metrics.jsonl")[-1]
    for key in ("step", "epoch", "images_seen", "tokens_seen", "train_flops", "loss", "L_mean", "L_tail", "acc_mean",
                "acc_tail", "loss_scale_0", "loss_scale_3", "lr", "wd", "grad_norm", "wall_time"):
        assert key in rec, key
    assert rec["tokens_seen"] == rec["images_seen"] * 30
    val = _jsonl(reference / "val_metrics.jsonl")
    assert [v["step"] for v in val] == [4, 8, 12] and all(np.isfinite(v["loss"]) for v in val)


def test_retention_marker_and_export(reference):
    from mvar_dist.model import MVAR
    from mvar_dist.train import checkpoint as ck

    root = reference / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step_00000008", "step_00000012"]  # keep_last=2 of 4, 8, 12
    for p in root.iterdir():
        assert (p / ck.MARKER).is_file() and (p / "ds" / ck.DS_TAG).is_dir()
        meta = ck.read_meta(p)
        assert meta["world_size"] == 2 and meta["arch"] == "mvar"
        assert json.loads((p / "loader.json").read_text())["samples_consumed"] >= 0
    model = MVAR.from_official(root / "step_00000012" / "model.safetensors", cond_drop_rate=0.1)
    assert model.arch == "mvar" and model.depth == 2
    from PIL import Image

    from mvar_dist.eval.preview import sample_grid

    png = sample_grid(root / "step_00000012", reference / "samples.png", per_class=1)
    assert Image.open(png).size == (64, 10 * 64)  # one row per class


def test_tensorboard_scalars(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(reference / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    want = {"train/loss", "train/L_mean", "train/L_tail", "train/acc_mean", "train/acc_tail", "train/lr", "train/wd",
            "train/grad_norm", "scale/loss_scale_0", "scale/loss_scale_3", "perf/images_per_s", "perf/tokens_per_s",
            "perf/step_time", "perf/data_time", "perf/compute_time", "perf/peak_mem_gb", "perf/amp_scale",
            "val/loss", "val/L_tail"}
    assert want <= tags, want - tags
    assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, MAX_STEPS + 1))


def test_sigterm_then_resume_auto_matches_uninterrupted(reference, shards, tmp_path):
    out = tmp_path / "b"
    args = [*COMMON, f"data.shards={shards}", f"out_dir={out}"]
    proc = subprocess.Popen(_cmd(2, args), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    metrics = out / "metrics.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 4:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    log, _ = proc.communicate(timeout=300)
    stopped = max(r["step"] for r in _jsonl(metrics))
    assert stopped < MAX_STEPS, "the run finished before SIGTERM arrived:\n" + log[-3000:]
    assert "stop requested" in log, log[-3000:]
    from mvar_dist.train import checkpoint as ck

    latest = ck.latest_checkpoint(out / "checkpoints")
    assert latest is not None and ck.read_meta(latest)["step"] == stopped  # saved at the step it stopped
    assert not (out / "summary.json").exists()

    p = run_train(2, [*args, "--resume", "auto"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"resumed from {latest}" in p.stdout
    ref, got = _losses(reference), _losses(out)
    assert sorted(got) == list(range(1, MAX_STEPS + 1))
    for s in range(stopped + 1, MAX_STEPS + 1):
        assert got[s]["loss"] == pytest.approx(ref[s]["loss"], abs=1e-6), s
        assert got[s]["fingerprint"] == ref[s]["fingerprint"]
    assert [r["step"] for r in _jsonl(metrics)] == list(range(1, MAX_STEPS + 1))


def test_resume_on_one_rank_from_two_rank_checkpoint(reference, shards, tmp_path):
    from mvar_dist.train import checkpoint as ck

    out = tmp_path / "c"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step_00000008", out / "checkpoints" / "step_00000008")
    # A newer folder whose save never completed (no marker): it must be ignored and cleaned away.
    broken = out / "checkpoints" / "step_00000010"
    shutil.copytree(reference / "checkpoints" / "step_00000012", broken)
    (broken / ck.MARKER).unlink()
    # micro batch 4 on one rank = 2 accumulation steps for the same global batch of 8.
    p = run_train(1, [*COMMON, f"data.shards={shards}", f"out_dir={out}", "optim.micro_batch=4"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "universal conversion from world size 2" in p.stdout and "x accum 2" in p.stdout
    assert (out / "checkpoints" / "step_00000008" / "ds" / ck.UNIVERSAL_TAG / ck.MARKER).is_file()
    assert not broken.exists()
    ref, got = _losses(reference), _losses(out)
    assert sorted(got) == list(range(9, MAX_STEPS + 1))
    for s in got:
        assert got[s]["fingerprint"] == ref[s]["fingerprint"], s  # same samples in the same global batches
        assert got[s]["loss"] == pytest.approx(ref[s]["loss"], abs=1e-5), s
    assert ck.read_meta(ck.latest_checkpoint(out / "checkpoints"))["world_size"] == 1


def test_nan_guard_skips_then_stops_bf16(shards, tmp_path):
    out = tmp_path / "d"
    p = run_train(1, ["2,4,5", "--config", "mvar_tiny", f"data.shards={shards}", f"out_dir={out}",
                      "optim.max_steps=8", "optim.precision=bf16", "optim.max_bad_steps=2", "ckpt.every_steps=1",
                      "ckpt.keep_last=10"], script=NAN_STEPS_LAUNCHER)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-2000:]
    assert "2 consecutive steps had non-finite loss" in p.stderr
    recs = {r["step"]: r for r in _jsonl(out / "metrics.jsonl")}
    assert np.isfinite(recs[1]["loss"]) and np.isfinite(recs[3]["loss"])  # bf16 trains
    assert recs[3]["skipped_steps"] == 1 and recs[5]["skipped_steps"] == 3
    steps = [int(x.name[5:]) for x in (out / "checkpoints").iterdir()]
    assert sorted(steps) == [1, 3]  # never after a bad step
    from safetensors.torch import load_file

    sd = load_file(str(out / "checkpoints" / "step_00000003" / "model.safetensors"))
    # Every learned tensor is finite (attn_bias_for_masking is the official -inf mask buffer).
    assert all(bool(np.isfinite(v.float().numpy()).all()) for k, v in sd.items()
               if v.is_floating_point() and k != "attn_bias_for_masking")


def test_clear_errors_for_bad_input(shards, tmp_path):
    p = run_train(2, ["--config", "mvar_tiny", f"data.shards={shards}", f"out_dir={tmp_path / 'e'}",
                      "optim.global_batch=6", "optim.micro_batch=2"])
    assert p.returncode != 0 and "world size 2 x micro batch 2 = 4" in p.stderr, p.stderr[-2000:]
    sys.path.insert(0, str(REPO / "tests" / "helpers"))
    from shard_factory import write_token_shards

    other = tmp_path / "other_tokens"
    write_token_shards(str(other), num_images=20)
    p = run_train(1, ["--config", "mvar_tiny", f"data.shards={other}", f"out_dir={tmp_path / 'f'}"])
    assert p.returncode == 2 and "tokenizer" in p.stderr, p.stderr[-2000:]
