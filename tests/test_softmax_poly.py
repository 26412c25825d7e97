"""CPU: the polynomial exponential of the sm90 softmax (``softmax.exp2_poly``), re-derived in numpy.

The kernel computes every n-th ``exp2`` on the FMA pipe (``FwdConfig.exp2_emulation``): clamp to
-127, round with the 1.5 * 2^23 addend, a cubic for 2^f on [-1/2, 1/2], 2^j assembled in the
exponent bits, one multiply.  Here the same steps run in float32 numpy against float64 ``exp2``:
the cubic's coefficients must be a near-minimax fit (relative error <= 7.5e-5, under fp16's half
ulp), the whole algorithm accurate on every normal result, exactly 0 for ``-inf`` (masked scores),
never negative or NaN.  The device code itself is checked by the GPU suite (``test_exp2_emulation``).
"""

from __future__ import annotations

import numpy as np
import pytest

softmax = pytest.importorskip("gna_cute.kernels.softmax")

F32 = np.float32


def _exp2_poly(x: np.ndarray) -> np.ndarray:
    """The kernel's steps, one float32 rounding each (FFMA rounds once: done in float64, then cast)."""
    c0, c1, c2, c3 = (F32(c) for c in softmax.EXP2_POLY)
    magic = F32(softmax.ROUND_MAGIC)
    x = np.maximum(x.astype(F32), F32(softmax.EXP2_POLY_MIN))
    t = (x + magic).astype(F32)
    f = (x - (t - magic).astype(F32)).astype(F32)

    def fma(a, b, c):
        return (a.astype(np.float64) * b + c).astype(F32)

    p = fma(fma(fma(np.full_like(f, c3), f, c2), f, c1), f, c0)
    bits = ((t.view(np.uint32).astype(np.uint64) + 127) & 0x1FF) << 23
    return (p * bits.astype(np.uint32).view(F32)).astype(F32)


def test_cubic_is_a_minimax_fit() -> None:
    f = np.linspace(-0.5, 0.5, 100_001)
    rel = np.polyval(softmax.EXP2_POLY[::-1], f) / np.exp2(f) - 1
    assert np.abs(rel).max() <= 7.5e-5
    # equi-ripple: the error reaches its bound with both signs (a fit that is off shows one sign)
    assert rel.max() > 7e-5 and rel.min() < -7e-5


def test_algorithm_accurate_and_exact_zero_for_masked_scores() -> None:
    x = np.concatenate([np.linspace(-140, 0, 1_400_001, dtype=F32), F32([-np.inf, -0.0, 0.0, -1e30])])
    y = _exp2_poly(x)
    truth = np.exp2(x.astype(np.float64))
    normal = truth >= 2.0**-126
    assert np.abs(y[normal] / truth[normal] - 1).max() <= 8e-5
    assert (y >= 0).all() and not np.isnan(y).any()
    assert (y[x <= -127.5] == 0).all()  # -inf and far below: exactly zero, as MUFU's ex2 gives
    assert np.abs(y[~normal]).max() < 2.0**-125


def test_round_to_nearest_leaves_a_half_interval() -> None:
    """f = x - round(x) must stay in [-1/2, 1/2], where the cubic was fitted."""
    x = np.linspace(-127, 0, 254_001, dtype=F32)
    magic = F32(softmax.ROUND_MAGIC)
    f = x - ((x + magic).astype(F32) - magic)
    assert np.abs(f).max() <= 0.5
