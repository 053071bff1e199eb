"""Memory planner (`python -m mvar_dist plan`): structure, CLI, errors, and one CPU calibration check."""
from __future__ import annotations

import json

import pytest
import torch

from mvar_dist.__main__ import main as cli
from mvar_dist.config import load_config
from mvar_dist.plan import PlanError, PlanSettings, activation_model, make_plan, predict_step_bytes
from mvar_dist.plan.measure import AllocationTracker, measure_step
from mvar_dist.plan.memory import max_micro_batch, model_state_bytes, zero3_buffer_bytes
from mvar_dist.plan.shapes import build_meta_model, shapes_of


@pytest.fixture(scope="module")
def d30():
    cfg = load_config("mvar_d30")
    return cfg, shapes_of(build_meta_model(cfg))


def _plan(cfg, shapes, **kw):
    return make_plan(cfg, shapes, PlanSettings(**kw), train_flops_per_image=1e12)


def test_zero3_model_state_shards_scale_one_over_n(d30):
    _, s = d30
    persistent = model_state_bytes(s, 10 ** 12)
    for n in (1, 2, 16, 64):
        state = model_state_bytes(s, n)
        for key in ("params", "grads", "master_fp32", "adam_states"):
            sharded = state[key] - persistent[key]
            assert sharded * n == pytest.approx(model_state_bytes(s, 1)[key] - persistent[key], rel=1e-9)
    one = model_state_bytes(s, 1)
    bytes_per_param = sum(one.values()) / s.num_params
    assert bytes_per_param == pytest.approx(2 + 4 + 4 + 8)  # bf16 params, fp32 grads + master, Adam m and v
    autocast = model_state_bytes(s, 1, "bf16-autocast")     # fp32 params are the master weights
    assert sum(autocast.values()) / s.num_params == pytest.approx(4 + 4 + 0 + 8)
    assert zero3_buffer_bytes(s, "bf16-autocast", 1)["autocast_cache"] == 2 * s.num_params


def test_activation_checkpointing_reduces_activations(d30):
    _, s = d30
    tiny = shapes_of(build_meta_model(load_config("var_tiny")))
    for shapes, a, impl in ((s, 2, "kernel"), (s, 4, "reference"), (tiny, 4, "reference")):
        off, on = activation_model(shapes, a, impl, False), activation_model(shapes, a, impl, True)
        assert on.saved < off.saved / 4
        assert on.peak < off.peak


def test_largest_micro_batch_is_monotonic_in_gpu_memory_and_count(d30):
    _, s = d30
    for ck in (False, True):
        by_mem = [max_micro_batch(s, PlanSettings(gpus=16, gpu_mem_gib=m), ck, "bf16") for m in (24, 40, 48, 80, 141)]
        assert by_mem == sorted(by_mem) and by_mem[-1] > by_mem[0]
        by_gpus = [max_micro_batch(s, PlanSettings(gpus=n, gpu_mem_gib=40), ck, "bf16") for n in (1, 2, 8, 64)]
        assert by_gpus == sorted(by_gpus)


def test_plan_batch_arithmetic_and_auto_checkpointing(d30):
    cfg, s = d30
    p = _plan(cfg, s, gpus=16, gpu_mem_gib=80)
    assert p.micro_batch * p.gpus * p.grad_accum == p.global_batch == cfg.optim.global_batch
    assert p.micro_batch <= p.max_micro_batch
    assert p.total_gib <= p.usable_gib
    small = _plan(cfg, s, gpus=4, gpu_mem_gib=24)  # auto turns checkpointing on and accumulates
    assert small.act_checkpoint and small.grad_accum > 1
    off = _plan(cfg, s, gpus=16, gpu_mem_gib=80, act_checkpoint="off", micro_batch=8)
    assert not off.act_checkpoint and off.grad_accum == 8


def test_cli_table_and_json(capsys):
    assert cli(["plan", "--config", "mvar_d30", "--gpus", "16", "--gpu-mem-gib", "80"]) == 0
    out = capsys.readouterr().out
    for text in ("fp32 master weights", "AdamW", "VQVAE tokenizer", "activations per image",
                 "largest micro batch that fits", "accumulation", "step time"):
        assert text in out
    assert cli(["plan", "--config", "var_d16", "--gpus", "8", "--gpu-mem-gib", "40", "--mfu", "0.5",
                "--peak-tflops", "989", "--act-checkpoint", "on", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["act_checkpoint"] is True and plan["gpus"] == 8
    assert plan["micro_batch"] * 8 * plan["grad_accum"] == plan["global_batch"]
    expect = plan["train_flops_per_image"] * plan["global_batch"] / (8 * 989e12 * 0.5)
    assert plan["step_time_s"] == pytest.approx(expect)
    assert set(plan["per_rank_gib"]) >= {"params", "grads", "master_fp32", "adam_states", "gathered_params",
                                         "activations_saved"}


def test_cli_errors(capsys):
    assert cli(["plan", "--config", "no_such_preset", "--gpus", "8", "--gpu-mem-gib", "80"]) == 2
    assert "mvar_d30" in capsys.readouterr().err  # lists the presets
    assert cli(["plan", "--config", "mvar_d30", "--gpus", "1", "--gpu-mem-gib", "16"]) == 2
    err = capsys.readouterr().err
    assert "not even 1 image" in err and "needs >=" in err and "GPUs" in err
    assert cli(["plan", "--config", "mvar_d30", "--gpus", "3", "--gpu-mem-gib", "80"]) == 2
    assert "not divisible by 3" in capsys.readouterr().err
    assert cli(["plan", "--config", "mvar_d30", "--gpus", "16", "--gpu-mem-gib", "80", "--micro-batch", "5"]) == 2
    assert "does not divide" in capsys.readouterr().err


def test_impossible_fit_names_a_gpu_count_that_fits(d30):
    cfg, s = d30
    with pytest.raises(PlanError) as e:
        _plan(cfg, s, gpus=1, gpu_mem_gib=16)
    n = int(str(e.value).split("needs >= ")[-1].split(" GPUs")[0])
    n = next(k for k in range(n, 1025) if cfg.optim.global_batch % k == 0)  # the trainer needs a divisor
    assert _plan(cfg, s, gpus=n, gpu_mem_gib=16).micro_batch >= 1
    mem = float(str(e.value).split("each needs >= ")[1].split(" GiB")[0])
    assert _plan(cfg, s, gpus=1, gpu_mem_gib=mem + 0.1).micro_batch == 1


def test_meta_build_leaves_real_models_working():
    cfg = load_config("mvar_tiny")
    shapes = shapes_of(build_meta_model(cfg))  # must not poison the ops' lru caches with meta tensors
    real = measure_step(cfg, 2, False)
    assert real["params"] == 4 * shapes.num_params


def test_allocation_tracker_counts_live_storages():
    x = torch.randn(1000, 1000, requires_grad=True)
    tracker = AllocationTracker()
    with tracker:
        a = x * 2          # 4 MB, saved by sin
        b = a.sin()        # 4 MB
        view = b.view(-1)  # shares b's storage
        del b, view
        assert tracker.live == 4_000_000
        del a
    assert tracker.live == 0 and tracker.peak == 8_000_000


@pytest.mark.parametrize("preset,checkpointing", [("mvar_tiny", False), ("mvar_tiny", True), ("var_tiny", True)])
def test_predicted_activation_peak_within_15_percent_of_measured(preset, checkpointing):
    """Calibration (CPU, fp32, world size 1): the planner's activation peak of one training step vs the
    peak of tensor bytes measured by the allocation tracker (docs/memory_planner.md)."""
    cfg = load_config(preset)
    shapes = shapes_of(build_meta_model(cfg))
    measured = measure_step(cfg, 8, checkpointing)
    predicted = predict_step_bytes(shapes, 8, checkpointing, "fp32", "reference")
    assert predicted["params"] == measured["params"] and predicted["grads"] == measured["grads"]
    assert predicted["peak"] == pytest.approx(measured["peak"], rel=0.15)
