"""Counter-based randomness: reproducible draws keyed on (seed, identifiers), independent of run layout.

A source's event, or a per-day choice, must come out the same whether one day or ten are simulated, so
such draws are hashes of their keys (SplitMix64 finaliser), not positions in a random stream.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 output function, vectorised over uint64 (wrapping arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_keys(*keys) -> np.ndarray:
    """Combine integer keys (scalars or broadcastable arrays) into one uint64 hash per element."""
    h: np.uint64 | np.ndarray = np.uint64(0)
    for k in keys:
        h = splitmix64(np.bitwise_xor(h, np.asarray(k).astype(np.int64).view(np.uint64)))
    return np.asarray(h, dtype=np.uint64)


def uniform(*keys) -> np.ndarray:
    """A uniform draw in [0, 1) per element of the broadcast keys."""
    return (hash_keys(*keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def normal(*keys) -> np.ndarray:
    """A standard normal draw per element (Box-Muller from two hashed uniforms)."""
    u1 = uniform(*keys, 0x51)
    u2 = uniform(*keys, 0x52)
    return np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
