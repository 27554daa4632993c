"""f.* elementwise ops on IEEE special values (inf, NaN, signed zero, subnormals, huge) vs PyTorch.

The registry-driven test compares finite outputs only (equal infinities differ by NaN there);
this one also checks infinities and NaNs land where PyTorch puts them.
"""

import numpy as np
import pytest

from qcompiler.ir.registry import NoAttrs, OpSample, Sig, all_ops
from qcompiler.ir.types import TensorType, f32
from qcompiler.ops.float_ops import Binary, BinaryScalar, GeluAttrs, ScalarAttrs, Unary

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

SPECIAL = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-45, -1e-45, 1e-40, 3e38, -3e38, 88.8,
                    -104.0, 1.0, -2.5], np.float32)

# PyTorch's vectorized erf-gelu overflows to inf for x > ~1.7e38 and gives NaN at +inf (its
# scalar path gives x and inf, as we do).
KNOWN_DIFFERENCES = {("f.gelu", GeluAttrs("none")): SPECIAL > 1.7e38}


def _check(op, attrs, arrays):
    types = tuple(TensorType(a.shape, f32) for a in arrays)
    sig = Sig(types, op.infer_types(attrs, types), attrs)
    ours = op.reference(sig, *arrays)
    theirs = np.asarray(op.torch_reference(OpSample(attrs, types, arrays), sig))
    skip = KNOWN_DIFFERENCES.get((op.name, attrs), np.zeros(ours.shape, bool))
    finite = np.isfinite(theirs)
    atol = 4 * op.rtol * (np.abs(theirs[finite]).max() if finite.any() else 0.0)
    with np.errstate(invalid="ignore"):
        ok = ((ours == theirs) | (np.isnan(ours) & np.isnan(theirs))
              | (np.abs(ours.astype(np.float64) - theirs) <= atol) | skip)
    bad = ~ok
    assert not bad.any(), (
        f"{op.name} {attrs}: inputs {[a[bad] for a in arrays]} give {ours[bad]}, PyTorch"
        f" {theirs[bad]}")


@pytest.mark.parametrize("op", [o for o in all_ops() if isinstance(o, Unary)],
                         ids=lambda o: o.name)
def test_unary_special_values(op):
    for attrs, _ in op.sample_attrs():
        _check(op, attrs, (SPECIAL,))


@pytest.mark.parametrize("op", [o for o in all_ops() if isinstance(o, Binary) and f32 in o.dtypes],
                         ids=lambda o: o.name)
def test_binary_special_values(op):
    a = np.repeat(SPECIAL, SPECIAL.size)
    b = np.tile(SPECIAL, SPECIAL.size)
    _check(op, NoAttrs(), (a, b))


@pytest.mark.parametrize("op", [o for o in all_ops() if isinstance(o, BinaryScalar)],
                         ids=lambda o: o.name)
def test_scalar_special_values(op):
    for s in (0.5, -3.0, 2.0, 0.0, float("inf"), -float("inf"), 3e38):
        for reverse in (False, True):
            _check(op, ScalarAttrs(s, reverse), (SPECIAL,))
