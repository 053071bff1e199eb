"""Class-balanced deterministic sampling with the real tiny MVAR: rank splits and resumption reproduce images."""
import numpy as np
import pytest
import torch

from mvar_dist.eval.npz import list_pngs, load_png
from mvar_dist.eval.sampling import SamplePlan, count_done, generate_samples, model_sample_fn, to_uint8


@pytest.fixture(scope="module")
def tiny_sample_fn():
    from mvar_dist.config import load_config
    from mvar_dist.model import MVAR
    from mvar_dist.vqvae import MultiScaleVQVAE

    cfg = load_config("mvar_tiny")
    model = MVAR.from_config(cfg).eval()
    vae = MultiScaleVQVAE.from_config(cfg.tokenizer, seed=0).eval()
    return model_sample_fn(model, vae, cfg_scale=1.5, top_k=50, top_p=0.96)


def test_plan_is_class_balanced_and_seeds_depend_on_the_image_only():
    plan = SamplePlan(num_classes=10, num_per_class=3, batch_size=4, seed=0)
    labels = [plan.label(i) for i in range(plan.num_samples)]
    assert np.bincount(labels).tolist() == [3] * 10 and labels == sorted(labels)
    assert plan.num_batches == 8 and plan.batch_range(7) == (28, 30)
    seeds = [plan.image_seed(i) for i in range(plan.num_samples)]
    assert len(set(seeds)) == len(seeds)
    assert seeds == [SamplePlan(10, 3, 7, 0).image_seed(i) for i in range(30)]  # batch size plays no part
    assert seeds != [SamplePlan(10, 3, 4, 1).image_seed(i) for i in range(30)]
    assert plan.identity() == SamplePlan(10, 3, 7, 0).identity() != SamplePlan(10, 3, 4, 1).identity()
    split = [sorted(plan.rank_batches(r, 3)) for r in range(3)]
    assert sorted(sum(split, [])) == list(range(8)) and all(split)
    with pytest.raises(ValueError, match="num_per_class"):
        SamplePlan(10, 0, 4, 0)


def test_to_uint8_rounds_to_nearest():
    x = torch.tensor([0.0, 0.5 / 255, 0.49 / 255, 1.0, 1.2]).view(1, 1, 1, 5).expand(1, 3, 1, 5)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 1, 0, 255, 255]


def _images(folder):
    return {p.name: load_png(p) for p in list_pngs(folder)}


def test_ranks_and_resumption_reproduce_the_same_images(tmp_path, tiny_sample_fn):
    plan = SamplePlan(num_classes=10, num_per_class=1, batch_size=4, seed=3)
    one = generate_samples(tiny_sample_fn, plan, tmp_path / "w1", rank=0, world_size=1)
    assert one == {"made": 10, "skipped": 0}
    ref = _images(tmp_path / "w1")
    assert sorted(ref) == [f"{i:06d}.png" for i in range(10)]
    assert ref["000000.png"].shape == (64, 64, 3)
    assert len({v.tobytes() for v in ref.values()}) == 10  # distinct images

    # two ranks (run one after the other here) make the same set, bit for bit
    for r in range(2):
        generate_samples(tiny_sample_fn, plan, tmp_path / "w2", rank=r, world_size=2)
    got = _images(tmp_path / "w2")
    assert sorted(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)

    # another batch size (3: images at other positions, a lone image in the last batch) gives the same PNGs
    generate_samples(tiny_sample_fn, SamplePlan(10, 1, 3, seed=3), tmp_path / "b3", rank=0, world_size=1)
    got = _images(tmp_path / "b3")
    assert sorted(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)

    # a half-done folder resumes, even with another batch size: only the missing images are made, identically
    for name in ("000004.png", "000006.png", "000009.png"):
        (tmp_path / "w1" / name).unlink()
    again = generate_samples(tiny_sample_fn, SamplePlan(10, 1, 8, seed=3), tmp_path / "w1", rank=0, world_size=1)
    assert again == {"made": 3, "skipped": 7}
    assert count_done(plan, tmp_path / "w1") == 10
    resumed = _images(tmp_path / "w1")
    assert all(np.array_equal(resumed[k], ref[k]) for k in ref)

    # another seed gives other images; a folder never mixes two plans
    with pytest.raises(ValueError, match="another plan"):
        generate_samples(tiny_sample_fn, SamplePlan(10, 1, 4, seed=4), tmp_path / "w1", rank=0, world_size=1)
