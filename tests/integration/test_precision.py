"""Precision modes: the filled DeepSpeed config of each, the official fp16 loss-scale rule, what stays
fp32 under autocast, and (slow) every mode training, checkpointing and resuming on 2 gloo ranks."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from mvar_dist.config import ConfigError, load_config
from mvar_dist.train.amp import GROWTH_INTERVAL, INIT_SCALE, MAX_SCALE, OfficialLossScaler
from mvar_dist.train.engine import engine_dtype, fill_ds_config, read_ds_config

MODES = ("fp32", "bf16", "bf16-autocast", "fp16")


@pytest.mark.parametrize("mode", MODES)
def test_filled_config_per_mode_reduces_and_accumulates_in_fp32(mode):
    cfg = load_config("mvar_tiny", [f"optim.precision={mode}"])
    ds = fill_ds_config(read_ds_config(None), cfg, world_size=2)
    assert ds["communication_data_type"] == "fp32" and ds["data_types"]["grad_accum_dtype"] == "fp32"
    assert ds["bf16"]["enabled"] == (mode == "bf16") and ds["fp16"]["enabled"] is False
    autocast = {"bf16-autocast": "bfloat16", "fp16": "float16"}.get(mode)
    if autocast is None:
        assert "torch_autocast" not in ds
    else:   # fp32 weights; no module's gradients are reduced in the autocast dtype
        assert ds["torch_autocast"] == {"enabled": True, "dtype": autocast, "lower_precision_safe_modules": []}
    assert engine_dtype(cfg) == (torch.bfloat16 if mode == "bf16" else torch.float32)


def test_a_user_ds_config_without_dtypes_gets_fp32_reduction():
    cfg = load_config("mvar_tiny", ["optim.precision=bf16"])
    tpl = {k: v for k, v in read_ds_config(None).items() if k not in ("communication_data_type", "data_types")}
    ds = fill_ds_config(tpl, cfg, world_size=2)
    assert ds["communication_data_type"] == "fp32" and ds["data_types"] == {"grad_accum_dtype": "fp32"}
    explicit = fill_ds_config({**tpl, "communication_data_type": "bf16"}, cfg, world_size=2)
    assert explicit["communication_data_type"] == "bf16"      # an explicit choice is kept


def test_a_contradicting_ds_config_is_refused():
    cfg = load_config("mvar_tiny", ["optim.precision=fp16"])
    with pytest.raises(ConfigError, match="not fp16 weights"):
        fill_ds_config({**read_ds_config(None), "fp16": {"enabled": True}}, cfg, world_size=1)


def test_official_loss_scale_rule():
    s = OfficialLossScaler()
    assert s.loss_scale == INIT_SCALE == 2048.0
    for _ in range(GROWTH_INTERVAL - 1):
        s.update_scale(False)
    assert s.loss_scale == 2048.0
    s.update_scale(False)
    assert s.loss_scale == 4096.0                  # x2 after 1000 finite steps in a row
    s.update_scale(True)
    assert s.loss_scale == 2048.0 and s.good_steps == 0
    for _ in range(10 * GROWTH_INTERVAL):
        s.update_scale(False)
    assert s.loss_scale == MAX_SCALE == 32768.0    # the official cap


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_norms_ssm_params_and_logits_fp32(dtype, one_thread):
    from mvar_dist.model import MVAR

    cfg = load_config("mvar_tiny")
    model = MVAR.from_config(cfg)
    block, seen = model.blocks[0], []
    orig_ln = block._ln
    block._ln = lambda x: seen.append(orig_ln(x).dtype) or orig_ln(x)
    with torch.autocast("cpu", dtype=dtype):
        logits = model(torch.arange(2), torch.randn(2, model.L - model.first_l, model.z_channels))
    assert logits.dtype == torch.float32
    assert seen and set(seen) == {torch.float32}    # layer norms run on the fp32 residual stream
    for name in ("A_log", "dt_bias", "D"):
        assert getattr(block.mamba, name).dtype == torch.float32


@pytest.mark.slow
@pytest.mark.parametrize("mode", ("bf16", "bf16-autocast", "fp16"))
def test_mode_trains_checkpoints_and_resumes_on_two_ranks(mode, tmp_path):
    """Resumed from step 3 on 2 ranks: the uninterrupted run's losses exactly. On 1 rank (DeepSpeed's universal
    conversion): the same batches, losses differing only by the order gradients are summed in."""
    from test_train_loop import _make_token_shards, run_train

    shards = _make_token_shards(tmp_path / "tok")
    args = ["--config", "mvar_tiny", "optim.max_steps=6", "optim.tblr=0.05", "ckpt.every_steps=3",
            f"optim.precision={mode}", f"data.shards={shards}"]
    p = run_train(2, [*args, f"out_dir={tmp_path / 'a'}"])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for out, world, rel in (("b", 2, 1e-6), ("c", 1, 2e-3)):
        (tmp_path / out / "checkpoints").mkdir(parents=True)
        shutil.copytree(tmp_path / "a/checkpoints/step_00000003", tmp_path / out / "checkpoints/step_00000003")
        p = run_train(world, [*args, f"out_dir={tmp_path / out}"])
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        assert "resumed from" in p.stdout and ("universal conversion from world size 2" in p.stdout) == (world == 1)
        _assert_continues(tmp_path / "a", tmp_path / out, rel, INIT_SCALE if mode == "fp16" else 1.0)


def _assert_continues(ref_run, run, rel: float, amp_scale: float) -> None:
    from test_train_loop import _losses

    ref, got = _losses(ref_run), _losses(run)
    assert sorted(got) == [4, 5, 6]
    for s in got:
        assert got[s]["fingerprint"] == ref[s]["fingerprint"]
        assert got[s]["loss"] == pytest.approx(ref[s]["loss"], rel=rel), s
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["amp_scale"] == amp_scale
