"""Operator faults of the main trainer (issue 25), each run as an operator would run it: one process,
`launchers/train.py`, tiny M-VAR on real token shards. Every case asserts the `error:` line and exit 2
(no traceback), or that nothing was lost."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from s3_utils import TEST_ENV, moto_s3  # noqa: F401
from test_train_loop import run_train, shards  # noqa: F401  (fixture)

from mvar_dist.preflight import OutputLock
from mvar_dist.runs import manifest as mf

pytestmark = pytest.mark.slow
BASE = ["--config", "mvar_tiny", "optim.tblr=0.05", "data.val_fraction=0"]


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory) -> Path:
    """A run of 4 steps with checkpoints at 2 and 4."""
    out = tmp_path_factory.mktemp("run")
    p = run_train(1, [*BASE, f"data.shards={shards}", f"out_dir={out}", "optim.max_steps=4", "ckpt.every_steps=2",
                      "ckpt.keep_last=5", "ckpt.export_dtype=none"])
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    cfg = dst / "config.yaml"
    if cfg.is_file():
        cfg.write_text(cfg.read_text().replace(str(run), str(dst)))
    return dst


def _expect_error(p, *needles: str) -> None:
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    line = [ln for ln in p.stderr.splitlines() if ln.startswith("error: ")]
    assert len(line) == 1, p.stderr[-3000:]
    for n in needles:
        assert n in line[0], line[0]


def test_num_classes_below_dataset_classes(shards, tmp_path):
    p = run_train(1, [*BASE, f"data.shards={shards}", f"out_dir={tmp_path}", "model.num_classes=9"])
    _expect_error(p, "model.num_classes", "has 10 classes", "set model.num_classes=10")


def test_ckpt_dir_not_writable(shards, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    p = run_train(1, [*BASE, f"data.shards={shards}", f"out_dir={tmp_path / 'o'}", f"ckpt.dir={blocker}/ckpt"])
    _expect_error(p, f"ckpt.dir={blocker}/ckpt cannot be written")


def test_ckpt_dir_bucket_missing(shards, tmp_path, moto_s3):  # noqa: F811
    p = run_train(1, [*BASE, f"data.shards={shards}", f"out_dir={tmp_path}", "ckpt.dir=s3://no-such-bucket-i25/run"])
    _expect_error(p, "ckpt.dir=s3://no-such-bucket-i25/run cannot be written", "bucket does not exist")


def test_ckpt_dir_without_s3_credentials(shards, tmp_path, moto_s3):  # noqa: F811
    endpoint, bucket = moto_s3
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL=endpoint)
    p = run_train(1, [*BASE, f"data.shards={shards}", f"out_dir={tmp_path}", f"ckpt.dir=s3://{bucket}/run"],
                  extra_env=env)
    _expect_error(p, "no usable S3 credentials")


def test_second_trainer_on_one_out_dir_is_refused(shards, tmp_path):
    with OutputLock(tmp_path, "out_dir"):
        p = run_train(1, [*BASE, f"data.shards={shards}", f"out_dir={tmp_path}", "optim.max_steps=2"])
    _expect_error(p, f"out_dir={tmp_path} is in use by another job")
    assert not (tmp_path / "checkpoints").exists() or not list((tmp_path / "checkpoints").iterdir())


def test_lost_meta_json_is_set_aside_not_deleted(finished, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "checkpoints" / "step_00000004" / "meta.json").unlink()
    p = run_train(1, [*BASE, f"data.shards={_shards_of(run)}", f"out_dir={run}", "optim.max_steps=4",
                      "ckpt.every_steps=2", "ckpt.keep_last=5", "ckpt.export_dtype=none"])
    assert p.returncode == 0, p.stderr[-3000:]
    kept = run / "checkpoints" / "damaged.step_00000004"
    assert (kept / mf.MARKER).is_file() and (kept / "ds").is_dir()      # nothing of it was deleted
    assert "meta.json is missing" in p.stdout + p.stderr


def _shards_of(run: Path) -> str:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["data"]["shards"]


def _rewrite_meta(folder: Path, **changes) -> None:
    """Change meta.json and re-seal the marker, as a checkpoint written with those values would be."""
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    marker = json.loads((folder / mf.MARKER).read_text())
    marker["files"] = mf.describe(folder, mf.folder_files(folder))
    (folder / mf.MARKER).write_text(mf.marker_text(marker))


def test_resume_refuses_another_tokenizer_unless_allowed(finished, tmp_path):
    run = _copy(finished, tmp_path)
    _rewrite_meta(run / "checkpoints" / "step_00000004", tokenizer_hash="0" * 64)
    args = [*BASE, f"data.shards={_shards_of(run)}", f"out_dir={run}", "optim.max_steps=4", "ckpt.export_dtype=none"]
    p = run_train(1, args)
    _expect_error(p, "was trained with tokenizer 000000000000...", "--allow-new-tokenizer")
    p = run_train(1, [*args, "--allow-new-tokenizer"])
    assert p.returncode == 0 and "resumed from" in p.stdout + p.stderr, p.stderr[-3000:]


def test_damaged_shard_is_an_error_line(shards, tmp_path):
    bad = tmp_path / "shards"
    shutil.copytree(shards, bad)
    shard = bad / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    p = run_train(1, [*BASE, f"data.shards={bad}", f"out_dir={tmp_path / 'o'}", "optim.max_steps=2"])
    _expect_error(p, "shard-00000.parquet", "truncated or replaced")
    shard.unlink()
    p = run_train(1, [*BASE, f"data.shards={bad}", f"out_dir={tmp_path / 'o'}", "optim.max_steps=2"])
    _expect_error(p, "shard-00000.parquet", "is missing")


def test_pickled_payload_in_ds_state_is_refused_on_resume(finished, tmp_path):
    import torch

    from test_operator_faults_security import Payload

    run = _copy(finished, tmp_path)
    step = run / "checkpoints" / "step_00000004"
    target = next((step / "ds" / "state").glob("*optim_states.pt"))
    sd = torch.load(target, weights_only=False)
    sd["extra"] = Payload(tmp_path / "pwned")
    torch.save(sd, target)
    _rewrite_meta(step)  # re-sealed: the file list matches, only the content is hostile
    p = run_train(1, [*BASE, f"data.shards={_shards_of(run)}", f"out_dir={run}", "optim.max_steps=6",
                      "ckpt.export_dtype=none"])
    _expect_error(p, "holds pickled objects that are not weights", target.name)
    assert not (tmp_path / "pwned").exists()


def test_token_shards_on_s3_without_credentials(tmp_path, moto_s3):  # noqa: F811
    endpoint, bucket = moto_s3
    env = {k: "" for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true", AWS_ENDPOINT_URL=endpoint)
    p = run_train(1, [*BASE, f"data.shards=s3://{bucket}/tokens", f"out_dir={tmp_path}"], extra_env=env)
    _expect_error(p, "no S3 credentials found")
