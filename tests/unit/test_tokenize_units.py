"""Tokenisation job parts without Ray: decoding/rejects, crop variants, input listing, shard IO, verify."""
from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvar_dist.data_pipeline.augment import VariantSpec, crop_params, decode, decode_variants, make_variants, Rejected
from mvar_dist.data_pipeline.progress import Progress
from mvar_dist.data_pipeline.sources import ImageRef, Listing, deal, list_inputs, read_bytes
from mvar_dist.data_pipeline.writer import Destination, load_rows, record_from, shard_bytes, verify, finalize
from mvar_dist.data.shards import Manifest

REPO = Path(__file__).resolve().parents[2]
SPEC = VariantSpec(count=4, seed=3, hflip=False, resolution=64, min_side=16)


def png_bytes(arr, mode=None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


def rand_img(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_variant0_is_the_official_centre_crop_after_lanczos_resize():
    arr = rand_img(80, 120)
    crops = make_variants("a/b.png", Image.fromarray(arr), SPEC)
    assert crops.shape == (4, 64, 64, 3) and crops.dtype == np.uint8
    # Resize(72, LANCZOS) on the shorter side: 80x120 -> 72x108, then CenterCrop(64).
    ref = np.asarray(Image.fromarray(arr).resize((108, 72), Image.LANCZOS))
    top, left = int(round((72 - 64) / 2.0)), int(round((108 - 64) / 2.0))
    np.testing.assert_array_equal(crops[0], ref[top:top + 64, left:left + 64])
    # every random variant is a window of the same resized image
    for v in range(1, 4):
        t, l, flip = crop_params("a/b.png", v, (72, 108), SPEC)
        assert not flip
        np.testing.assert_array_equal(crops[v], ref[t:t + 64, l:l + 64])


def test_crop_params_are_deterministic_and_depend_on_seed_id_variant():
    hw = (200, 300)
    spec = VariantSpec(count=8, seed=1, resolution=64)
    a = [crop_params("x.png", v, hw, spec) for v in range(1, 8)]
    assert a == [crop_params("x.png", v, hw, spec) for v in range(1, 8)]
    assert len(set(a)) > 4                                       # variants differ
    assert a != [crop_params("y.png", v, hw, spec) for v in range(1, 8)]
    assert a != [crop_params("x.png", v, hw, VariantSpec(count=8, seed=2, resolution=64)) for v in range(1, 8)]
    flips = [crop_params("x.png", v, hw, VariantSpec(count=64, hflip=True, resolution=64))[2] for v in range(1, 64)]
    assert 10 < sum(flips) < 53 and crop_params("x.png", 0, hw, VariantSpec(hflip=True, resolution=64))[2] is False


def test_hflip_variant_is_the_mirrored_window():
    spec = VariantSpec(count=16, seed=0, hflip=True, resolution=64)
    arr = rand_img(72, 72, 1)
    crops = make_variants("img", Image.fromarray(arr), spec)
    v = next(v for v in range(1, 16) if crop_params("img", v, (72, 72), spec)[2])
    t, l, _ = crop_params("img", v, (72, 72), spec)
    np.testing.assert_array_equal(crops[v], arr[t:t + 64, l:l + 64][:, ::-1])


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is not an image at all", "unidentified"),
    (png_bytes(rand_img(64, 64))[:300], "corrupt image"),
    (png_bytes(rand_img(8, 64)), "too small: 64x8"),
])
def test_bad_inputs_are_rejected_with_a_reason(data, reason):
    crops, why = decode_variants("bad", data, SPEC)
    assert crops is None and reason in why


def test_non_rgb_policy():
    gray = png_bytes(rand_img(40, 40), mode="L")
    cmyk = png_bytes(rand_img(40, 40), mode="CMYK")
    for data in (gray, cmyk, png_bytes(rand_img(40, 40), mode="RGBA")):
        assert decode(data, SPEC).mode == "RGB"           # the official loader's .convert('RGB')
        with pytest.raises(Rejected, match="non-RGB"):
            decode(data, VariantSpec(resolution=64, min_side=16, non_rgb="reject"))


def _image_folder(root: Path) -> Path:
    for cls in ("zebra", "apple"):
        (root / "train" / cls / "sub").mkdir(parents=True)
    (root / "train" / "zebra" / "1.png").write_bytes(png_bytes(rand_img(40, 40, 1)))
    (root / "train" / "zebra" / "sub" / "2.png").write_bytes(png_bytes(rand_img(40, 40, 2)))
    (root / "train" / "apple" / "3.png").write_bytes(png_bytes(rand_img(40, 40, 3)))
    (root / "train" / "apple" / "notes.txt").write_text("not an image")
    (root / "train" / "apple" / ".4.png.tmp").write_text("a writer's temp file")
    return root


def test_image_folder_listing_sorted_classes_and_train_split(tmp_path):
    listing = list_inputs(str(_image_folder(tmp_path)))
    assert listing.class_names == ["apple", "zebra"]
    assert [(r.image_id, r.label) for r in listing.refs] == [("apple/3.png", 0), ("zebra/1.png", 1),
                                                             ("zebra/sub/2.png", 1)]
    assert listing.skipped == 2
    assert read_bytes(listing.refs[0], {}) == (tmp_path / "train/apple/3.png").read_bytes()


def test_tar_listing_reads_members_by_byte_range(tmp_path):
    folder = _image_folder(tmp_path / "f") / "train"
    tars = tmp_path / "tars"
    tars.mkdir()
    with tarfile.open(tars / "nested.tar", "w") as tf:      # members carry their class folder
        tf.add(folder / "zebra" / "1.png", arcname="zebra/1.png")
        tf.add(folder / "apple" / "3.png", arcname="apple/3.png")
    with tarfile.open(tars / "kiwi.tar", "w") as tf:        # flat per-class tar (ImageNet style)
        tf.add(folder / "zebra" / "sub" / "2.png", arcname="2.png")
    listing = list_inputs(str(tars))
    assert listing.class_names == ["apple", "kiwi", "zebra"]
    got = {r.image_id: (r.label, read_bytes(r, {})) for r in listing.refs}
    assert got == {"kiwi.tar/2.png": (1, (folder / "zebra/sub/2.png").read_bytes()),
                   "nested.tar/apple/3.png": (0, (folder / "apple/3.png").read_bytes()),
                   "nested.tar/zebra/1.png": (2, (folder / "zebra/1.png").read_bytes())}


def test_deal_is_a_seeded_permutation_that_mixes_classes():
    """Dealing is the same for every source kind: it only permutes the listing's refs."""
    sorted_refs = [ImageRef(f"c{c:03d}/{i}.png", c, f"/x/c{c:03d}/{i}.png") for c in range(100) for i in range(10)]
    listing = Listing(sorted_refs, [f"c{c:03d}" for c in range(100)], "src")
    a, b, other = deal(listing, 0), deal(listing, 0), deal(listing, 1)
    assert a.refs == b.refs and a.order == b.order and a.refs != other.refs
    assert sorted(a.refs, key=lambda r: r.image_id) == sorted_refs and listing.refs == sorted_refs
    assert a.order["scheme"] == "pcg64-permutation-v1" and a.order["seed"] == 0
    assert a.order["order_sha256"] != other.order["order_sha256"]
    classes_per_shard = [len({r.label for r in a.refs[s:s + 100]}) for s in range(0, 1000, 100)]
    assert min(classes_per_shard) > 50         # sorted: exactly 10 classes in each shard of 100


def test_listing_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        list_inputs(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="holds no images"):
        list_inputs(str(tmp_path))


def _write_dataset(dest: Destination, rows_per_shard=(3, 2)):
    records = []
    for i, n in enumerate(rows_per_shard):
        tokens = np.arange(n * 5, dtype=np.uint16).reshape(n, 5) + 1000 * i
        data = shard_bytes([f"img{i}_{j}" for j in range(n)], np.full(n, i), np.zeros(n), tokens)
        dest.write(f"shard-{i:05d}.parquet", data)
        rec = record_from(f"shard-{i:05d}.parquet", data, n, n, "fp", [{"image_id": "bad", "path": "p", "reason": "r"}])
        dest.write_record(rec)
        records.append(rec)
    m = Manifest(tokenizer={"hash": "h", "vocab_size": 4096}, patch_nums=[1, 2], resolution=32,
                 variants={"count": 1}, num_classes=2)
    finalize(dest, m, records)
    return records


def test_shard_roundtrip_records_and_verify(tmp_path):
    dest = Destination(str(tmp_path / "ds"))
    dest.check_writable()
    _write_dataset(dest)
    assert not [p for p in os.listdir(tmp_path / "ds") if ".tmp" in p]
    rows = load_rows(str(tmp_path / "ds"))
    assert rows["tokens"].dtype == np.uint16 and rows["tokens"].shape == (5, 5)
    assert list(rows["image_id"]) == ["img0_0", "img0_1", "img0_2", "img1_0", "img1_1"]
    assert rows["tokens"][3, 0] == 1000
    m = dest.read_manifest()
    assert m.num_rows == 5 and m.num_rejected == 2 and m.num_images == 5
    assert len((tmp_path / "ds" / "rejects.jsonl").read_text().splitlines()) == 2
    assert verify(str(tmp_path / "ds")) == []
    assert dest.completed_record("shard-00001.parquet", "fp") is not None
    assert dest.completed_record("shard-00001.parquet", "other-job") is None
    # a damaged shard of the same size: checksum catches it, both on resume and in --verify
    p = tmp_path / "ds" / "shard-00001.parquet"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    assert dest.completed_record("shard-00001.parquet", "fp") is None
    assert dest.completed_record("shard-00001.parquet", "fp", check_sha=False) is not None
    assert verify(str(tmp_path / "ds")) == ["shard-00001.parquet: sha256 mismatch"]
    p.unlink()
    assert verify(str(tmp_path / "ds")) == ["shard-00001.parquet: missing"]


def test_destination_errors_and_temp_cleanup(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PermissionError, match="not writable"):
        Destination(str(tmp_path / "file" / "shards")).check_writable()
    dest = Destination(str(tmp_path / "ds"))
    dest.check_writable()
    (tmp_path / "ds" / "shard-00000.parquet.tmp123").write_bytes(b"half")
    assert dest.clean_temps() == 1 and not (tmp_path / "ds" / "shard-00000.parquet.tmp123").exists()


def test_progress_line_reports_rate_shards_and_eta():
    t = [0.0]
    lines = []
    p = Progress(total_images=100, total_shards=4, every=5.0, log=lines.append, clock=lambda: t[0])
    t[0] = 2.0
    p.images(10)
    assert lines == []                                  # not yet due
    t[0] = 10.0
    p.images(10)
    p.shard_done()
    assert len(lines) == 1 and "20/100 images (20.0%), 2.0 img/s" in lines[0] and "ETA 0:00:40" in lines[0]
    p.finish()
    assert "shards 1/4" in lines[-1]


def test_no_script_is_named_like_a_stdlib_module():
    # A script's folder is sys.path[0] when it runs, so `launchers/tokenize.py` used to shadow the stdlib
    # `tokenize` (imported by inspect/linecache) for every sibling script. Scripts get non-stdlib names.
    scripts = sorted((REPO / "launchers").glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    assert any(p.name == "pretokenize.py" for p in scripts)
    clashes = [str(p.relative_to(REPO)) for p in scripts if p.stem in sys.stdlib_module_names]
    assert clashes == [], f"scripts named like stdlib modules: {clashes}"
