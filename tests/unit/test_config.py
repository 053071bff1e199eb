import dataclasses

import pytest
import yaml

from mvar_dist.config import (ConfigError, RunConfig, build_config, list_presets, load_config, parse_overrides,
                              save_config, to_dict)

OFFICIAL = {  # depth: (global batch, epochs, tblr, alng, wpe, twde, warm-up epochs), docs/training.md "The recipe"
    12: (768, 200, 1e-4, 1e-3, 0.1, 0.05, 4), 16: (768, 200, 1e-4, 1e-3, 0.1, 0.05, 4),
    20: (768, 250, 1e-4, 1e-3, 0.1, 0.05, 5), 24: (768, 350, 8e-5, 1e-4, 0.01, 0.05, 7),
    30: (1024, 350, 8e-5, 1e-5, 0.01, 0.08, 7),
}


@pytest.mark.parametrize("arch", ["mvar", "var"])
@pytest.mark.parametrize("depth", [12, 16, 20, 24, 30, 32])
def test_depth_presets_derive_width_heads_and_recipe(arch, depth):
    cfg = load_config(f"{arch}_d{depth}")
    assert cfg.model.arch == arch and cfg.model.depth == depth
    assert cfg.model.width == 64 * depth and cfg.model.num_heads == depth
    assert cfg.model.drop_path_rate == pytest.approx(0.1 * depth / 24)
    if depth in OFFICIAL:
        bs, ep, tblr, alng, wpe, twde, wp = OFFICIAL[depth]
        o = cfg.optim
        assert (o.global_batch, o.epochs, o.alng, o.wpe, o.wp) == (bs, ep, alng, wpe, wp)
        assert o.tblr == pytest.approx(tblr) and o.twde == pytest.approx(twde)
        assert o.peak_lr == pytest.approx(tblr * bs / 256)
    # The released M-VAR d16/d20 checkpoints have no L2 attention norm; everything else has it.
    assert cfg.model.attn_l2_norm == (not (arch == "mvar" and depth in (16, 20)))


def test_every_preset_resolves():
    names = list_presets()
    assert {"mvar_tiny", "var_tiny", "demo"} <= set(names) and len(names) >= 15
    for name in names:
        cfg = load_config(name)
        assert cfg.tokenizer.patch_nums[-1] * cfg.tokenizer.downsample == cfg.tokenizer.resolution


def test_demo_preset_is_low_resolution():
    cfg = load_config("demo")
    assert cfg.tokenizer.resolution == 64 and cfg.tokenizer.patch_nums[-1] == 8


def test_overrides_are_typed_and_nested():
    tree = parse_overrides(["model.depth=16", "optim.tblr=8e-5", "tokenizer.patch_nums=[1,2,4]", "name=x"])
    assert tree == {"model": {"depth": 16}, "optim": {"tblr": "8e-5"}, "tokenizer": {"patch_nums": [1, 2, 4]},
                    "name": "x"}
    cfg = load_config("mvar_d16", ["model.depth=20", "optim.tblr=8e-5"])
    assert cfg.model.depth == 20 and cfg.model.width == 1280 and cfg.optim.tblr == pytest.approx(8e-5)


def test_yaml_round_trip(tmp_path):
    cfg = load_config("var_d24", ["optim.global_batch=512", "ckpt.keep_last=5"])
    path = save_config(cfg, tmp_path)
    again = load_config(path)
    assert to_dict(again) == to_dict(cfg)
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)
    assert not list(tmp_path.glob(".*tmp*")), "atomic write left a temp file"


@pytest.mark.parametrize("override, key", [
    (["model.dpeth=3"], "model.dpeth"),
    (["modle.depth=3"], "modle"),
    (["model.depth=three"], "model.depth"),
    (["model.attn_l2_norm=3"], "model.attn_l2_norm"),
    (["optim.tblr=fast"], "optim.tblr"),
    (["model.arch=gpt"], "model.arch"),
    (["optim.precision=int8"], "optim.precision"),
    (["tokenizer.patch_nums=[1,2,3]"], "tokenizer.patch_nums"),
    (["tokenizer.patch_nums=[1,16,8]"], "tokenizer.patch_nums"),
    (["tokenizer.resolution=512"], "tokenizer.patch_nums"),
    (["optim.global_batch=0"], "optim.global_batch"),
    (["optim.global_batch=10", "optim.micro_batch=4"], "optim.micro_batch"),
    (["model.width=100"], "model.width"),
    (["optim.betas=[0.9]"], "optim.betas"),
    (["depth"], "depth"),
    (["data.shards=..."], "data.shards"),   # not valid YAML: a clear error, not a parser traceback
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config("mvar_d16", override)
    assert e.value.key == key and f"'{key}'" in str(e.value)


def test_512px_patch_nums_are_accepted():
    cfg = load_config("mvar_d16", ["tokenizer.resolution=512", "tokenizer.patch_nums=[1,2,3,4,6,9,13,18,24,32]"])
    assert cfg.tokenizer.patch_nums[-1] == 32


def test_base_chain_and_unknown_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: mvar_tiny.yaml\nmodel: {depth: 3}\n")
    (tmp_path / "mvar_tiny.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="no config file"):
        load_config("does_not_exist")


def test_defaults_without_file():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig) and cfg.out_dir == "outputs/run" and cfg.ckpt.dir == "outputs/run/checkpoints"
    assert build_config({"model": {"depth": 12}}).model.width == 768


def test_cli_config_prints_resolved_yaml(capsys):
    from mvar_dist.__main__ import main

    assert main(["config", "var_d30", "optim.epochs=10"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["optim"]["epochs"] == 10 and out["model"]["width"] == 1920 and out["optim"]["twde"] == 0.08
    assert main(["config", "var_d30", "optim.nope=1"]) == 2
    assert "optim.nope" in capsys.readouterr().err
