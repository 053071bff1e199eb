"""Unit tests of the trainer parts that need no model: schedules, DeepSpeed config filling,
checkpoint folders/retention/selection, per-scale metrics and the TensorBoard/jsonl writer."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mvar_dist.config import ConfigError, load_config
from mvar_dist.train import checkpoint as ck
from mvar_dist.train.engine import batch_split, fill_ds_config, read_ds_config
from mvar_dist.train.metrics import MetricsWriter, scale_sums, summarize, token_losses
from mvar_dist.train.schedule import Schedule


def _sched(**kw):
    base = dict(peak_lr=1.0, max_steps=101, warmup_steps=10, wp0=0.005, wpe=0.1, sche="lin0", twd=0.05, twde=0.05)
    base.update(kw)
    return Schedule(**base)


def test_lr_warmup_then_flat_then_linear_to_wpe():
    s = _sched()
    assert s.lr(0) == pytest.approx(0.005)
    assert s.lr(5) == pytest.approx(0.005 + 0.995 * 0.5)
    assert s.lr(10) == pytest.approx(1.0)          # pasd = 0: flat region
    assert s.lr(14) == pytest.approx(1.0)          # pasd = 4/90 < 0.05
    assert s.lr(100) == pytest.approx(0.1)         # last step reaches wpe * peak
    mid = 10 + 45                                   # pasd = 0.5
    assert s.lr(mid) == pytest.approx(0.1 + 0.9 * 0.5 / 0.95)
    lrs = [s.lr(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_cos_schedule_and_wd_cosine():
    s = _sched(sche="cos", twd=0.05, twde=0.08)
    assert s.lr(10) == pytest.approx(1.0)
    assert s.lr(100) == pytest.approx(0.1)
    assert s.wd(0) == pytest.approx(0.05)
    assert s.wd(100) == pytest.approx(0.08)
    assert s.wd(50) == pytest.approx(0.065)
    assert _sched().wd(37) == pytest.approx(0.05)  # twde = twd: constant


def test_schedule_from_config_uses_epochs_and_peak_lr():
    cfg = load_config("mvar_tiny", ["optim.global_batch=512", "optim.tblr=1e-4", "optim.wp=2", "optim.epochs=10"])
    s = Schedule.from_config(cfg.optim, steps_per_epoch=7, max_steps=70)
    assert s.peak_lr == pytest.approx(2e-4)
    assert s.warmup_steps == 14


def test_batch_split_and_clear_errors():
    assert batch_split(8, 0, 2) == (4, 1)
    assert batch_split(8, 2, 2) == (2, 2)
    with pytest.raises(ConfigError, match="not divisible by world size 3"):
        batch_split(8, 0, 3)
    with pytest.raises(ConfigError, match="world size 2 x micro batch 3"):
        batch_split(8, 3, 2)


def test_fill_ds_config_resolves_every_auto():
    cfg = load_config("mvar_tiny", ["optim.precision=bf16", "optim.micro_batch=2"])
    ds = fill_ds_config(read_ds_config(None), cfg, world_size=2, load_universal=True)
    assert ds["train_batch_size"] == 8 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 2.0
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["reduce_bucket_size"] == 64 * 64 and z["stage3_param_persistence_threshold"] == 640
    assert ds["checkpoint"]["load_universal"] is True
    assert "auto" not in json.dumps(ds)


def test_fill_ds_config_rejects_contradictions():
    cfg = load_config("mvar_tiny")
    tpl = read_ds_config(None)
    tpl["train_batch_size"] = 16
    with pytest.raises(ConfigError, match="train_batch_size=16"):
        fill_ds_config(tpl, cfg, world_size=2)
    tpl = read_ds_config(None)
    tpl["optimizer"] = {"type": "Adam"}
    with pytest.raises(ConfigError, match="optimizer"):
        fill_ds_config(tpl, cfg, world_size=1)


def _fake_step(root, step, complete=True, world=2, arch="mvar"):
    d = root / ck.step_name(step)
    d.mkdir(parents=True)
    (d / "meta.json").write_text(json.dumps({"step": step, "world_size": world, "arch": arch}))
    if complete:
        (d / ck.MARKER).write_text("")
    return d


def test_incomplete_folder_is_never_selected(tmp_path):
    _fake_step(tmp_path, 10)
    _fake_step(tmp_path, 20, complete=False)
    assert ck.latest_checkpoint(tmp_path).name == "step_00000010"
    plan = ck.choose_resume("auto", tmp_path, world_size=2, expect={"arch": "mvar"})
    assert plan.folder.name == "step_00000010" and not plan.universal and plan.tag == ck.DS_TAG
    with pytest.raises(ValueError, match="COMPLETE"):
        ck.choose_resume(str(tmp_path / "step_00000020"), tmp_path, 2, {})
    w = ck.CheckpointWriter(tmp_path, rank=0, keep_last=2, keep_every=0)
    (tmp_path / ".tmp.step_00000030").mkdir()
    w.clean_stale()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000010"]


def test_choose_resume_world_size_change_and_arch_mismatch(tmp_path):
    _fake_step(tmp_path, 5, world=2)
    plan = ck.choose_resume("auto", tmp_path, world_size=1, expect={"arch": "mvar"})
    assert plan.universal and plan.tag == ck.UNIVERSAL_TAG
    with pytest.raises(ValueError, match="arch=mvar, this run has arch=var"):
        ck.choose_resume("auto", tmp_path, world_size=2, expect={"arch": "var"})
    assert ck.choose_resume("none", tmp_path, 2, {}) is None
    assert ck.choose_resume("auto", tmp_path / "empty", 2, {}) is None


def test_retention_keeps_exactly_k_plus_every_m(tmp_path):
    assert ck.retention_victims([5, 10, 15, 20, 25], keep_last=2, keep_every=10) == [5, 15]
    w = ck.CheckpointWriter(tmp_path, rank=0, keep_last=2, keep_every=0)
    for step in (3, 6, 9, 12):
        tmp = w.tmp_folder(step)
        tmp.mkdir(parents=True)
        w.publish(step, {"meta.json": json.dumps({"step": step, "world_size": 1})})
        assert not tmp.exists()
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000009", "step_00000012"]
    assert all((p / ck.MARKER).is_file() for p in ck.list_checkpoints(tmp_path))


def test_rng_roundtrip(tmp_path):
    torch.manual_seed(3)
    state = ck.capture_rng()
    a = torch.rand(4)
    w = ck.CheckpointWriter(tmp_path, rank=1, keep_last=1, keep_every=0)
    w.write_rank_files(7, state)
    ck.restore_rng(ck.load_rng(w.tmp_folder(7), 1))
    assert torch.equal(torch.rand(4), a)


def test_scale_sums_match_direct_computation():
    torch.manual_seed(0)
    patch_nums = (1, 2, 3)
    logits = torch.randn(3, 14, 11)
    target = torch.randint(0, 11, (3, 14))
    ce, loss = token_losses(logits, target)
    # Split the batch in two (two ranks) and sum: must equal the whole-batch statistics.
    sums = scale_sums(ce[:1], logits[:1], target[:1], patch_nums) + scale_sums(ce[1:], logits[1:], target[1:], patch_nums)
    out = summarize(sums, patch_nums)
    assert out["L_mean"] == pytest.approx(loss.item(), rel=1e-6)
    assert out["L_tail"] == pytest.approx(ce[:, 5:].mean().item(), rel=1e-6)
    assert out["loss_scale_1"] == pytest.approx(ce[:, 1:5].mean().item(), rel=1e-6)
    acc_tail = (logits[:, 5:].argmax(-1) == target[:, 5:]).float().mean().item() * 100
    assert out["acc_tail"] == pytest.approx(acc_tail)


def test_metrics_writer_tensorboard_and_jsonl_truncation(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def rec(step):
        return {"step": step, "epoch": 0, "loss": 1.0 / step, "L_mean": 1.0, "L_tail": 2.0, "acc_mean": 3.0,
                "acc_tail": 4.0, "loss_scale_0": 0.5, "lr": 1e-3, "wd": 0.05, "grad_norm": 1.5,
                "images_per_s": 10.0, "tokens_per_s": 300.0, "mfu": float("nan")}

    w = MetricsWriter(tmp_path, tmp_path / "tb", rank=0, total_steps=10, progress_bar=False)
    for s in (1, 2, 3):
        w.log_train(rec(s))
    w.log_val(3, {"loss": 0.7, "L_mean": 0.7, "L_tail": 0.9, "acc_mean": 1.0, "acc_tail": 2.0})
    w.close()
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/L_tail", "scale/loss_scale_0", "train/grad_norm", "perf/images_per_s",
            "val/loss"} <= tags
    assert "perf/mfu" not in tags  # NaN (unknown peak) is not written
    assert [e.value for e in ea.Scalars("train/loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    # A resume from step 2 drops the records after it.
    MetricsWriter(tmp_path, tmp_path / "tb", rank=0, total_steps=10, progress_bar=False, start_step=2).close()
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert not math.isnan(json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"])
