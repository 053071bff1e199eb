"""The demo's independent judge: label order, accuracy on held-out real images, FD-demo, files,
and the judgement of a checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mvar_dist.eval import demo_judge as D
from mvar_dist.demo_data import CLASS_NAMES, make_image


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(2)
    model, report = D.train_classifier(per_class=30, steps=150, batch=48)
    return model, report


def test_label_order_is_the_token_shards_order(demo_images):
    """The generator's class ids come from the ImageFolder listing; the judge must use the same ids."""
    from data_pipeline.sources import list_inputs

    listing = list_inputs(str(demo_images))
    assert listing.class_names == D.FOLDER_CLASSES
    for ref in listing.refs:
        assert ref.image_id.split("/")[0] == D.FOLDER_CLASSES[ref.label]
    x, y = D.real_images(1, seed=3)
    for k, name in enumerate(D.FOLDER_CLASSES):
        want = make_image(CLASS_NAMES.index(name), 0, D.SIDE, 3)
        assert y[k] == k
        assert np.array_equal((x[k].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), want)


def test_judge_is_accurate_on_held_out_real_images(judge):
    model, report = judge
    assert report.heldout_accuracy >= 0.95
    x, y = D.real_images(4, seed=99, side=128)  # another seed and size: resized to the judge's side
    assert D.consistency(model, x, y) >= 0.9
    # A wrong label assignment is caught: shifting the labels by one class drops the score to near zero.
    assert D.consistency(model, x, (y + 1) % 10) <= 0.1


def test_fd_demo_is_zero_for_the_same_images_and_grows_with_mismatch(judge):
    model, _ = judge
    x, _ = D.real_images(10, seed=11)
    other, _ = D.real_images(10, seed=12)
    same = D.fd_demo(model, x, x)
    assert abs(same) < 1e-6
    near = D.fd_demo(model, other, x)
    only_discs = x[:10].repeat(10, 1, 1, 1)  # one class only: far from the 10-class distribution
    far = D.fd_demo(model, only_discs + 1e-3 * torch.rand_like(only_discs), x)
    assert 0 < near < far


def test_save_load_and_damaged_file(judge, tmp_path):
    model, report = judge
    path = D.save(model, tmp_path / "judge" / "classifier.safetensors", report)
    loaded, acc = D.load(path)
    x, _ = D.real_images(2, seed=5)
    assert torch.equal(D.predict(loaded, x), D.predict(model, x))
    assert acc == pytest.approx(report.heldout_accuracy, abs=1e-6)
    again, _ = D.load_or_train(path)  # present: loaded, not retrained
    assert torch.equal(D.predict(again, x), D.predict(model, x))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a demo classifier file"):
        D.load(path)


def _checkpoint(folder):
    """A checkpoint folder as the trainer leaves it (config.yaml, model.safetensors, markers), random weights."""
    from safetensors.torch import save_file

    from mvar_dist.config import load_config, save_config
    from mvar_dist.model import MVAR

    cfg = load_config("mvar_tiny", ["eval.top_k=20"])
    save_config(cfg, folder)
    save_file(MVAR.from_config(cfg).official_state_dict(), str(folder / "model.safetensors"))
    (folder / "meta.json").write_text("{}")
    (folder / "COMPLETE").write_text("")
    return folder


def test_judge_checkpoint_reports_consistency_and_fd(judge, tmp_path):
    model, _ = judge
    folder = _checkpoint(tmp_path / "step_00000001")
    verdict = D.judge_checkpoint(folder, model, per_class=2, real_per_class=5)
    assert verdict["num_samples"] == 20
    assert set(verdict["per_class"]) == set(D.FOLDER_CLASSES)
    assert verdict["consistency"] == pytest.approx(np.mean(list(verdict["per_class"].values())))
    assert verdict["fd_demo"] > 0 and verdict["sampling"]["top_k"] == 20


def test_fd_demo_command_writes_one_row_per_checkpoint_once(judge, tmp_path, capsys):
    from mvar_dist.__main__ import main
    from mvar_dist.eval.fd_demo import read_fd_demo

    model, report = judge
    judge_file = D.save(model, tmp_path / "judge.safetensors", report)
    run = tmp_path / "runs" / "mvar-d1"
    (run / "checkpoints" / "step_00000002").mkdir(parents=True)
    _checkpoint(run / "checkpoints" / "step_00000002")
    (run / "checkpoints" / "step_00000004").mkdir()  # no marker: not evaluated
    argv = ["fd-demo", str(run), "--eval-dir", str(tmp_path / "eval"), "--judge", str(judge_file), "--per-class", "1"]
    assert main(argv) == 0
    rows = read_fd_demo(tmp_path / "eval")
    assert list(rows) == ["mvar-d1/step_00000002"]
    row = rows["mvar-d1/step_00000002"]
    assert float(row["fd_demo"]) > 0 and int(row["num_samples"]) == 10 and 0 <= float(row["class_consistency"]) <= 1
    assert "FD-demo" in capsys.readouterr().out
    assert main(argv) == 0  # nothing new: no second row, no sampling
    assert len((tmp_path / "eval" / "fd_demo.csv").read_text().splitlines()) == 2
    assert main(["fd-demo", str(tmp_path), "--eval-dir", str(tmp_path / "eval")]) == 2  # no checkpoints/ folder


def test_fd_demo_follows_a_non_default_ckpt_dir(judge, tmp_path):
    """A run whose ckpt.dir is not <run>/checkpoints (its config.yaml says where) is evaluated, keyed by the run."""
    from mvar_dist.__main__ import main
    from mvar_dist.config import load_config, save_config
    from mvar_dist.eval.fd_demo import read_fd_demo

    model, report = judge
    judge_file = D.save(model, tmp_path / "judge.safetensors", report)
    run, elsewhere = tmp_path / "runs" / "mvar-d1", tmp_path / "disk2" / "ckpts"
    save_config(load_config("mvar_tiny", [f"out_dir={run}", f"ckpt.dir={elsewhere}"]), run)
    (elsewhere / "step_00000002").mkdir(parents=True)
    _checkpoint(elsewhere / "step_00000002")
    argv = ["fd-demo", str(run), "--eval-dir", str(tmp_path / "eval"), "--judge", str(judge_file), "--per-class", "1"]
    assert main(argv) == 0
    assert list(read_fd_demo(tmp_path / "eval")) == ["mvar-d1/step_00000002"]


def test_sweep_table_and_quality_plot_use_fd_demo_without_fid():
    from mvar_dist.scaling.plots import quality_metric

    rows = [{"arch": "var", "train_flops": 1e9, "depth": 1, "fid": None, "fd_demo": 3.0}]
    assert quality_metric(rows) == ("fd_demo", "FD-demo (demo classifier features, not FID)")
    rows.append({"arch": "var", "train_flops": 2e9, "depth": 2, "fid": 20.0, "fd_demo": 2.0})
    assert quality_metric(rows) == ("fid", "FID")
