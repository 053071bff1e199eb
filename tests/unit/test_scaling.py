"""Scaling sweeps, part 1: parameter/FLOP counts, sweep-file parsing, and the fits on synthetic data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mvar_dist.config import arch_spec, load_config
from mvar_dist.ops.attention import attention_pairs
from mvar_dist.scaling.fit import fit_chinchilla, fit_power_law, pareto_frontier, save_fits
from mvar_dist.scaling.params import count_params, flops_per_image
from mvar_dist.scaling.sweep import SweepError, expand, parse_sweep, validate_runs

# Exact counts from the official shapes (docs/model.md, "Parameter counts").
SPEC_PARAMS = {("var", 12): 133_186_960, ("var", 16): 310_283_520, ("var", 20): 600_917_136,
               ("var", 24): 1_033_399_360, ("var", 30): 2_010_020_356, ("var", 32): 2_437_155_840,
               ("mvar", 12): 198_435_568, ("mvar", 16): 464_157_440, ("mvar", 20): 900_529_136,
               ("mvar", 24): 1_550_067_136, ("mvar", 30): 3_017_065_756, ("mvar", 32): 3_658_707_968}


@pytest.mark.parametrize("arch,depth", sorted(SPEC_PARAMS))
def test_param_formula_matches_spec_table(arch, depth):
    cfg = load_config(f"{arch}_d{depth}", ["model.attn_l2_norm=true"])
    assert count_params(cfg, prefer_model=False).total == SPEC_PARAMS[arch, depth]


def test_param_formula_without_l2_attention_and_non_embedding():
    cfg = load_config("mvar_d16")  # the released d16 checkpoint has no scale_mul (docs/model.md)
    p = count_params(cfg, prefer_model=False)
    assert p.total == 464_157_184
    C = 1024
    assert p.total - p.non_embedding == (32 * C + C) + 1001 * C + C + 680 * C + 10 * C


def test_param_count_agrees_with_the_model_when_importable():
    pytest.importorskip("mvar_dist.model")
    for name in ("mvar_tiny", "var_tiny"):
        cfg = load_config(name, ["model.depth=3", "model.width=96", "model.num_heads=3"])
        from_model, from_formula = count_params(cfg), count_params(cfg, prefer_model=False)
        assert from_model.source == "model"
        assert (from_model.total, from_model.non_embedding) == (from_formula.total, from_formula.non_embedding)


def test_attention_pairs_and_flops_scale():
    pn = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert attention_pairs(pn, arch_spec("var").mask) == 286_434  # docs/model.md, "Attention dispatch"
    assert attention_pairs(pn, arch_spec("mvar").mask) == 110_468
    d16, d32 = load_config("var_d16"), load_config("var_d32")
    assert tuple(d16.tokenizer.patch_nums) == pn and (d16.tokenizer.vocab_size, d16.tokenizer.z_channels) == (4096, 32)
    f16, f32 = flops_per_image(d16), flops_per_image(d32)
    assert f16 == 3 * flops_per_image(d16, train=False)
    # ~6 x per-token block params (attn 4C^2 + FFN 8C^2; AdaLN runs once per image) x tokens, plus
    # attention scores and the head.
    assert 1.0 < f16 / (6 * 12 * 16 * 1024 ** 2 * 680) < 1.3
    assert 7 < f32 / f16 < 8.5


def _sweep(**kw):
    base = {"name": "t", "out_root": "/tmp/x", "archs": ["var", "mvar"], "depths": [1, 2], "preset": "{arch}_tiny",
            "head_dim": 32, "budgets": [{"name": "s4", "steps": 4}, {"name": "i64", "images": 64}],
            "seeds": [0, 1]}
    base.update(kw)
    return parse_sweep(base)


def test_sweep_expands_to_stable_ids_and_overrides():
    runs = expand(_sweep())
    assert len(runs) == 2 * 2 * 2 * 2
    assert runs[0].run_id == "var-d1-s4-s0" and runs[-1].run_id == "mvar-d2-i64-s1"
    assert [r.run_id for r in runs] == [r.run_id for r in expand(_sweep())]
    assert [r.fingerprint for r in runs] == [r.fingerprint for r in expand(_sweep(out_root="/elsewhere"))]
    assert len({r.fingerprint for r in runs}) == len(runs)
    cfg = runs[-1].config()
    assert (cfg.model.arch, cfg.model.depth, cfg.model.width, cfg.model.num_heads, cfg.seed) == ("mvar", 2, 64, 2, 1)
    assert cfg.out_dir == "/tmp/x/runs/mvar-d2-i64-s1"
    assert cfg.optim.max_steps == 64 // cfg.optim.global_batch  # images budget -> steps at the run's batch
    assert runs[0].config().optim.max_steps == 4


@pytest.mark.parametrize("change,field", [
    ({"archs": ["var", "vqgan"]}, "archs[1]"),
    ({"depths": [2, -1]}, "depths[1]"),
    ({"depthz": [2]}, "depthz"),
    ({"budgets": [{"name": "a", "epochs": "ten"}]}, "budgets[0].epochs"),
    ({"budgets": [{"name": "a", "epochs": 1, "steps": 2}]}, "budgets[0]"),
    ({"budgets": [{"name": "a", "epoch": 1}]}, "budgets[0].epoch"),
    ({"overrides": ["optim.tblr"]}, "overrides[0]"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"hardware": {"mfu": 2.0}}, "hardware.mfu"),
    ({"preset": "{arch}_{size}"}, "preset"),
])
def test_malformed_sweep_names_the_field(change, field):
    with pytest.raises(SweepError) as exc:
        _sweep(**change)
    assert exc.value.field == field
    assert f"'{field}'" in str(exc.value)


def test_bad_run_config_names_run_and_key(tmp_path):
    sweep = _sweep(overrides=["optim.tblrr=1e-3"])
    with pytest.raises(SweepError) as exc:
        validate_runs(sweep)
    assert exc.value.field.startswith("run var-d1-") and exc.value.field.endswith("optim.tblrr")
    with pytest.raises(SweepError, match="no sweep file"):
        from mvar_dist.scaling.sweep import load_sweep

        load_sweep(tmp_path / "missing.yaml")


def test_shipped_sweeps_resolve_by_name_from_any_folder(tmp_path, monkeypatch):
    from mvar_dist.config import configs_dir
    from mvar_dist.scaling.sweep import find_sweep, list_sweeps, load_sweep

    monkeypatch.chdir(tmp_path)  # no configs/ here: names must resolve against the shipped folder
    shipped = configs_dir() / "sweeps" / "var_mvar_scaling.yaml"
    assert {"cpu_demo", "var_mvar_scaling"} <= set(list_sweeps())
    for name in ("var_mvar_scaling", "sweeps/var_mvar_scaling", "configs/sweeps/var_mvar_scaling.yaml"):
        assert find_sweep(name) == shipped
    assert load_sweep("sweeps/cpu_demo").name == "cpu_demo"
    own = tmp_path / "cpu_demo.yaml"  # a file in the working folder wins over the shipped name
    own.write_text((configs_dir() / "sweeps" / "cpu_demo.yaml").read_text().replace("name: cpu_demo", "name: mine"))
    assert load_sweep("cpu_demo.yaml").name == "mine"
    with pytest.raises(SweepError, match="shipped sweep: .*cpu_demo.*var_mvar_scaling"):
        find_sweep("sweeps/no_such_sweep")
    with pytest.raises(SweepError, match="no sweep file"):
        find_sweep("elsewhere/var_mvar_scaling")  # only bare, sweeps/ or configs/sweeps/ names are shipped ones


def test_power_law_recovers_known_parameters():
    rng = np.random.default_rng(0)
    n = np.logspace(7, 9.5, 12)
    alpha, beta = -0.23, 2.0
    loss = (beta * n / 1e9) ** alpha * np.exp(rng.normal(0, 0.01, n.size))  # 1% multiplicative noise
    fit = fit_power_law(n, loss, x_scale=1e9, n_boot=300, seed=0)
    assert abs(fit.alpha - alpha) < 0.01 and abs(fit.beta / beta - 1) < 0.1
    assert fit.pearson_r < -0.995
    assert fit.ci["alpha"][0] <= fit.alpha <= fit.ci["alpha"][1] and fit.ci["alpha"][1] - fit.ci["alpha"][0] < 0.02
    lo, hi = fit.band(n)
    assert np.all(lo <= fit.predict(n) + 1e-12) and np.all(fit.predict(n) <= hi + 1e-12)
    # Reducible loss: the same law above a known entropy floor.
    fit_r = fit_power_law(n, loss + 3.0, x_scale=1e9, entropy=3.0, n_boot=50)
    assert abs(fit_r.alpha - fit.alpha) < 1e-9
    with pytest.raises(ValueError, match="entropy"):
        fit_power_law(n, loss + 3.0, entropy=5.0, n_boot=10)


def test_chinchilla_recovers_known_parameters():
    rng = np.random.default_rng(1)
    E, A, B, a, b = 1.69, 406.4, 410.7, 0.34, 0.28  # Chinchilla's own fit
    N = np.repeat(np.logspace(7, 10, 6), 6)
    D = np.tile(np.logspace(9, 12, 6), 6)
    L = (E + A / N ** a + B / D ** b) * np.exp(rng.normal(0, 0.005, N.size))  # 0.5% noise
    fit = fit_chinchilla(N, D, L, n_starts=8, n_boot=8, seed=0)
    assert abs(fit.E / E - 1) < 0.03
    assert abs(fit.a - a) < 0.03 and abs(fit.b - b) < 0.03
    assert abs(np.log(fit.A / A)) < 0.3 and abs(np.log(fit.B / B)) < 0.3
    assert np.max(np.abs(fit.predict(N, D) / L - 1)) < 0.03
    assert set(fit.ci) == {"E", "A", "B", "a", "b"} and fit.ci["a"][0] <= fit.ci["a"][1]


def test_fit_json_carries_data_hash_and_is_reproducible(tmp_path):
    x = np.array([1e6, 3e6, 1e7, 3e7])
    y = 5.0 * x ** -0.1
    f1 = fit_power_law(x, y, n_boot=20, seed=3)
    f2 = fit_power_law(x[::-1], y[::-1], n_boot=20, seed=3)
    assert f1.data_hash == f2.data_hash  # order-independent
    assert fit_power_law(x, y * 1.01, n_boot=20).data_hash != f1.data_hash
    p1 = save_fits({"f": f1}, tmp_path / "a.json")
    p2 = save_fits({"f": fit_power_law(x, y, n_boot=20, seed=3)}, tmp_path / "b.json")
    assert p1.read_bytes() == p2.read_bytes()
    assert json.loads(p1.read_text())["f"]["data_hash"] == f1.data_hash


def test_pareto_frontier():
    flops = [1, 2, 3, 4, 2.5]
    loss = [5, 4, 4.5, 3, 3.5]
    assert pareto_frontier(flops, loss).tolist() == [0, 1, 4, 3]
