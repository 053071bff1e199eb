import hashlib

import numpy as np
import pytest
from PIL import Image

from mvar_dist.demo_data import CLASS_NAMES, NUM_CLASSES, make_image, write_dataset


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_class_count_size_and_layout(demo_images):
    classes = sorted(p.name for p in demo_images.iterdir())
    assert classes == sorted(CLASS_NAMES) and NUM_CLASSES == 10
    files = sorted(demo_images.rglob("*.png"))
    assert len(files) == 40
    for f in files[:5]:
        im = Image.open(f)
        assert im.size == (64, 64) and im.mode == "RGB"


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_dataset(tmp_path / "a", images_per_class=2, size=32, seed=7)
    b = write_dataset(tmp_path / "b", images_per_class=2, size=32, seed=7)
    c = write_dataset(tmp_path / "c", images_per_class=2, size=32, seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    assert not list(tmp_path.rglob(".*.tmp")), "atomic writes left temp files"


def test_any_resolution():
    for size in (16, 100, 256):
        assert make_image(3, 0, size).shape == (size, size, 3)


def test_classes_are_visibly_different():
    # A nearest-class-mean classifier on tiny grey-level summary features must beat chance by far:
    # the classes are learnable, not noise.
    def feats(img):
        g = img.astype(np.float32).mean(-1) / 255
        gy, gx = np.abs(np.diff(g, axis=0)).mean(), np.abs(np.diff(g, axis=1)).mean()
        return np.array([gy, gx, gy / (gx + 1e-6), g.std(), (g > g.mean()).mean()])

    train = {c: np.stack([feats(make_image(c, i, 64)) for i in range(12)]) for c in range(NUM_CLASSES)}
    means = np.stack([train[c].mean(0) for c in range(NUM_CLASSES)])
    scale = np.concatenate(list(train.values())).std(0) + 1e-6
    correct = 0
    for c in range(NUM_CLASSES):
        for i in range(100, 106):
            d = (((feats(make_image(c, i, 64)) - means) / scale) ** 2).sum(1)
            correct += int(d.argmin() == c)
    assert correct / 60 > 0.5, correct  # chance is 0.1


def test_bad_arguments():
    with pytest.raises(ValueError, match="class"):
        make_image(10, 0)
    with pytest.raises(ValueError):
        write_dataset("/tmp/x", images_per_class=0)
