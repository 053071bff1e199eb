"""The batched sampler's counter-based noise and inverse-CDF draw: equal to a per-row loop of the same scheme
(written here in plain Python), distributed as the filtered probabilities, and batch-composition invariant."""
import numpy as np
import pytest
import torch

from mvar_dist.model import noise as noise_mod
from mvar_dist.model.noise import STREAM_GUMBEL, STREAM_IDS, Noise
from mvar_dist.model.sampler import _gumbel_softmax, sample_ids, top_k_top_p_filter_

M32 = 0xFFFFFFFF


def _mix(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x045D9F3B) & M32
    return x ^ (x >> 16)


def _key(seed: int, row: int) -> int:
    lo, hi = seed & M32, (seed >> 32) & M32
    return _mix(_mix(_mix(lo ^ noise_mod._SEED_SALT) ^ hi) ^ row)


def _u(key: int, si: int, stream: int, pos: int, v=None) -> float:
    h = _mix(_mix(key ^ (si * 2 + stream)) ^ pos)
    if v is not None:
        h = _mix(h ^ v)
    return float(np.float32(((h >> 9) + 0.5) / 2**23))


def _loop_ids(logits_BlV, top_k, top_p, keys, si):
    """One row, one token at a time: the first token whose running fp32 cdf exceeds u * total."""
    out = []
    for b, key in enumerate(keys):
        probs_lV = top_k_top_p_filter_(logits_BlV[b:b + 1].clone(), top_k, top_p)[0].float().softmax(-1)
        row = []
        for pos, p_V in enumerate(probs_lV):
            cdf_V = p_V.cumsum(0)
            target = np.float32(_u(key, si, STREAM_IDS, pos)) * np.float32(cdf_V[-1])
            hits = [i for i in range(len(cdf_V)) if float(cdf_V[i]) > target]
            row.append(hits[0] if hits else int(torch.nonzero(p_V > 0).max()))
        out.append(row)
    return torch.tensor(out)


@pytest.mark.parametrize("seed", [0, 7, -3, 2**40 + 5])
def test_noise_equals_the_plain_python_hash(seed):
    seeds = torch.tensor([seed, 11, 2**31 - 1])
    noise = Noise.per_image(seeds, "cpu")
    u_Bl = noise.uniform(3, STREAM_IDS, 5)
    g_BlV = noise.uniform_vocab(2, STREAM_GUMBEL, 3, 4)
    for b, s in enumerate(seeds.tolist()):
        k = _key(s, 0)
        assert u_Bl[b].tolist() == [_u(k, 3, STREAM_IDS, p) for p in range(5)]
        assert g_BlV[b].tolist() == [[_u(k, 2, STREAM_GUMBEL, p, v) for v in range(4)] for p in range(3)]
    wide = Noise.call_wide(seed, 3, "cpu").uniform(0, STREAM_IDS, 2)
    assert wide.tolist() == [[_u(_key(seed, r), 0, STREAM_IDS, p) for p in range(2)] for r in range(3)]
    assert torch.equal(wide[:1], Noise.per_image(torch.tensor([seed]), "cpu").uniform(0, STREAM_IDS, 2))


def test_uniforms_stay_strictly_inside_the_unit_interval():
    u = noise_mod._to_uniform(torch.tensor([0, M32]))
    assert 0 < u[0] < u[1] < 1
    assert torch.isfinite(-(-u.log()).log()).all()


@pytest.mark.parametrize("top_k,top_p", [(0, 0.0), (5, 0.0), (0, 0.8), (6, 0.9)])
def test_batched_ids_equal_the_per_row_loop(top_k, top_p):
    gen = torch.Generator().manual_seed(0)
    logits_BlV = torch.randn(3, 9, 12, generator=gen) * 2
    seeds = torch.tensor([5, 6, 123456789])
    ids = sample_ids(logits_BlV.clone(), top_k, top_p, Noise.per_image(seeds, "cpu"), 4)
    assert torch.equal(ids, _loop_ids(logits_BlV, top_k, top_p, [_key(s, 0) for s in seeds.tolist()], 4))


def _chi2(counts, probs, n):
    expected = probs * n
    return float(((counts - expected) ** 2 / expected).sum())


def test_id_and_gumbel_frequencies_match_the_probabilities():
    # one row of 60000 tokens over V=8: chi-square with 7 dof; 24.3 is its 0.999 quantile (the draws are
    # deterministic, so this is a fixed check, not a flaky one)
    n, V = 60000, 8
    logits_V = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 0.3, 1.5])
    probs = logits_V.double().softmax(0).numpy()
    noise = Noise.per_image(torch.tensor([42]), "cpu")
    ids = sample_ids(logits_V.expand(1, n, V).clone(), 0, 0.0, noise, 1)
    assert _chi2(np.bincount(ids.view(-1).numpy(), minlength=V), probs, n) < 24.3
    soft = _gumbel_softmax(logits_V.expand(1, n, V).clone(), 1.0, noise, 1)
    assert _chi2(np.bincount(soft.argmax(-1).view(-1).numpy(), minlength=V), probs, n) < 24.3
    # filtered tokens are never drawn, and the kept ones keep their renormalised proportions
    ids_k = sample_ids(logits_V.expand(1, n, V).clone(), 3, 0.0, noise, 2).view(-1).numpy()
    kept = [0, 1, 7]
    assert set(np.unique(ids_k)) <= set(kept)
    p_kept = probs[kept] / probs[kept].sum()
    assert _chi2(np.bincount(ids_k, minlength=V)[kept], p_kept, n) < 13.8  # 2 dof, 0.999 quantile


def test_a_draw_at_the_top_of_the_cdf_picks_the_last_token_with_mass():
    class Top:  # u * total rounding up to the total
        def uniform(self, si, stream, l):
            return torch.ones(1, l)
    logits = torch.tensor([[[0.0, 3.0, 1.0, -9.0]]])
    assert sample_ids(logits.clone(), 2, 0.0, Top(), 0).item() == 2  # token 3 is filtered, 2 is the last kept


def test_a_rows_draws_do_not_depend_on_the_batch_around_it():
    gen = torch.Generator().manual_seed(1)
    logits_BlV = torch.randn(4, 16, 30, generator=gen)
    seeds = torch.tensor([9, 8, 7, 6])
    ids4 = sample_ids(logits_BlV.clone(), 10, 0.9, Noise.per_image(seeds, "cpu"), 3)
    ids1 = sample_ids(logits_BlV[2:3].clone(), 10, 0.9, Noise.per_image(seeds[2:3], "cpu"), 3)
    assert torch.equal(ids4[2:3], ids1)
    other = sample_ids(logits_BlV.clone(), 10, 0.9, Noise.per_image(seeds, "cpu"), 4)  # another scale
    assert not torch.equal(ids4, other)
