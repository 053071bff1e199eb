"""Nearest-codebook op: reference vs brute force, chunked vs reference, tie rule, dispatcher."""
from __future__ import annotations

import pytest
import torch

from mvar_dist.ops import codebook as cb


def _data(n=300, v=97, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.randn(v, c, generator=g)


def test_reference_matches_float64_brute_force_where_decisions_are_clear():
    z, e = _data()
    d = (z.double()[:, None] - e.double()[None]).square().sum(-1)
    top2 = d.topk(2, dim=1, largest=False).values
    clear = (top2[:, 1] - top2[:, 0]) > 1e-4
    ours = cb.nearest_code_reference(z, e)
    assert ours.dtype == torch.int64 and ours.shape == (300,)
    assert clear.sum() > 250
    assert torch.equal(ours[clear], d.argmin(1)[clear])


@pytest.mark.parametrize("max_bytes", [4, 4 * 13, 4 * 97, 4 * 97 * 7 + 4, 1 << 20])
def test_chunked_equals_reference(max_bytes):
    z, e = _data(n=101, v=97)
    assert torch.equal(cb.nearest_code_chunked(z, e, max_bytes=max_bytes), cb.nearest_code_reference(z, e))


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_ties_go_to_the_lowest_index(impl):
    g = torch.Generator().manual_seed(1)
    e = torch.randn(40, 4, generator=g)
    e[30] = e[3]          # exact duplicates: 3 and 30, 7 and 21 (different code blocks when chunked)
    e[21] = e[7]
    z = torch.stack([e[3], e[30], e[7], e[21]])
    fn = cb.nearest_code_reference if impl == "reference" else (lambda a, b: cb.nearest_code_chunked(a, b, 4 * 8))
    assert fn(z, e).tolist() == [3, 3, 7, 7]
    # equidistant between two different codes: the lower index wins
    e2 = torch.tensor([[5.0, 5.0], [2.0, 0.0], [-2.0, 0.0]])
    assert fn(torch.zeros(1, 2), e2).tolist() == [1]


def test_dispatcher_uses_reference_on_cpu(monkeypatch):
    monkeypatch.delenv("MVAR_CODEBOOK_IMPL", raising=False)
    assert "reference" in cb.describe(torch.device("cpu"))
    assert "chunked" in cb.describe(torch.device("cuda"))
    z, e = _data(n=20, v=10)
    assert torch.equal(cb.nearest_code(z, e), cb.nearest_code_reference(z, e))
    monkeypatch.setenv("MVAR_CODEBOOK_IMPL", "chunked")
    assert "chunked" in cb.describe(torch.device("cpu"))
    assert torch.equal(cb.nearest_code(z, e, max_bytes=16), cb.nearest_code_reference(z, e))
    monkeypatch.setenv("MVAR_CODEBOOK_IMPL", "bogus")
    with pytest.raises(ValueError, match="MVAR_CODEBOOK_IMPL"):
        cb.nearest_code(z, e)


def test_bad_inputs_are_named():
    z, e = _data(n=4, v=5, c=3)
    with pytest.raises(ValueError, match="channels"):
        cb.nearest_code_reference(z, torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        cb.nearest_code_reference(z[None], e)
    with pytest.raises(ValueError, match="empty codebook"):
        cb.nearest_code_chunked(z, e[:0])
    with pytest.raises(ValueError, match="max_bytes"):
        cb.nearest_code_chunked(z, e, max_bytes=0)


@pytest.mark.gpu
def test_cuda_chunked_matches_cpu_reference():
    z, e = _data(n=5000, v=4096, c=32)
    ref = cb.nearest_code_reference(z, e)
    got = cb.nearest_code(z.cuda(), e.cuda(), max_bytes=4 * 4096 * 100).cpu()
    assert torch.equal(got, ref)
