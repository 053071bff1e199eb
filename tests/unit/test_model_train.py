"""Training-side features: parameter counts, init, weight-decay groups, label dropout, activation
checkpointing, autocast, drop-path, FLOP counts."""
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mvar_dist.config import ModelConfig, load_config
from mvar_dist.model import MVAR
from mvar_dist.model.flops import forward_breakdown


def _tiny(arch="mvar", **kw):
    cfg = load_config(f"{arch}_tiny", [f"model.{k}={v}" for k, v in kw.items()])
    return MVAR.from_config(cfg), cfg


def _batch(model, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, model.num_classes, (B,), generator=g)
    x = torch.randn(B, model.L - 1, model.z_channels, generator=g)
    return labels, x


# exact (docs/model.md, "Parameter counts"; M-VAR d16/d20 presets use attn_l2_norm=False, as the released checkpoints)
EXPECTED = {"mvar_d12": 198_435_568, "mvar_d16": 464_157_184, "mvar_d20": 900_528_736,
            "mvar_d24": 1_550_067_136, "mvar_d30": 3_017_065_756, "mvar_d32": 3_658_707_968,
            "var_d16": 310_283_520, "var_d30": 2_010_020_356}


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_parameter_counts_match_spec(preset):
    cfg = load_config(preset)
    with torch.device("meta"):
        m = MVAR(cfg.model, cfg.tokenizer.patch_nums, cfg.tokenizer.vocab_size, cfg.tokenizer.z_channels)
    assert m.num_params() == EXPECTED[preset]


def test_mvar_d16_with_l2_attention():
    cfg = load_config("mvar_d16", ["model.attn_l2_norm=true"])
    with torch.device("meta"):
        m = MVAR(cfg.model, cfg.tokenizer.patch_nums, cfg.tokenizer.vocab_size, cfg.tokenizer.z_channels)
    assert m.num_params() == 464_157_440


@pytest.mark.parametrize("mode", ["official", "fixed"])
def test_init_gamma_rows(mode):
    cfg = ModelConfig(arch="mvar", depth=2, width=128, num_heads=2, num_classes=10, drop_path_rate=0.0)
    torch.manual_seed(0)
    m = MVAR(cfg, (1, 2, 3), 64, 8)
    m.init_weights(aln=0.5, alng=1e-3, init_gamma3=mode)
    C, std = 128, math.sqrt(1 / 128 / 3)
    w = m.blocks[0].ada_lin[1].weight
    s = [w[i * C:(i + 1) * C].std().item() / std for i in range(9)]
    assert s[0] < 2e-3 and s[1] < 2e-3 and 0.3 < s[3] < 0.6
    assert (s[2] < 2e-3) if mode == "fixed" else (0.3 < s[2] < 0.6)  # the FFN gate quirk
    assert torch.all(m.blocks[0].ada_lin[1].bias == 0) and torch.all(m.head.bias == 0)
    assert m.head.weight.std().item() < 0.03 * std
    torch.testing.assert_close(m.blocks[1].attn.proj.weight.std(), torch.tensor(std / 2), rtol=0.15, atol=0)
    assert torch.all(m.blocks[0].mamba.D == 1) and torch.all(m.blocks[0].mamba.A_log >= 0)
    with pytest.raises(ValueError, match="init_gamma3"):
        m.init_weights(init_gamma3="other")


def test_from_config_is_deterministic_per_seed():
    a, cfg = _tiny()
    b, _ = _tiny()
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    cfg.seed = 1
    c = MVAR.from_config(cfg)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_weight_decay_groups_follow_official_rule():
    m, _ = _tiny()
    nd = set(m.no_weight_decay_names())
    assert {"pos_start", "pos_1LC", "lvl_embed.weight", "blocks.0.attn.q_bias", "blocks.0.attn.scale_mul_1H11",
            "blocks.0.mamba.A_log", "blocks.0.mamba.D", "blocks.0.mamba.dt_bias", "blocks.0.mamba.norm.weight",
            "head.bias"} <= nd
    decayed = {n for n, _ in m.named_parameters()} - nd
    assert {"class_emb.weight", "word_embed.weight", "blocks.0.mamba.conv1d.weight", "blocks.0.mamba.in_proj.weight",
            "blocks.1.ada_lin.1.weight", "head.weight", "head_nm.ada_lin.1.weight"} <= decayed
    groups = m.param_groups(0.05)
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    torch.optim.AdamW(groups, lr=1e-3)  # accepted by torch as is


def test_forward_never_drops_labels():
    """Label dropout for CFG is the trainer's (deterministic `drop_labels`), not the model's."""
    m, _ = _tiny()
    labels, x = _batch(m)
    with torch.no_grad():
        train_logits = m.train()(labels, x)
        assert torch.equal(m.eval()(labels, x), train_logits)


def test_activation_checkpointing_same_loss_and_grads():
    m, _ = _tiny()
    labels, x = _batch(m)
    out = {}
    for ckpt in (False, True):
        m.act_checkpoint = ckpt
        m.zero_grad()
        loss = m(labels, x).logsumexp(-1).mean()
        loss.backward()
        out[ckpt] = (loss.detach(), [p.grad.clone() for p in m.parameters()])
    assert torch.equal(out[False][0], out[True][0])
    for a, b in zip(out[False][1], out[True][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_drop_path_is_stochastic_in_training_only():
    cfg = load_config("mvar_tiny", ["model.drop_path_rate=0.5"])
    m = MVAR.from_config(cfg)
    assert m.blocks[0].drop_path.p == 0.0 and m.blocks[-1].drop_path.p == 0.5
    labels, x = _batch(m)
    with torch.no_grad():
        m.eval()
        assert torch.equal(m(labels, x), m(labels, x))
        m.train()
        outs = [m(labels, x) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("arch", ["mvar", "var"])
def test_bf16_autocast_on_cpu(arch):
    m, _ = _tiny(arch)
    labels, x = _batch(m)
    ref = m(labels, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(labels, x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 1e-2
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    m.eval()
    with torch.no_grad():  # bf16 weights without autocast (DeepSpeed's bf16 mode)
        ref = m(labels, x)
        out = m.to(torch.bfloat16)(labels, x)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.05 * ref.abs().max()


@pytest.mark.parametrize("arch", ["mvar", "var"])
def test_flop_count_matches_traced_matmuls(arch):
    m, _ = _tiny(arch)
    labels, x = _batch(m, B=1)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        m.eval()
        m(labels, x)
    traced = counter.get_flop_counts()["Global"]
    traced_linear = sum(v for k, v in traced.items() if "mm" in str(k) and "bmm" not in str(k))
    bd = forward_breakdown(m.cfg, m.patch_nums, m.vocab_size, m.z_channels)
    assert bd["linear"] == traced_linear  # every Linear, exactly
    # attention: we count only the pairs the mask allows; the dense kernel does L² work
    dense = 2 * 2 * m.L * m.L * m.width * m.depth
    assert 0 < bd["attention"] < dense
    assert (bd["ssd"] > 0 and bd["conv"] > 0) == (arch == "mvar")
    assert m.flops_per_image(train=True) == 3 * sum(bd.values())
    assert m.flops_per_image(train=False) == 2 * sum(bd.values())
