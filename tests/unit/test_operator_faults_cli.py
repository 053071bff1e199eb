"""The error policy of every command (issue 25): a number a user gives is validated where it is parsed,
by one validator for config keys and CLI flags alike; an expected failure prints one `error:` line and
exits 2 without a traceback, which `--debug` (or MVAR_DIST_DEBUG=1) adds back."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mvar_dist.errors import run_cli

REPO = Path(__file__).resolve().parents[2]


def _launcher(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "launchers" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def _config_error(overrides, capsys) -> str:
    from mvar_dist.__main__ import main

    assert main(["config", "mvar_tiny", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("override, words", [
    ("log.log_every=0", "config key 'log.log_every': must be > 0, got 0"),
    ("model.mamba_headdim=0", "config key 'model.mamba_headdim': must be > 0, got 0"),
    ("tokenizer.patch_nums=[1,2,2,4]", "config key 'tokenizer.patch_nums': must be strictly increasing"),
    ("optim.clip=-1", "config key 'optim.clip': must be >= 0, got -1"),
    ("eval.top_p=0", "config key 'eval.top_p': must be in (0, 1], got 0"),
    ("optim.max_bad_steps=0", "config key 'optim.max_bad_steps': must be > 0"),
])
def test_config_numbers_are_validated(override, words, capsys):
    assert words in _config_error([override], capsys)


def test_tokenizer_trainer_numbers_use_the_same_validator(capsys):
    main = _launcher("train_tokenizer")
    assert main(["log.log_every=0"]) == 2
    assert "error: config key 'log.log_every': must be > 0, got 0" in capsys.readouterr().err
    assert main(["ckpt.keep_last=0"]) == 2      # retention must keep the last good checkpoint
    assert "config key 'ckpt.keep_last': must be > 0" in capsys.readouterr().err
    assert main(["ckpt.verify=sha1"]) == 2      # the main trainer's check of the resume keys
    assert "config key 'ckpt.verify': must be one of ['hash', 'size'], got 'sha1'" in capsys.readouterr().err
    assert main(["ckpt.max_fallback_steps=-2"]) == 2
    assert "config key 'ckpt.max_fallback_steps': must be >= -1, got -2" in capsys.readouterr().err


@pytest.mark.parametrize("launcher, argv, words", [
    ("pretokenize", ["--variants", "0"], "argument --variants: must be > 0, got 0"),
    ("pretokenize", ["--limit", "-3"], "argument --limit: must be >= 0, got -3"),
    ("eval_service", ["--roots", "x", "--top-p", "0"], "argument --top-p: must be in (0, 1], got 0.0"),
    ("eval_service", ["--roots", "x", "--poll", "0"], "argument --poll: must be > 0, got 0.0"),
    ("eval_tokenizer", ["--images", "x", "--watch", "x", "--poll", "0"], "argument --poll: must be > 0"),
    ("sample", ["sample", "--ckpt", "x", "--out", "y", "--top-p", "1.5"], "argument --top-p: must be in (0, 1]"),
])
def test_cli_numbers_are_validated(launcher, argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        _launcher(launcher)(argv)
    assert e.value.code == 2
    assert words in capsys.readouterr().err


def test_expected_failure_is_one_line_and_debug_shows_traceback(tmp_path, capsys, monkeypatch):
    def main(argv):
        raise FileNotFoundError(f"no manifest.json under {tmp_path}: the token dataset is missing")

    monkeypatch.delenv("MVAR_DIST_DEBUG", raising=False)
    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err == f"error: no manifest.json under {tmp_path}: the token dataset is missing\n"
    assert run_cli(main, ["--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MVAR_DIST_DEBUG", "1")
    assert run_cli(main, []) == 2
    assert "Traceback" in capsys.readouterr().err


def test_bugs_keep_their_traceback():
    def main(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_cli(main, [])


def test_full_disk_during_save_says_no_space(capsys):
    def main(argv):
        torch.save(torch.zeros(1 << 20), "/dev/full")  # the zip writer fails like a full disk does
        return 0

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on device") and "free space" in err and err.count("\n") == 1


def test_launcher_subprocess_exit_code_and_single_line(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "launchers" / "train.py"), "--config", "mvar_tiny",
                        f"data.shards={tmp_path / 'none'}"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: no manifest.json under")


def test_free_space_check_and_what_one_checkpoint_needs(tmp_path):
    from mvar_dist.errors import OperatorError
    from mvar_dist.preflight import check_free_space
    from mvar_dist.train.startup import checkpoint_bytes

    check_free_space(tmp_path / "not" / "made" / "yet", 1 << 20, "ckpt.dir")  # the nearest existing parent's disk
    with pytest.raises(OperatorError, match=r"ckpt.dir=.*GiB free, one checkpoint needs about .* GiB"):
        check_free_space(tmp_path, 1 << 62, "ckpt.dir")
    n = 1_000_000
    assert checkpoint_bytes(n, False, 8, 8, True) == 16 * n  # one shared folder: every rank's files + exports
    assert checkpoint_bytes(n, True, 8, 8, True) == 22 * n
    # s3:// staging on 2 nodes of 4 ranks: each node holds half the ZeRO-3 states; rank 0's node the exports too
    assert checkpoint_bytes(n, False, 4, 8, True) == 9 * n and checkpoint_bytes(n, False, 4, 8, False) == 7 * n
    assert checkpoint_bytes(n, True, 4, 8, False) == 9 * n
