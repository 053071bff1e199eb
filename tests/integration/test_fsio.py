"""mvar_dist.fsio: filesystem resolution (local and moto s3://), atomic writes, sha256."""
import hashlib
import io
import json

import pytest
from s3_utils import moto_s3  # noqa: F401

from mvar_dist import fsio


def test_sha256_bytes_and_file_agree_with_hashlib(tmp_path):
    data = bytes(range(256)) * 5000  # > one 1 MiB read chunk
    want = hashlib.sha256(data).hexdigest()
    p = tmp_path / "blob"
    p.write_bytes(data)
    assert fsio.sha256_bytes(data) == want
    assert fsio.sha256_file(p) == want and fsio.sha256_file(str(p)) == want
    assert fsio.sha256_file(io.BytesIO(data)) == want


def test_local_atomic_writes_leave_no_temp_and_keep_old_file_on_error(tmp_path):
    target = tmp_path / "sub" / "a.json"
    fsio.write_json_atomic(target, {"b": 1, "a": 2}, mkdir=True)
    assert target.read_text() == '{\n "a": 2,\n "b": 1\n}\n'
    fsio.write_text_atomic(target, "new", fsync=True)
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError, match="boom"):
        with fsio.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "new"  # the failed write never replaced it
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]
    with pytest.raises(FileNotFoundError):
        fsio.write_text_atomic(tmp_path / "missing" / "x.txt", "x")  # no mkdir unless asked


def test_atomic_path_keep_suffix_for_format_sniffing_writers(tmp_path):
    import numpy as np

    target = tmp_path / "feats.npy"
    with fsio.atomic_path(target, keep_suffix=True) as tmp:
        assert tmp.suffix == ".npy" and tmp.parent == tmp_path
        np.save(tmp, np.arange(3))  # would write tmp + ".npy" if the suffix were not last
    assert np.load(target).tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["feats.npy"]


def test_atomic_path_publishes_a_folder_and_replaces_an_old_one(tmp_path):
    target = tmp_path / "staged"
    for text in ("old", "new"):
        with fsio.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "f.txt").write_text(text)
    assert (target / "f.txt").read_text() == "new"
    with pytest.raises(RuntimeError, match="boom"):
        with fsio.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "f.txt").write_text("half")
            raise RuntimeError("boom")
    assert (target / "f.txt").read_text() == "new"  # the failed folder never replaced it
    assert [p.name for p in tmp_path.iterdir()] == ["staged"]


def test_open_fs_local_strips_trailing_slash_and_writes_bytes_atomically(tmp_path):
    fs, root = fsio.open_fs(str(tmp_path) + "/")
    assert fsio.is_local(fs) and root == str(tmp_path)
    fsio.write_bytes_atomic(fs, f"{root}/x.bin", b"abc")
    assert (tmp_path / "x.bin").read_bytes() == b"abc"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_open_fs_s3_endpoint_precedence(moto_s3, monkeypatch):  # noqa: F811
    endpoint, bucket = moto_s3
    fs, root = fsio.open_fs(f"s3://{bucket}/ds/")  # endpoint from $AWS_ENDPOINT_URL (set by moto_s3)
    assert not fsio.is_local(fs) and root == f"{bucket}/ds"
    fsio.write_bytes_atomic(fs, f"{root}/m.json", json.dumps({"k": 1}).encode())
    assert json.loads(fs.cat_file(f"{root}/m.json")) == {"k": 1}
    assert fs.ls(root) == [f"{root}/m.json"]  # a single PUT: no temp object left behind

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")  # unreachable
    fs2, _ = fsio.open_fs(f"s3://{bucket}/ds", endpoint_url=endpoint)  # explicit beats the environment
    assert fs2.cat_file(f"{root}/m.json") == b'{"k": 1}'
    fs3, _ = fsio.open_fs(f"s3://{bucket}/ds", {"endpoint_url": endpoint})  # storage_options beat it too
    assert fs3.cat_file(f"{root}/m.json") == b'{"k": 1}'
