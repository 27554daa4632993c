"""The shared arithmetic of the norm and embedding ops: exact fma, moments, kernel choice."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcompiler.ops.norm import fma_f32_exact, group_norm_kernel, int_moments

F32 = np.float32
floats32 = st.floats(-1e6, 1e6, allow_nan=False, width=32)


def nearest_f32(x: Fraction) -> np.float32:
    """Round an exact rational to float32, ties to even (slow, for the oracle only)."""
    r = F32(float(x))  # within one ulp; pick the best of r and its neighbours
    cands = [np.nextafter(r, F32(-np.inf)), r, np.nextafter(r, F32(np.inf))]
    best = min(abs(Fraction(float(c)) - x) for c in cands)
    ties = [c for c in cands if abs(Fraction(float(c)) - x) == best]
    return min(ties, key=lambda c: int(np.asarray(c).view(np.uint32)) & 1)


@given(floats32, floats32, floats32)
def test_fma_is_correctly_rounded(a, b, c):
    a, b, c = F32(a), F32(b), F32(c)
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    assert fma_f32_exact(a, b, c) == nearest_f32(exact)


def test_fma_double_rounding_cases():
    # p = a*b lands a hair off a float32 midpoint; c pulls the float64 sum exactly onto it
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a = F32(1 + int(rng.integers(0, 2**23)) * 2.0**-23)
        b = F32(int(rng.integers(1, 256)))
        p = float(a) * float(b)
        r = F32(p)
        mid = (float(r) + float(np.nextafter(r, F32(np.inf)))) / 2
        c = F32((mid - p) * (1 + float(rng.choice([-1, 1])) * 2.0**-30))
        exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
        assert fma_f32_exact(a, b, c) == nearest_f32(exact)


def test_moments_are_exact_integer_sums():
    q = np.array([[237] * 1124 + [238]], np.uint8)  # sum of squares beyond 2**24
    m, r = int_moments(q, 200, 1.0, 1e-5)
    m_sh = F32(F32(q.astype(np.int64).sum()) / F32(q.size))
    assert m[0] == F32(m_sh - F32(200))
    assert np.isfinite(r[0]) and r[0] > 0


def test_group_norm_kernel_choice_matches_pytorch_layout_check():
    torch = pytest.importorskip("torch")
    for shape in [(2, 1, 5, 5), (2, 3, 1, 1), (2, 3, 1, 4), (2, 3, 4, 1), (1, 1, 1, 1),
                  (2, 4, 7), (1, 1, 3, 4, 5), (2, 1, 30, 20)]:
        channels_last = torch.empty(shape).is_contiguous(memory_format=torch.channels_last)
        assert (group_norm_kernel(shape) != "nchw") == (len(shape) == 4 and channels_last)
    assert group_norm_kernel((2, 1, 30, 20)) == "nhwc_float"
    assert group_norm_kernel((2, 1, 16, 31)) == "nhwc"
