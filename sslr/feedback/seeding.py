"""Seeds for the random feedback matrices: derivation and counter-based draws.

Every random tensor a feedback layer uses is a pure function of integers: the model seed,
the layer's index, a stream (fixed M, training draws, resampling draws) and a counter. So a
layer's B can be rebuilt from its state alone, after a checkpoint round trip or on another
rank, and no global RNG state is consumed after conversion.
"""

from __future__ import annotations

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1

# Streams: independent sequences derived from one layer seed.
FIXED = 0  # fa's M and frsf's |M|, drawn once
TRAIN = 1  # brsf: the draw that training forward t uses
RESAMPLE = 2  # brsf under resampling(): a fresh draw per eval forward


def _splitmix64(x: int) -> int:
    # Steele, Lea & Flood 2014 (SplitMix64 finalizer): a bijective 64-bit mixer.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, *path: int) -> int:
    """A seed in [0, 2**63) derived from ``seed`` and a path of integers (e.g. a layer index).

    Different paths give independent-looking seeds; the same path always gives the same one.
    """
    x = _splitmix64(seed & _MASK64)
    for p in path:
        x = _splitmix64(x ^ _splitmix64(p & _MASK64))
    return x >> 1  # non-negative, fits an int64 buffer


def random_seed() -> int:
    """A seed drawn from torch's global RNG (so ``seed_everything`` makes it reproducible)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64).item())


def cpu_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: device-independent draws (fa, frsf)."""
    return torch.Generator(device="cpu").manual_seed(seed)


def uniform_like(weight: Tensor, low: float, high: float, seed: int) -> Tensor:
    """U(low, high) with ``weight``'s shape, dtype and device, from a generator seeded ``seed``.

    Drawn on ``weight``'s device (one kernel, no host transfer): the values are a function of
    (seed, device type): CPU (Mersenne Twister) and CUDA (Philox) give different sequences.
    """
    generator = torch.Generator(device=weight.device)
    generator.manual_seed(seed)
    return torch.empty_like(weight, memory_format=torch.contiguous_format).uniform_(
        low, high, generator=generator
    )


_M32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    # A 32-bit integer hash (xorshift-multiply, as Wellons' "hash prospector" finds them) on
    # int64 tensors holding values < 2**32; multipliers < 2**31 keep products below 2**63.
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x31848BAB) & _M32
    return x ^ (x >> 14)


def hashed_uniform_like(weight: Tensor, high: float, seed: Tensor, counter: Tensor) -> Tensor:
    """U(0, high) with ``weight``'s shape: a counter-based hash of (seed, counter, index).

    Pure tensor arithmetic on the device, so ``torch.compile`` fuses it into the kernel that
    builds B (a host-seeded generator would break the graph). Used for brsf's draws under
    torch.compile; the values differ from :func:`uniform_like`'s generator stream, but are
    likewise a function of (seed, counter) only, and the same on every device.
    """
    seed, counter = seed.to(torch.int64), counter.to(torch.int64)
    lo, hi = seed & _M32, (seed >> 32) & _M32
    k0 = _mix32(lo ^ _mix32(hi ^ _mix32(counter & _M32)))  # two 32-bit keys
    k1 = _mix32(k0 ^ _mix32(hi + 0x2545F491))
    index = torch.arange(weight.numel(), device=weight.device, dtype=torch.int64)
    bits = _mix32(_mix32((index * 0x61C88647 + k0) & _M32) ^ k1)
    u = (bits >> 8).to(weight.dtype) * (1.0 / (1 << 24))  # 24 random bits: exact in fp32
    return (u * high).view(weight.shape)
