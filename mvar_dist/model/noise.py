"""Counter-based sampling noise: the uniform for (row key, scale, stream, position[, vocab entry]) is a hash of
those numbers, so a whole scale's noise for the batch is a few elementwise int64 ops - no per-row generator,
no Python loop over rows - and a row's noise depends on its key alone (batch size and position play no part).

The hash works on 32-bit values held in int64: each round is xor-shift, multiply by an odd constant < 2^31
(the product stays < 2^63, so no signed overflow on any backend) and a mask back to 32 bits. Counters are
chained: state = mix(state ^ counter). A uniform keeps the state's top 23 bits, centred in its bin:
u = ((h >> 9) + 0.5) / 2^23, so 0 < u < 1 exactly in fp32 and both -log(u) and -log(-log(u)) are finite.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

# bump when the noise a (seed, scale, position) gets changes: the eval's sample folders are named after it
SAMPLER_VERSION = "counter-hash-v1"
MASK32 = 0xFFFFFFFF
_SEED_SALT = 0x3C6EF372  # keeps seed 0 away from the all-zero state
STREAM_IDS, STREAM_GUMBEL = 0, 1  # independent noise streams of one scale


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit avalanche finaliser on int64 tensors holding values in [0, 2^32); x is left as it was. In place
    after the first op: the Gumbel noise runs it over (B, l, V) elements, where allocations dominate."""
    x = x ^ (x >> 16)
    x.mul_(0x7FEB352D).bitwise_and_(MASK32)
    x.bitwise_xor_(x >> 15)
    x.mul_(0x045D9F3B).bitwise_and_(MASK32)
    return x.bitwise_xor_(x >> 16)


def row_keys(seeds_B: torch.Tensor, rows_B: torch.Tensor) -> torch.Tensor:
    """(B,) int64 keys from 64-bit seeds and row counters (0 for per-image seeds, the row for a call-wide seed)."""
    seeds_B = seeds_B.to(torch.int64)
    lo, hi = seeds_B & MASK32, (seeds_B >> 32) & MASK32
    return mix32(mix32(mix32(lo ^ _SEED_SALT) ^ hi) ^ rows_B.to(torch.int64))


def _to_uniform(h: torch.Tensor) -> torch.Tensor:
    return (h >> 9).to(torch.float32).add_(0.5).mul_(1.0 / (1 << 23))


@dataclass(frozen=True)
class Noise:
    """The noise of one sampler call: one key per row."""
    key_B: torch.Tensor  # (B,) int64 in [0, 2^32)

    @staticmethod
    def per_image(seeds_B: torch.Tensor, device) -> "Noise":
        seeds_B = seeds_B.to(device=device, dtype=torch.int64)
        return Noise(row_keys(seeds_B, torch.zeros_like(seeds_B)))

    @staticmethod
    def call_wide(seed: int, B: int, device) -> "Noise":
        """Row b of a call seeded with `seed` gets the key of seeds_B[b]=seed at counter b, so a one-row call
        equals seeds_B=[seed]."""
        rows_B = torch.arange(B, device=device)
        return Noise(row_keys(torch.full_like(rows_B, int(seed)), rows_B))

    def _positions(self, si: int, stream: int, l: int) -> torch.Tensor:
        state_B1 = mix32(self.key_B ^ (si * 2 + stream)).unsqueeze(1)
        return mix32(state_B1 ^ torch.arange(l, device=self.key_B.device))

    def uniform(self, si: int, stream: int, l: int) -> torch.Tensor:
        """(B, l) fp32 uniforms in (0, 1) for scale si."""
        return _to_uniform(self._positions(si, stream, l))

    def uniform_vocab(self, si: int, stream: int, l: int, V: int) -> torch.Tensor:
        """(B, l, V) fp32 uniforms in (0, 1) for scale si: one per vocabulary entry (Gumbel noise)."""
        h_Bl1 = self._positions(si, stream, l).unsqueeze(2)
        return _to_uniform(mix32(h_Bl1 ^ torch.arange(V, device=self.key_B.device)))
