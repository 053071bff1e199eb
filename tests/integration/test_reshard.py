"""`reshard`: a class-sorted token dataset rewritten into class-mixed shards, then read by the real
loader: batches near-uniform over classes, exactly the input's rows, resumable, refuses damaged input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mvar_dist.data import LoaderSettings, TokenLoader
from mvar_dist.data.mixing import mix_stats
from mvar_dist.data_pipeline import ReshardOptions, load_rows, reshard, verify
from shard_factory import flip_byte, write_token_shards

REPO = Path(__file__).resolve().parents[2]
CLASSES, IMAGES, PER_SHARD, WINDOW, BATCH = 120, 720, 30, 60, 24


def epoch_stats(uri: str, seed: int = 0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = TokenLoader(LoaderSettings(uri, BATCH, seed=seed, shuffle_window=WINDOW, verify_sha256=False))
    return mix_stats([labels.numpy() for labels, _ in loader], CLASSES)


def sorted_rows(uri: str):
    rows = load_rows(uri)
    keys = sorted(range(len(rows["label"])), key=lambda i: (rows["image_id"][i], int(rows["variant"][i])))
    return {k: v[keys] for k, v in rows.items()}


@pytest.fixture(scope="module")
def sorted_ds(tmp_path_factory) -> str:
    uri = str(tmp_path_factory.mktemp("sorted") / "shards")
    write_token_shards(uri, num_images=IMAGES, variants=2, images_per_shard=PER_SHARD, num_classes=CLASSES,
                       class_sorted=True)
    return uri


def test_sorted_dataset_gives_few_classes_per_batch_and_the_loader_names_reshard(sorted_ds):
    with pytest.warns(UserWarning, match="launchers/reshard.py"):
        TokenLoader(LoaderSettings(sorted_ds, BATCH, shuffle_window=WINDOW))
    s = epoch_stats(sorted_ds)
    assert s.median_classes < 0.6 * s.uniform_classes       # the failure reshard exists for


def test_reshard_mixes_classes_and_keeps_every_row(sorted_ds, tmp_path):
    dest = str(tmp_path / "mixed")
    reshard(ReshardOptions(sorted_ds, dest, seed=3, images_per_shard=PER_SHARD, work_dir=str(tmp_path / "w")))
    assert verify(dest) == []
    before, after = sorted_rows(sorted_ds), sorted_rows(dest)
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    m = json.loads((Path(dest) / "manifest.json").read_text())
    assert m["order"]["scheme"] == "pcg64-permutation-v1" and m["order"]["seed"] == 3
    assert len(m["shards"]) == IMAGES // PER_SHARD and not (tmp_path / "w").exists()
    for seed in (0, 1):
        s = epoch_stats(dest, seed)
        assert s.median_classes >= 0.9 * s.uniform_classes, s
        assert s.min_steps_ratio >= 0.9 or s.median_steps >= 0.9 * s.uniform_steps, s
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a class-mixed dataset: no warning
        TokenLoader(LoaderSettings(dest, BATCH, shuffle_window=WINDOW))


def test_killed_reshard_resumes_to_the_same_dataset(sorted_ds, tmp_path):
    clean, dest, work = str(tmp_path / "clean"), str(tmp_path / "killed"), str(tmp_path / "w")
    reshard(ReshardOptions(sorted_ds, clean, images_per_shard=50), log=lambda s: None)

    def die(line: str) -> None:
        if "wrote shard-00003" in line:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        reshard(ReshardOptions(sorted_ds, dest, images_per_shard=50, work_dir=work), log=die)
    assert not (Path(dest) / "manifest.json").exists() and len(list(Path(work).glob("scatter-*.json"))) == 24
    kept = {p.name: p.stat().st_mtime_ns for p in Path(dest).glob("*.parquet")}
    lines = []
    reshard(ReshardOptions(sorted_ds, dest, images_per_shard=50, work_dir=work), log=lines.append)
    assert not any("scattered" in s for s in lines) and sum("wrote shard" in s for s in lines) == 15 - len(kept)
    assert all((Path(dest) / n).stat().st_mtime_ns == t for n, t in kept.items())
    assert [p.read_bytes() for p in sorted(Path(dest).glob("*.parquet"))] == \
        [p.read_bytes() for p in sorted(Path(clean).glob("*.parquet"))]
    lines.clear()
    reshard(ReshardOptions(sorted_ds, dest, images_per_shard=50, work_dir=work), log=lines.append)
    assert any("nothing to do" in s for s in lines)


def test_damaged_input_and_bad_arguments_are_refused(sorted_ds, tmp_path):
    copy = tmp_path / "copy"
    write_token_shards(str(copy), num_images=60, images_per_shard=13, num_classes=10, class_sorted=True)
    flip_byte(str(copy / "shard-00002.parquet"))
    with pytest.raises(ValueError, match="shard-00002.parquet does not match the input manifest"):
        reshard(ReshardOptions(str(copy), str(tmp_path / "out"), work_dir=str(tmp_path / "w")))
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(ValueError, match="must differ"):
        reshard(ReshardOptions(str(copy), str(copy) + "/"))
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        reshard(ReshardOptions(str(tmp_path / "nothing"), str(tmp_path / "out2")))


@pytest.mark.slow
def test_reshard_command_on_s3(sorted_ds, moto_s3, tmp_path):  # noqa: F811
    endpoint, bucket = moto_s3
    src, dest = f"s3://{bucket}/sorted", f"s3://{bucket}/mixed"
    write_token_shards(src, num_images=IMAGES, variants=2, images_per_shard=PER_SHARD, num_classes=CLASSES,
                       class_sorted=True, storage_options={"endpoint_url": endpoint})
    cmd = [sys.executable, "launchers/reshard.py", "--source", src, "--dest", dest, "--images-per-shard", "40",
           "--work-dir", str(tmp_path / "w"), "--s3-endpoint", endpoint]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert verify(dest, endpoint) == []
    a, b = load_rows(src, endpoint), load_rows(dest, endpoint)
    assert sorted(zip(a["image_id"], a["variant"])) == sorted(zip(b["image_id"], b["variant"]))
    assert len(b["image_id"]) == 2 * IMAGES


from s3_utils import moto_s3  # noqa: E402,F401  (fixture)
