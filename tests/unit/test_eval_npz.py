"""The .npz packer (standard arr_0 layout), reference-batch validation and the results table."""
import csv

import numpy as np
import pytest

from mvar_dist.eval.npz import load_images, pack_folder, save_png
from mvar_dist.eval.reference import ReferenceError, load_reference
from mvar_dist.eval.results import COLUMNS, PROTOCOL_COLUMNS, Protocol, ResultsTable


def _write_pngs(folder, n, h=12, w=10, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    imgs = np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    for i, img in enumerate(imgs):
        save_png(img, folder / f"{i:06d}.png")
    return imgs


def test_npz_packer_roundtrips_in_name_order(tmp_path):
    imgs = _write_pngs(tmp_path / "s", 7)
    n = pack_folder(tmp_path / "s", tmp_path / "out" / "samples.npz", expected=7)
    assert n == 7
    # the standard layout: a plain np.savez file with arr_0 uint8 (N, H, W, 3), PNG-lossless
    with np.load(tmp_path / "out" / "samples.npz") as data:
        assert data.files == ["arr_0"]
        arr = data["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (7, 12, 10, 3)
    np.testing.assert_array_equal(arr, imgs)
    np.testing.assert_array_equal(load_images(tmp_path / "out" / "samples.npz"), imgs)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["samples.npz"]  # no temp file left behind


def test_npz_packer_refuses_wrong_count_and_mixed_sizes(tmp_path):
    _write_pngs(tmp_path / "s", 3)
    with pytest.raises(ValueError, match="found 3 PNG files, expected exactly 4"):
        pack_folder(tmp_path / "s", tmp_path / "x.npz", expected=4)
    save_png(np.zeros((5, 5, 3), np.uint8), tmp_path / "s" / "000009.png")
    with pytest.raises(ValueError, match="000009.png: shape"):
        pack_folder(tmp_path / "s", tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


def test_bad_reference_files_fail_clearly(tmp_path):
    with pytest.raises(ReferenceError, match="not found"):
        load_reference(tmp_path / "VIRTUAL_imagenet256_labeled.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ReferenceError, match="not a readable .npz"):
        load_reference(tmp_path / "junk.npz")
    np.savez(tmp_path / "imgs_only.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ReferenceError, match="needs 'mu' and 'sigma'"):
        load_reference(tmp_path / "imgs_only.npz")
    np.savez(tmp_path / "wrong_dim.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ReferenceError, match=r"should be \(2048,\)"):
        load_reference(tmp_path / "wrong_dim.npz")
    mu = np.zeros(2048)
    mu[3] = np.nan
    np.savez(tmp_path / "nan.npz", mu=mu, sigma=np.zeros((2048, 2048), np.float32))
    with pytest.raises(ReferenceError, match="NaN"):
        load_reference(tmp_path / "nan.npz")


def test_reference_in_adm_layout_loads(tmp_path):
    np.savez(tmp_path / "ref.npz", mu=np.ones(2048, np.float32), sigma=np.eye(2048, dtype=np.float32),
             arr_0=np.zeros((3, 8, 8, 3), np.uint8))
    ref = load_reference(tmp_path / "ref.npz")
    assert ref.mu.dtype == np.float64 and ref.sigma.shape == (2048, 2048)
    assert ref.has_images and ref.mu_s is None and len(ref.sha256) == 64


def _proto(**kw):
    base = dict(num_classes=10, num_per_class=5, cfg_scale=1.5, top_k=900, top_p=0.96, more_smooth=False, seed=0,
                resolution=64)
    return Protocol(**{**base, **kw})


def test_protocol_hash_covers_every_field():
    p = _proto()
    assert p.num_samples == 50 and not p.fid_enabled
    for change in (dict(cfg_scale=2.0), dict(top_k=600), dict(top_p=0.95), dict(seed=1), dict(num_per_class=50),
                   dict(resolution=128), dict(image_format="jpeg"), dict(reference_sha256="ab"),
                   dict(inception_sha256="cd"), dict(more_smooth=True), dict(inception_mode="pytorch-fid")):
        assert _proto(**change).hash() != p.hash(), change
    assert _proto().hash() == p.hash()
    assert "batch_size" not in p.row_fields()  # images do not depend on it (per-image seeds)
    # the mode names the metric definitions; the sample folder ignores every metric field
    pf = _proto(inception_mode="pytorch-fid", reference_sha256="ab", inception_sha256="cd")
    assert (p.metrics_version, pf.metrics_version) == ("mvar_dist-eval-2/adm", "mvar_dist-eval-2/pytorch-fid")
    assert pf.sampling_hash() == p.sampling_hash() != _proto(seed=1).sampling_hash()


def test_sample_folders_are_named_after_the_samplers_noise_scheme(monkeypatch):
    # a seed gives other images under another noise scheme: its folders must not be reused
    from mvar_dist.eval import results
    from mvar_dist.model.noise import SAMPLER_VERSION
    assert results.SAMPLER_VERSION == SAMPLER_VERSION
    before = _proto().sampling_hash()
    monkeypatch.setattr(results, "SAMPLER_VERSION", "another-scheme")
    assert _proto().sampling_hash() != before


def test_results_table_is_idempotent_and_rows_carry_the_protocol(tmp_path):
    table = ResultsTable(tmp_path)
    p = _proto(reference_sha256="r" * 64, inception_sha256="i" * 64)
    row = {"checkpoint_id": "run/step_00000010", "protocol_hash": p.hash(), "run": "run", "step": 10,
           "status": "ok", "fid": 12.5, **p.row_fields()}
    table.upsert(row)
    table.upsert({**row, "fid": 11.0})  # same key: replaced, not duplicated
    table.upsert({**row, "checkpoint_id": "run/step_00000020", "step": 20})
    rows = ResultsTable(tmp_path).rows()  # a fresh reader, as after a restart
    assert [r["checkpoint_id"] for r in rows] == ["run/step_00000010", "run/step_00000020"]
    assert float(rows[0]["fid"]) == 11.0
    for col in PROTOCOL_COLUMNS:
        assert col in rows[0], col
    assert rows[0]["num_samples"] == "50" and rows[0]["cfg_scale"] == "1.5" and rows[0]["image_format"] == "png"
    assert rows[0]["reference_sha256"] == "r" * 64 and rows[0]["inception_sha256"] == "i" * 64
    assert table.has("run/step_00000010", p.hash()) and not table.has("run/step_00000010", _proto().hash())
    with open(tmp_path / "eval_results.csv", newline="") as f:
        assert next(csv.reader(f)) == COLUMNS
    with pytest.raises(ValueError, match="unknown columns"):
        table.upsert({**row, "fidd": 1})
