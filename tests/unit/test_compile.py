"""Regional compile (`model.compile`): each block's forward through torch.compile with 0 graph breaks,
one graph shared by all blocks, and the same loss and gradients as eager.

The default tests use the "aot_eager" backend: dynamo's tracing (where graph breaks come from) and
AOTAutograd's joint forward/backward graph are the real ones, without inductor's minutes of C++
compilation on a busy CPU. The inductor run is the slow test."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from mvar_dist.config import load_config
from mvar_dist.model import MVAR


def _loss_and_grads(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, model.num_classes, (3,), generator=g)
    x = torch.randn(3, model.L - 1, model.z_channels, generator=g)
    target = torch.randint(0, model.vocab_size, (3, model.L), generator=g)
    loss = F.cross_entropy(model(labels, x).flatten(0, 1).float(), target.flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check(arch, backend, tol):
    torch._dynamo.reset()
    counters.clear()
    cfg = load_config(f"{arch}_tiny", ["model.depth=3", "model.drop_path_rate=0"])
    eager = MVAR.from_config(cfg)
    compiled = MVAR.from_config(cfg)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(backend=backend)
    want_loss, want_grads = _loss_and_grads(eager)
    got_loss, got_grads = _loss_and_grads(compiled)
    assert not counters["graph_break"], dict(counters["graph_break"])
    # one graph for all blocks, plus at most one retrace when the attention mask cache fills
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, counters["stats"]
    torch.testing.assert_close(got_loss, want_loss, rtol=tol, atol=tol)
    assert got_grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=tol, atol=tol, msg=name)


@pytest.mark.parametrize("arch", ["mvar", "var"])
def test_blocks_compile_without_graph_breaks_and_match_eager(arch):
    _check(arch, "aot_eager", 1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mvar", "var"])
def test_blocks_compile_with_inductor_match_eager(arch):
    _check(arch, "inductor", 2e-4)


def test_compiled_blocks_trace_flex_attention_inline(monkeypatch):
    # on CUDA the blocks' attention is flex: inside the compiled block it must trace into the block's
    # graph (no nested compiled wrapper, no graph break). CPU flex has no backward: forward only.
    from mvar_dist.ops import attention as A

    torch._dynamo.reset()
    counters.clear()
    monkeypatch.setattr(A, "_FLEX_FNS", {})
    monkeypatch.setattr(A, "FLEX_COMPILE_BACKEND", "eager")
    cfg = load_config("mvar_tiny", ["model.depth=2", "model.drop_path_rate=0"])
    eager = MVAR.from_config(cfg).eval()
    compiled = MVAR.from_config(cfg).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(backend="eager")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, eager.num_classes, (2,), generator=g)
    x = torch.randn(2, eager.L - 1, eager.z_channels, generator=g)
    A.set_backend("flex")
    try:
        with torch.no_grad():
            got = compiled(labels, x)
            assert not A._FLEX_FNS  # traced inline: no per-signature wrapper was built
            want = eager(labels, x)  # the eager model: through the per-signature compiled flex
    finally:
        A.set_backend(None)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert A._FLEX_FNS
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_compile_is_a_config_field():
    cfg = load_config("mvar_tiny", ["model.compile=true"])
    assert cfg.model.compile is True and load_config("mvar_tiny").model.compile is False
