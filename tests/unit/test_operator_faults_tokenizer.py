"""Operator faults of tokenizer training and of the tokenizer files it hands on (issue 25): a diverging
run skips and counts bad steps, stops with a message, never checkpoints or exports non-finite weights
and never loses its last good checkpoint; a NaN tokenizer file is refused wherever it is loaded."""
from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import pytest
import torch
from stripe_images import write_stripe_images

from mvar_dist.vqvae import MultiScaleVQVAE
from mvar_dist.vqvae.weights import NonFiniteWeightsError

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]
TINY = ["tokenizer.ch=32", "tokenizer.ch_mult=[1,1]", "tokenizer.vocab_size=64", "tokenizer.z_channels=8",
        "tokenizer.patch_nums=[1,2,4,8]", "tokenizer.resolution=16", "data.min_side=8", "data.num_workers=0",
        "optim.global_batch=4", "log.log_every=1", "optim.lr=1e-3", "loss.lpips=0", "quant.dead_every=0",
        "log.images_every=0"]
DIVERGE = ["optim.lr=1e30", "optim.max_bad_steps=2"]


def _launcher():
    spec = importlib.util.spec_from_file_location("train_tokenizer", REPO / "launchers" / "train_tokenizer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return write_stripe_images(tmp_path_factory.mktemp("tok_imgs"), 6, 24, 24)


def _run(argv, capsys):
    rc = _launcher()(argv)
    return rc, capsys.readouterr()


def test_diverging_run_stops_with_message_and_exports_nothing(tmp_path, image_dir, capsys):
    out = tmp_path / "run"
    rc, cap = _run(TINY + DIVERGE + [f"data.root={image_dir}", f"out_dir={out}", "optim.max_steps=8", "ckpt.every_steps=4"],
                   capsys)
    assert rc == 2
    assert "error: stopping: 2 consecutive steps had non-finite loss or gradients" in cap.err
    assert "optim.max_bad_steps=2" in cap.err and "Traceback" not in cap.err
    assert "update skipped" in cap.out
    assert not (out / "export").exists()
    assert not list(out.glob("ckpt/step_*"))


def test_resume_with_diverging_lr_keeps_good_checkpoint_and_export(tmp_path, image_dir, capsys):
    out = tmp_path / "run"
    base = TINY + [f"data.root={image_dir}", f"out_dir={out}", "ckpt.every_steps=2", "ckpt.keep_last=1"]
    assert _run(base + ["optim.max_steps=4"], capsys)[0] == 0
    export = out / "export" / "vae.safetensors"
    good_bytes = export.read_bytes()
    rc, cap = _run(base + DIVERGE + ["optim.max_steps=12"], capsys)
    assert rc == 2 and "error: stopping:" in cap.err
    assert (out / "ckpt" / "step_00000004" / "COMPLETE").is_file()   # the last good checkpoint survives
    assert [p.name for p in (out / "ckpt").glob("step_*")] == ["step_00000004"]
    assert export.read_bytes() == good_bytes                           # the good export is not overwritten


def test_nan_weights_are_never_saved(tmp_path):
    vae = MultiScaleVQVAE.random(seed=0, ch=32, ch_mult=(1, 1), vocab_size=64, z_channels=8, patch_nums=(1, 2, 4, 8))
    with torch.no_grad():
        vae.decoder.conv_out.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="NaN/Inf values in 1 tensor"):
        vae.save_official(tmp_path / "vae.safetensors")
    assert not (tmp_path / "vae.safetensors").exists()


def _nan_tokenizer_file(tmp_path) -> Path:
    vae = MultiScaleVQVAE.random(seed=0, ch=32, ch_mult=(1, 1), vocab_size=64, z_channels=8, patch_nums=(1, 2, 4, 8))
    sd = vae.official_state_dict()
    sd["encoder.conv_in.weight"] = torch.full_like(sd["encoder.conv_in.weight"], float("nan"))
    path = tmp_path / "nan_vae.pth"
    torch.save(sd, path)
    return path


def test_pretokenize_refuses_nan_tokenizer(tmp_path, image_dir):
    from mvar_dist.config import load_config
    from mvar_dist.data_pipeline.job import load_driver_tokenizer

    path = _nan_tokenizer_file(tmp_path)
    cfg = load_config("mvar_tiny", ["tokenizer.ch=32", "tokenizer.ch_mult=[1,1]", "tokenizer.vocab_size=64",
                                    "tokenizer.z_channels=8", "tokenizer.patch_nums=[1,2,4,8]",
                                    "tokenizer.resolution=16", f"tokenizer.checkpoint={path}"])
    with pytest.raises(NonFiniteWeightsError, match=r"nan_vae.pth holds NaN/Inf values .*diverged run"):
        load_driver_tokenizer(cfg.tokenizer)


def test_tokenizer_init_from_nan_file_is_an_error_line(tmp_path, image_dir, capsys):
    path = _nan_tokenizer_file(tmp_path)
    rc, cap = _run(TINY + [f"data.root={image_dir}", f"out_dir={tmp_path / 'run'}", f"init={path}",
                           "optim.max_steps=2"], capsys)
    assert rc == 2 and "error:" in cap.err and "holds NaN/Inf values" in cap.err and "Traceback" not in cap.err


def test_exported_safetensors_follow_umask(tmp_path):
    vae = MultiScaleVQVAE.random(seed=0, ch=32, ch_mult=(1, 1), vocab_size=64, z_channels=8, patch_nums=(1, 2, 4, 8))
    path = vae.save_official(tmp_path / "vae.safetensors")
    mode = stat.S_IMODE(path.stat().st_mode)
    from mvar_dist.fsio import current_umask

    assert mode == 0o666 & ~current_umask()
    assert mode & stat.S_IROTH or current_umask() & 0o004


def test_second_tokenizer_trainer_on_one_out_dir_is_refused(tmp_path, image_dir, capsys):
    from mvar_dist.preflight import OutputLock

    out = tmp_path / "run"
    with OutputLock(out, "out_dir"):
        rc, cap = _run(TINY + [f"data.root={image_dir}", f"out_dir={out}", "optim.max_steps=2"], capsys)
    assert rc == 2 and f"error: out_dir={out} is in use by another job" in cap.err
    assert not (out / "ckpt").exists() or not list((out / "ckpt").iterdir())


def test_tokenizer_trainer_ckpt_dir_not_writable(tmp_path, image_dir, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    rc, cap = _run(TINY + [f"data.root={image_dir}", f"out_dir={tmp_path / 'run'}", f"ckpt.dir={blocker}/ckpt",
                           "optim.max_steps=2"], capsys)
    assert rc == 2 and f"error: ckpt.dir={blocker}/ckpt cannot be written" in cap.err


def test_tokenizer_checkpoint_that_lost_meta_json_is_set_aside(tmp_path, image_dir, capsys):
    out = tmp_path / "run"
    base = TINY + [f"data.root={image_dir}", f"out_dir={out}", "ckpt.every_steps=2", "ckpt.keep_last=3"]
    assert _run(base + ["optim.max_steps=4"], capsys)[0] == 0
    (out / "ckpt" / "step_00000004" / "meta.json").unlink()
    rc, cap = _run(base + ["optim.max_steps=6"], capsys)
    assert rc == 0 and "step_00000004 is damaged: meta.json is missing" in cap.out
    assert "kept step_00000004 (not deleted) as damaged.step_00000004" in cap.out
    assert (out / "ckpt" / "damaged.step_00000004" / "state.pt").is_file()
    assert (out / "ckpt" / "step_00000006" / "COMPLETE").is_file()


def test_tokenizer_resume_past_a_damaged_checkpoint_beyond_the_limit_is_one_error_line(tmp_path, image_dir, capsys):
    out = tmp_path / "run"
    base = TINY + [f"data.root={image_dir}", f"out_dir={out}", "ckpt.every_steps=2", "ckpt.keep_last=3"]
    assert _run(base + ["optim.max_steps=4"], capsys)[0] == 0
    state = out / "ckpt" / "step_00000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:-1])
    rc, cap = _run(base + ["optim.max_steps=6", "ckpt.max_fallback_steps=1"], capsys)
    assert rc == 2 and cap.err.count("\n") == 1 and "Traceback" not in cap.err
    assert cap.err.startswith("error: checkpoint step_00000004 is damaged: state.pt has ")
    assert "more than ckpt.max_fallback_steps=1; set ckpt.allow_fallback=true" in cap.err
    assert state.is_file()  # refused, so nothing was set aside or deleted


def test_second_tokenisation_job_on_one_dest_is_refused(tmp_path, image_dir):
    from mvar_dist.config import load_config
    from mvar_dist.data_pipeline import TokenizeOptions, VariantSpec, tokenize
    from mvar_dist.errors import OperatorError
    from mvar_dist.preflight import OutputLock

    cfg = load_config("mvar_tiny")
    dest = tmp_path / "shards"
    opts = TokenizeOptions(source=str(image_dir), dest=str(dest),
                           variants=VariantSpec(count=1, seed=0, hflip=False, resolution=cfg.tokenizer.resolution,
                                                min_side=8, non_rgb="convert"))
    with OutputLock(dest, "--dest"), pytest.raises(OperatorError, match=f"--dest={dest} is in use by another job"):
        tokenize(cfg.tokenizer, opts, log=lambda s: None)
