"""Float max pooling: f.max_pool2d, the float32 form of F.max_pool2d.

PT2E graphs (torch.export + prepare_pt2e/convert_pt2e) keep max pooling in float wherever the
quantizer did not annotate it: X86InductorQuantizer only quantizes around a max pool whose
input is already quantized, so `conv -> add -> relu -> max_pool2d` stays float. The fuse-qdq
pass turns `dequantize -> f.max_pool2d -> quantize` into qnn.max_pool2d (ops/pool.py), which
takes the same attrs (`MaxPoolAttrs`).

Semantics: y[n, c, i, j] = max over the dilated window of x, with padding cells at -inf
(they never win) and NaN propagating (PyTorch's CPU kernel takes a NaN as the new maximum).
Exact: max only selects one of its float32 inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

from qcompiler.errors import TypeInferenceError
from qcompiler.ir.registry import OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import TensorType, f32
from qcompiler.ops.pool import MaxPoolAttrs, pool_out_size
from qcompiler.testing import samples as S

_NOTE = "float op: |diff| <= 0 (max selects one of its inputs; NaN propagates as in PyTorch)"


def _ints(op: str, name: str, v: Any, allow_empty: bool = False) -> tuple[int, int]:
    """An attribute given as an int or 1 or 2 ints, expanded to (h, w)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v), int(v)
    if not isinstance(v, (tuple, list)) or not all(
            isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in v):
        raise TypeInferenceError(f"{op}: {name} must be an int or a tuple of ints, got {v!r}")
    if len(v) == 0 and allow_empty:
        return -1, -1
    if len(v) == 1:
        return int(v[0]), int(v[0])
    if len(v) != 2:
        raise TypeInferenceError(f"{op}: {name} must have 1 or 2 elements, got {list(v)}")
    return int(v[0]), int(v[1])


def _window(op: str, a: MaxPoolAttrs, x: TensorType
            ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int],
                       tuple[int, int]]:
    """(kernel, stride, padding, dilation, output size) with PyTorch's checks."""
    k = _ints(op, "kernel_size", a.kernel_size)
    st = _ints(op, "stride", a.stride, allow_empty=True)
    st = k if st == (-1, -1) else st
    p = _ints(op, "padding", a.padding)
    d = _ints(op, "dilation", a.dilation)
    for name, vals, lo in (("kernel_size", k, 1), ("stride", st, 1), ("dilation", d, 1),
                           ("padding", p, 0)):
        if any(v < lo for v in vals):
            raise TypeInferenceError(f"{op}: {name} must be >= {lo}, got {list(vals)}")
    if any(pp > kk // 2 for pp, kk in zip(p, k)):
        raise TypeInferenceError(
            f"{op}: padding {list(p)} must be at most half of kernel_size {list(k)}")
    h, w = x.shape[-2:]
    out = (pool_out_size(h, k[0], st[0], p[0], d[0], bool(a.ceil_mode)),
           pool_out_size(w, k[1], st[1], p[1], d[1], bool(a.ceil_mode)))
    if min(out) < 1:
        raise TypeInferenceError(
            f"{op}: input spatial size {[h, w]} is too small for kernel {list(k)}, stride"
            f" {list(st)}, padding {list(p)}, dilation {list(d)}: output would be {list(out)}")
    return k, st, p, d, out


@register_op
class FMaxPool2d(OpDef):
    """y[..., i, j] = max_{a<kh, b<kw} xpad[..., i*sh + a*dh, j*sw + b*dw] on CHW or NCHW
    float32, xpad = x padded with -inf; NaN propagates (F.max_pool2d on a float tensor)."""

    name = "f.max_pool2d"
    Attrs = MaxPoolAttrs
    num_inputs = 1
    schedule_kind = "reduction"
    torch_counterparts = ("F.max_pool2d", "nn.MaxPool2d", "aten.max_pool2d")
    fidelity_note = _NOTE

    def infer_type(self, attrs: MaxPoolAttrs, x: TensorType) -> TensorType:
        if x.qparams is not None or x.dtype is not f32:
            raise TypeInferenceError(
                f"f.max_pool2d takes an unquantized float32 tensor, got {x} (quantized inputs:"
                " qnn.max_pool2d)")
        if x.rank not in (3, 4) or any(d == 0 for d in x.shape[-3:]):
            raise TypeInferenceError(
                f"f.max_pool2d: expected a non-empty CHW or NCHW input, got {list(x.shape)}")
        *_, out = _window(self.name, attrs, x)
        return TensorType(x.shape[:-2] + out, f32)

    def reference(self, sig: Sig, x: np.ndarray) -> np.ndarray:
        k, st, p, d, out = _window(self.name, sig.attrs, sig.in_types[0])
        lead = [(0, 0)] * (x.ndim - 2)
        # right padding generous enough for every (possibly ceil_mode) window
        pad = lead + [(p[0], p[0] + k[0] * d[0]), (p[1], p[1] + k[1] * d[1])]
        xp = np.pad(x, pad, constant_values=-np.inf)
        res = np.full(x.shape[:-2] + out, -np.inf, np.float32)
        for a, b in itertools.product(range(k[0]), range(k[1])):
            win = xp[..., a * d[0]: a * d[0] + (out[0] - 1) * st[0] + 1: st[0],
                     b * d[1]: b * d[1] + (out[1] - 1) * st[1] + 1: st[1]]
            res = np.maximum(res, win)  # NaN propagates
        return res.astype(np.float32)

    def lower(self, sig: Sig, x: Any) -> Any:
        """One reduction over the (dilated) window: acc starts at -inf, each step
        acc = acc if (isnan(acc) or acc >= v) else v (numpy's scalar np.maximum, so NaN
        propagates); cells outside the input read -inf, as the reference's padding."""
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import te, tirx
        from qcompiler.ops.float_ops import _nan_extreme_reducer

        ty = sig.in_types[0]
        k, st, p, d, _ = _window(self.name, sig.attrs, ty)
        h, w = ty.shape[-2:]
        lead = ty.rank - 2
        kh = te.reduce_axis((0, k[0]), name="kh")
        kw = te.reduce_axis((0, k[1]), name="kw")
        red = _nan_extreme_reducer("max", "float32")
        neg_inf = te_lib.f32_const(-np.inf)

        def body(i: tuple[Any, ...]) -> Any:
            r = i[lead] * st[0] - p[0] + kh * d[0]
            c = i[lead + 1] * st[1] - p[1] + kw * d[1]
            inside = tirx.And(tirx.And(r >= 0, r < h), tirx.And(c >= 0, c < w))
            v = tirx.if_then_else(inside, x[tuple(i[:lead]) + (r, c)], neg_inf)
            return red(v, axis=[kh, kw])

        return te_lib.elementwise(sig.out.shape, body, "f_max_pool2d")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        cases = (((1, 3, 9, 9), (3, 3), (2, 2), (1, 1), (1, 1), False),
                 ((2, 4, 7, 10), (2, 3), (), (1, 0), (1, 1), True),
                 ((1, 5, 5, 6), (3, 2), (1, 2), (1, 1), (2, 1), False),
                 ((3, 8, 7), (2, 2), (3, 1), (0, 1), (1, 2), True),
                 ((1, 2, 8, 8), (2, 2), (), (0, 0), (1, 1), False))
        for shape, ks, st, pad, dil, ceil in cases:
            x = S.ftensor(rng, shape, 2.0)[1]
            x.reshape(-1)[:3] = [-np.inf, -0.0, 1e30]
            yield OpSample(MaxPoolAttrs(ks, st, pad, dil, ceil), (TensorType(shape, f32),), (x,),
                           f"{'x'.join(map(str, shape))}-k{ks}-s{st}-p{pad}-d{dil}"
                           f"{'-ceil' if ceil else ''}")
        x = S.ftensor(rng, (1, 2, 6, 6), 1.0)[1]
        x[0, 1, 2, 3] = np.nan
        yield OpSample(MaxPoolAttrs((3, 3), (1, 1), (1, 1)), (TensorType(x.shape, f32),), (x,),
                       "nan")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        import torch

        a = sample.attrs
        x = torch.from_numpy(np.array(sample.arrays[0], order="C"))
        y = torch.nn.functional.max_pool2d(x, list(a.kernel_size), list(a.stride),
                                           list(a.padding), list(a.dilation), a.ceil_mode)
        return y.numpy()
