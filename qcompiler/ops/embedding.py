"""Quantized embedding lookups: qnn.embedding and qnn.embedding_bag (float32 output).

The weight is a 2-D table of 8-bit (u8, PyTorch quint8) or 4-bit (u4, quint4x2, stored here
unpacked, one value per byte) values with per-row float qparams: QParams scheme
`float_qparams`, axis 0, one float scale and one float zero point per row (what
torch.ao.quantization's float_qparams_weight_only_qconfig produces). PyTorch packs each row as
its values followed by a scale and a bias = -(zero_point * scale) (float32 ops), stored as
float32 for 8-bit rows and as float16 for 4-bit rows (both rounded to nearest even):

    8-bit: s_r = f32(scale_r),             b_r = -f32(f32(zp_r) * s_r)
    4-bit: s_r = f32(f16(f32(scale_r))),   b_r = f32(f16(-f32(f32(zp_r) * f32(scale_r))))

fbgemm's EmbeddingSpMDM kernels then accumulate every bag in float32, starting from 0, one
index i (row r = indices[i]) at a time, with the optional per-sample weight w_i folded into
the row's scale and bias first:

    s = f32(s_r * w_i), b = f32(b_r * w_i)         (s_r, b_r when there are no weights)
    acc = fma(f32(q[r, :]), s, f32(acc + b))

Measured bit-exact against torch 2.13 (8-bit and 4-bit, with and without per-sample weights,
int32 and int64 indices/offsets, empty bags).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from qcompiler.errors import InterpretError, TypeInferenceError
from qcompiler.ir.registry import NoAttrs, OpDef, OpSample, Sig, register_op
from qcompiler.ir.types import DType, QParams, TensorType, f32, i32, i64, u4, u8
from qcompiler.ops.norm import fma_f32_exact, torch_quiet

F32 = np.float32
WEIGHT_DTYPES = (u8, u4)
INDEX_DTYPES = (i32, i64)
MODES = ("sum", "mean", "max")


# --- shared checks and arithmetic ----------------------------------------------------------------


def check_weight(op: str, w: TensorType) -> QParams:
    """The weight table must be (num_embeddings, dim) u8/u4 with per-row float qparams."""
    qp = w.qparams
    if w.dtype not in WEIGHT_DTYPES or qp is None:
        raise TypeInferenceError(
            f"{op}: weight must be a quantized quint8 (u8) or quint4x2 (u4) table, got {w}")
    if w.rank != 2:
        raise TypeInferenceError(
            f"{op}: weight must be 2-D (num_embeddings, embedding_dim), got {list(w.shape)}")
    if qp.scheme != "float_qparams" or qp.axis != 0:
        raise TypeInferenceError(
            f"{op}: weight qparams must be per-row float qparams (scheme float_qparams, axis 0,"
            f" PyTorch's per_channel_affine_float_qparams), got {qp}")
    if w.dtype is u4 and w.shape[1] % 2:
        raise TypeInferenceError(
            f"{op}: 4-bit (quint4x2) weights need an even embedding_dim (PyTorch packs two"
            f" values per byte), got {w.shape[1]}")
    return qp


def check_indices(op: str, ty: TensorType, what: str, ranks: tuple[int, ...]) -> None:
    if ty.dtype not in INDEX_DTYPES or ty.qparams is not None:
        raise TypeInferenceError(f"{op}: {what} must be int32 (i32) or int64 (i64), got {ty}")
    if ty.rank not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise TypeInferenceError(f"{op}: {what} must be {want}, got {list(ty.shape)}")


def row_params(qp: QParams, dtype: DType) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (scale, bias) as PyTorch's embedding_bag_prepack stores them, as float32."""
    s = np.asarray(qp.scale, F32)
    with np.errstate(over="ignore", invalid="ignore"):
        b = -((np.asarray(qp.zero_point, F32) * s).astype(F32))
        if dtype is u4:
            s, b = s.astype(np.float16).astype(F32), b.astype(np.float16).astype(F32)
    return s, b


def check_index_values(op: str, idx: np.ndarray, rows: int) -> None:
    bad = (idx < 0) | (idx >= rows)
    if bad.any():
        k = int(np.argmax(bad.reshape(-1)))
        raise InterpretError(
            f"{op}: index {int(idx.reshape(-1)[k])} at position {k} is out of range for a"
            f" table of {rows} rows")


def bag_sums(q: np.ndarray, qp: QParams, dtype: DType, idx: np.ndarray, starts: np.ndarray,
             ends: np.ndarray, psw: np.ndarray | None, skip: np.ndarray | None) -> np.ndarray:
    """fbgemm's float32 bag accumulation (module docstring) for bags [starts[k], ends[k])."""
    s_r, b_r = row_params(qp, dtype)
    nb = len(starts)
    acc = np.zeros((nb, q.shape[1]), F32)
    lengths = ends - starts
    for j in range(int(lengths.max()) if nb else 0):
        live = np.nonzero(lengths > j)[0]
        pos = starts[live] + j
        if skip is not None:
            keep = ~skip[pos]
            live, pos = live[keep], pos[keep]
        rows = idx[pos]
        s, b = s_r[rows], b_r[rows]
        if psw is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                s, b = (s * psw[pos]).astype(F32), (b * psw[pos]).astype(F32)
        with np.errstate(over="ignore", invalid="ignore"):
            shifted = (acc[live] + b[:, None]).astype(F32)
        acc[live] = fma_f32_exact(q[rows].astype(F32), s[:, None], shifted)
    return acc


def packed_weight(torch: Any, q: np.ndarray, qp: QParams, dtype: DType) -> Any:
    """PyTorch's prepacked embedding weight for our unpacked table (8-bit or 4-bit)."""
    scales = torch.tensor(qp.scale, dtype=torch.float32)
    zps = torch.tensor(qp.zero_point, dtype=torch.float32)
    if dtype is u8:
        qw = torch._make_per_channel_quantized_tensor(torch.from_numpy(q.copy()), scales, zps, 0)
    else:  # build quint4x2 by quantizing values that round back to q, then check the packing
        real = (torch.from_numpy(q.astype(np.float32)) - zps[:, None]) * scales[:, None]
        qw = torch.quantize_per_channel(real, scales, zps, 0, torch.quint4x2)
        packed = qw.int_repr().numpy().reshape(q.shape[0], -1)
        expect = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
        if not np.array_equal(packed, expect):
            raise AssertionError("could not build the quint4x2 weight for this sample")
    return torch.ops.quantized.embedding_bag_prepack(qw)



def _clamped_row(index: Any, rows: int) -> Any:
    """An index tensor element clamped into [0, rows) as int32 (TE/TIR expression)."""
    from qcompiler.lowering.tvm_compat import expr_dtype, te

    dt = expr_dtype(index)
    return te.max(te.min(index, te.const(rows - 1, dt)), te.const(0, dt)).astype("int32")


def tirx_select(cond: Any, a: Any, b: Any) -> Any:
    """tirx.Select(cond, a, b) with int32 immediates for Python ints."""
    from qcompiler.lowering.tvm_compat import te, tirx

    def prim(v: Any) -> Any:
        return te.const(v, "int32") if isinstance(v, int) else v

    return tirx.Select(cond, prim(a), prim(b))

# --- embedding -----------------------------------------------------------------------------------


@register_op
class QEmbedding(OpDef):
    """out[..., :] = fma(f32(q[r, :]), s_r, b_r) with r = indices[...] (one-index bags).

    Inputs: weight (N, D) u8/u4 with per-row float qparams, indices (i32/i64, 1-D or 2-D).
    Output float32 (*indices.shape, D). torch.ops.quantized.embedding_byte / embedding_4bit
    (nnq.Embedding); indices must lie in [0, N) (checked when run).
    """

    name = "qnn.embedding"
    num_inputs = 2
    torch_counterparts = ("torch.ops.quantized.embedding_byte",
                          "torch.ops.quantized.embedding_4bit", "nnq.Embedding")

    def infer_type(self, attrs: NoAttrs, w: TensorType, idx: TensorType) -> TensorType:
        check_weight(self.name, w)
        check_indices(self.name, idx, "indices", (1, 2))
        return TensorType(idx.shape + (w.shape[1],), f32)

    def reference(self, sig: Sig, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
        w = sig.in_types[0]
        assert w.qparams is not None
        check_index_values(self.name, idx, w.shape[0])
        flat = idx.reshape(-1).astype(np.int64)
        pos = np.arange(flat.size)
        out = bag_sums(q, w.qparams, w.dtype, flat, pos, pos + 1, None, None)
        return out.reshape(sig.out.shape)

    def lower(self, sig: Sig, q: Any, idx: Any) -> Any:
        """out[..., d] = fma(f32(q[r, d]), s_r, f32(0 + b_r)), the per-row scale and bias
        tables computed by `row_params` (the reference's numpy) as kernel constants.

        Out-of-range indices (the interpreter raises InterpretError) read the nearest valid
        row (clamped): compiled code never reads outside the table.
        """
        from qcompiler.lowering import te_lib

        w = sig.in_types[0]
        assert w.qparams is not None
        s_r, b_r = row_params(w.qparams, w.dtype)
        st = te_lib.constant(s_r, "embedding_row_scale")
        bt = te_lib.constant(b_r, "embedding_row_bias")
        rank = len(sig.in_types[1].shape)
        zero = te_lib.fence(te_lib.f32_const(0.0))  # the bag's initial accumulator

        def value(i: tuple[Any, ...]) -> Any:
            r = _clamped_row(idx[i[:rank]], w.shape[0])
            return te_lib.fma(q[r, i[rank]].astype("float32"), st[r], zero + bt[r])

        return te_lib.elementwise(sig.out.shape, value, "qnn_embedding")

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        # index shapes are unusual on purpose: random graphs (tests/ir) reuse any value of the
        # same type as an operand, and another op's index tensor could be out of range here
        cases = (((11, 16), u8, (43,), i64), ((9, 6), u4, (5, 9), i32), ((7, 3), u8, (3, 13), i64),
                 ((20, 34), u4, (47,), i64), ((5, 64), u8, (53,), i32), ((6, 2), u4, (2, 11), i64))
        for k, (wshape, wdt, ishape, idt) in enumerate(cases):
            tw, q = weight_sample(rng, wshape, wdt, edge=k % 2 == 1)
            idx = rng.integers(0, wshape[0], size=ishape).astype(idt.np)
            idx.reshape(-1)[: min(2, idx.size)] = [wshape[0] - 1, 0][: min(2, idx.size)]
            yield OpSample(NoAttrs(), (tw, TensorType(ishape, idt)), (q, idx),
                           f"{wdt}-{wshape[0]}x{wshape[1]}-idx{'x'.join(map(str, ishape))}")

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        torch = torch_quiet()
        w = sample.in_types[0]
        assert w.qparams is not None
        packed = packed_weight(torch, sample.arrays[0], w.qparams, w.dtype)
        fn = (torch.ops.quantized.embedding_byte if w.dtype is u8
              else torch.ops.quantized.embedding_4bit)
        return fn(packed, torch.from_numpy(sample.arrays[1]), False).numpy()


# --- embedding bag -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QEmbeddingBagAttrs:
    mode: str = "sum"
    """Reduction over a bag; PyTorch's quantized kernels only sum (see QEmbeddingBag)."""
    include_last_offset: bool = False
    """offsets has one entry more than there are bags (its last entry = len(indices))."""
    padding_idx: int | None = None
    """Entries equal to this row (negative: counted from the end) are left out of the bag."""


@register_op
class QEmbeddingBag(OpDef):
    """out[k, :] = the module's float32 fma accumulation over the bag's entries, in order.

    Inputs: weight (N, D) u8/u4 with per-row float qparams; indices (i32/i64); offsets
    (i32/i64, 1-D, only with 1-D indices: bag k is indices[offsets[k]:offsets[k+1]], the last
    bag ends at len(indices) unless include_last_offset); optional per_sample_weights (f32,
    shape of indices). 2-D indices (B, S) are B bags of S entries, without offsets. Entries
    equal to padding_idx are skipped (with their weights); empty bags give 0.0. Output float32
    (B, D).

    Only mode="sum": PyTorch's quantized kernels (embedding_bag_byte/4bit[_rowwise_offsets],
    used by nnq.EmbeddingBag) ignore `mode` and always sum. padding_idx is PyTorch's pruned
    path (compressed_indices_mapping with -1 at padding_idx). offsets must start at 0, be
    non-decreasing and end within indices (checked when run).
    """

    name = "qnn.embedding_bag"
    Attrs = QEmbeddingBagAttrs
    num_inputs = (2, 3, 4)
    schedule_kind = "reduction"
    torch_counterparts = ("torch.ops.quantized.embedding_bag_byte",
                          "torch.ops.quantized.embedding_bag_4bit",
                          "torch.ops.quantized.embedding_bag_{byte,4bit}_rowwise_offsets",
                          "nnq.EmbeddingBag")

    def infer_type(self, attrs: QEmbeddingBagAttrs, w: TensorType, idx: TensorType,
                   *rest: TensorType) -> TensorType:
        op = self.name
        check_weight(op, w)
        check_indices(op, idx, "indices", (1, 2))
        if attrs.mode not in MODES:
            raise TypeInferenceError(
                f"{op}: unknown mode {attrs.mode!r}; PyTorch's modes are sum, mean, max")
        if attrs.mode != "sum":
            raise TypeInferenceError(
                f"{op}: mode {attrs.mode!r} is not supported: PyTorch's quantized embedding_bag"
                " kernels (nnq.EmbeddingBag) ignore mode and always sum, so only mode='sum' has"
                " a PyTorch-exact meaning; express mean/max as dequantize + float embedding_bag")
        if not isinstance(attrs.include_last_offset, bool):
            raise TypeInferenceError(
                f"{op}: include_last_offset must be a bool, got {attrs.include_last_offset!r}")
        pad = attrs.padding_idx
        n = w.shape[0]
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)
                                or not -n <= pad < n):
            raise TypeInferenceError(
                f"{op}: padding_idx must be None or an int in [{-n}, {n - 1}] for a table of"
                f" {n} rows, got {pad!r}")
        if idx.rank == 1:
            if not rest:
                raise TypeInferenceError(
                    f"{op}: 1-D indices need offsets (input 2), as PyTorch's embedding_bag")
            offsets, psw = rest[0], rest[1:]
            check_indices(op, offsets, "offsets (input 2)", (1,))
            bags = offsets.shape[0] - (1 if attrs.include_last_offset else 0)
            if bags < 0:
                raise TypeInferenceError(
                    f"{op}: include_last_offset needs at least one offset, got {offsets}")
        else:
            psw = rest
            if len(rest) > 1:
                raise TypeInferenceError(
                    f"{op}: 2-D indices (bags of equal length) take no offsets; inputs are"
                    " weight, indices[, per_sample_weights]")
            if attrs.include_last_offset:
                raise TypeInferenceError(
                    f"{op}: include_last_offset needs 1-D indices with offsets")
            bags = idx.shape[0]
        for t in psw:
            if t.dtype is not f32 or t.qparams is not None or t.shape != idx.shape:
                raise TypeInferenceError(
                    f"{op}: per_sample_weights must be float32 with the shape of indices"
                    f" {list(idx.shape)}, got {t}")
        return TensorType((bags, w.shape[1]), f32)

    def reference(self, sig: Sig, q: np.ndarray, idx: np.ndarray, *rest: np.ndarray,
                  ) -> np.ndarray:
        a: QEmbeddingBagAttrs = sig.attrs
        w = sig.in_types[0]
        assert w.qparams is not None
        n = w.shape[0]
        flat = idx.reshape(-1).astype(np.int64)
        if idx.ndim == 2:
            starts = np.arange(idx.shape[0], dtype=np.int64) * idx.shape[1]
            ends = starts + idx.shape[1]
            psw = rest[0].reshape(-1) if rest else None
        else:
            starts, ends = self._bags(rest[0].astype(np.int64), flat.size, a.include_last_offset)
            psw = rest[1] if len(rest) > 1 else None
        check_index_values(self.name, flat, n)
        skip = None if a.padding_idx is None else flat == a.padding_idx % n
        return bag_sums(q, w.qparams, w.dtype, flat, starts, ends, psw, skip)

    def lower(self, sig: Sig, q: Any, idx: Any, *rest: Any) -> Any:
        """fbgemm's accumulation (module docstring), bag by bag, entry by entry in order, as
        one opaque loop nest (`te.extern`): bag boundaries are data.

        Invalid data, which the interpreter rejects with InterpretError, gives defined
        results: an index outside the table reads the nearest valid row (clamped); offsets
        are clamped into [0, len(indices)] and a bag that would end before it starts is
        empty. On valid inputs the result equals the interpreter's bit for bit.
        """
        from qcompiler.lowering import te_lib
        from qcompiler.lowering.tvm_compat import expr_dtype, te

        a: QEmbeddingBagAttrs = sig.attrs
        w = sig.in_types[0]
        assert w.qparams is not None
        n_rows, dim = w.shape
        ishape = sig.in_types[1].shape
        n_idx = int(np.prod(ishape))
        bags = sig.out.shape[0]
        two_d = len(ishape) == 2
        offsets = None if two_d else rest[0]
        psw = (rest[0] if rest else None) if two_d else (rest[1] if len(rest) > 1 else None)
        s_r, b_r = row_params(w.qparams, w.dtype)
        tensors = [q, idx, te_lib.constant(s_r, "embedding_bag_row_scale"),
                   te_lib.constant(b_r, "embedding_bag_row_bias")]
        if offsets is not None:
            tensors.append(offsets)
        if psw is not None:
            tensors.append(psw)
        pad = None if a.padding_idx is None else a.padding_idx % n_rows

        def body(ins: Any, outs: Any) -> Any:
            from tvm.script.ir_builder import IRBuilder
            from tvm.script.ir_builder import tirx as T

            qb, ib, sb, bb = ins[:4]
            ob = ins[4] if offsets is not None else None
            pb = ins[-1] if psw is not None else None
            out = outs[0]

            def entry(pos: Any) -> tuple[Any, ...]:
                """The index tensor position of flat entry `pos`."""
                return (pos // ishape[1], pos % ishape[1]) if two_d else (pos,)

            def bound(k: Any) -> Any:
                assert ob is not None
                return te.max(te.min(ob[k].astype("int64"), te.const(n_idx, "int64")),
                              te.const(0, "int64")).astype("int32")

            with IRBuilder() as irb, T.prim_func():
                loop = T.parallel if bags * max(n_idx, 1) * dim >= 1 << 14 else T.serial
                with loop(0, bags) as k:
                    if two_d:
                        start, end = k * ishape[1], (k + 1) * ishape[1]
                    else:
                        start = bound(k)
                        if a.include_last_offset:
                            end = te.max(bound(k + 1), start)
                        else:  # the last bag ends at len(indices)
                            nxt = bound(te.min(k + 1, te.const(bags - 1, "int32")))
                            end = te.max(tirx_select(k + 1 < bags, nxt, n_idx), start)
                    with T.serial(0, dim) as d:
                        T.buffer_store(out, te_lib.f32_const(0.0), [k, d])
                    with T.serial(start, end) as e:
                        raw = ib[entry(e)]
                        r = _clamped_row(raw, n_rows)
                        s, b = sb[r], bb[r]
                        if pb is not None:
                            wgt = pb[entry(e)]
                            s, b = te_lib.fence(s * wgt), te_lib.fence(b * wgt)
                        keep = None if pad is None else raw != te.const(pad, expr_dtype(raw))
                        with contextlib.ExitStack() as stack:
                            if keep is not None:
                                stack.enter_context(T.If(keep))
                                stack.enter_context(T.Then())
                            with T.serial(0, dim) as d:
                                acc = out[k, d]
                                T.buffer_store(out, te_lib.fma(
                                    qb[r, d].astype("float32"), s, acc + b), [k, d])
            return irb.get().body

        acc = te.extern([(bags, dim)], tensors, body, name="qnn_embedding_bag_acc",
                        dtype=["float32"])
        # NOTE: a PrimFunc that is one extern block has no "root" block for the schedule
        # rules to start from; the (cheap) copy gives it one
        return te.compute((bags, dim), lambda k, d: acc[k, d], name="qnn_embedding_bag")

    def _bags(self, offsets: np.ndarray, length: int, include_last: bool,
              ) -> tuple[np.ndarray, np.ndarray]:
        if offsets.size and offsets[0] != 0:
            raise InterpretError(f"{self.name}: offsets must start at 0, got {int(offsets[0])}")
        beyond = np.nonzero(offsets > length)[0]
        if beyond.size:
            k = int(beyond[0])
            raise InterpretError(
                f"{self.name}: offset {int(offsets[k])} at position {k} is beyond the {length}"
                " indices")
        if np.any(np.diff(offsets) < 0):
            raise InterpretError(f"{self.name}: offsets must be non-decreasing, got {offsets}")
        if include_last and offsets[-1] != length:
            raise InterpretError(
                f"{self.name}: with include_last_offset the last offset must equal the number"
                f" of indices ({length}), got {int(offsets[-1])}")
        bounds = offsets if include_last else np.append(offsets, length)
        return bounds[:-1], bounds[1:]

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        # (weight shape, dtype, index shape/dtype, number of bags (None: 2-D), psw, last, pad);
        # unusual index/offset lengths on purpose (see QEmbedding.samples)
        cases: tuple[tuple[Any, ...], ...] = (
            ((10, 8), u8, (59,), i64, 15, False, False, None),
            ((12, 6), u4, (61,), i64, 17, True, True, None),
            ((9, 5), u8, (7, 11), i64, None, True, False, None),
            ((8, 16), u8, (67,), i32, 19, False, False, 2),
            ((7, 4), u4, (71,), i32, 14, True, False, -1),
            ((6, 3), u8, (0,), i64, 11, False, True, None),
            ((15, 34), u4, (73,), i64, 21, False, False, None),
            ((30, 12), u8, (79,), i64, 25, True, True, 0),
            ((4, 2), u4, (6, 13), i32, None, False, False, 3),
        )
        for k, (wshape, wdt, ishape, idt, bags, has_psw, last, pad) in enumerate(cases):
            tw, q = weight_sample(rng, wshape, wdt, edge=k % 2 == 0)
            idx = rng.integers(0, wshape[0], size=ishape).astype(idt.np)
            if idx.size >= 3:
                idx.reshape(-1)[:3] = [wshape[0] - 1, 0, (pad if pad is not None else 1)
                                       % wshape[0]]
            types: list[TensorType] = [tw, TensorType(ishape, idt)]
            arrays: list[np.ndarray] = [q, idx]
            if bags is not None:
                offs = bag_offsets(rng, idx.size, bags)
                offs = offs if last else offs[:-1]
                odt = (i64, i32)[k % 2] if idt is i32 else i64
                types.append(TensorType(offs.shape, odt))
                arrays.append(offs.astype(odt.np))
            if has_psw:
                types.append(TensorType(ishape, f32))
                arrays.append((rng.standard_normal(ishape) * 2).astype(F32))
            label = (f"{wdt}-{wshape[0]}x{wshape[1]}-idx{'x'.join(map(str, ishape))}"
                     f"{'-psw' if has_psw else ''}{'-last' if last else ''}"
                     f"{'' if pad is None else f'-pad{pad}'}")
            yield OpSample(QEmbeddingBagAttrs("sum", last, pad), tuple(types), tuple(arrays),
                           label)

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray:
        torch = torch_quiet()
        a: QEmbeddingBagAttrs = sample.attrs
        w = sample.in_types[0]
        assert w.qparams is not None
        packed = packed_weight(torch, sample.arrays[0], w.qparams, w.dtype)
        idx = torch.from_numpy(sample.arrays[1])
        rest = [torch.from_numpy(x) for x in sample.arrays[2:]]
        offsets = rest.pop(0) if sample.arrays[1].ndim == 1 else None
        psw = rest[0] if rest else None
        mapping = None
        if a.padding_idx is not None:
            n = w.shape[0]
            mapping = torch.arange(n, dtype=torch.int32)
            mapping[a.padding_idx % n] = -1
        fn = (torch.ops.quantized.embedding_bag_byte if w.dtype is u8
              else torch.ops.quantized.embedding_bag_4bit)
        out = fn(packed, idx, offsets, False, 0, mapping is not None, psw, mapping,
                 a.include_last_offset)
        return out.numpy()


# --- samples -------------------------------------------------------------------------------------


def weight_sample(rng: np.random.Generator, shape: tuple[int, int], dtype: DType,
                  edge: bool) -> tuple[TensorType, np.ndarray]:
    """A random table with float32-exact per-row scales/zero points; edge rows at the extremes.

    Edge tables put scales across decades (1e-6 .. 1e2) and zero points at and beyond the
    range ends (0, qmax, fractional, negative), as the float_qparams observer can produce.
    """
    rows, dim = shape
    q = rng.integers(0, dtype.qmax + 1, size=shape).astype(np.uint8)
    scales = np.exp(rng.uniform(np.log(1e-3), np.log(0.5), rows)).astype(F32)
    zps = rng.uniform(0, dtype.qmax, rows).astype(F32)
    if edge:
        fixed_s = (1e-6, 100.0, 3.7e-4, 7.3)
        fixed_z = (0.0, float(dtype.qmax), -2.5, dtype.qmax + 0.75)
        for r in range(min(rows, 4)):
            scales[r], zps[r] = fixed_s[r], fixed_z[r]
        q[0, : min(dim, 2)] = [0, dtype.qmax][: min(dim, 2)]
    return (TensorType(shape, dtype, QParams.per_axis(scales, zps, 0, "float_qparams")), q)


def bag_offsets(rng: np.random.Generator, length: int, bags: int) -> np.ndarray:
    """bags + 1 boundaries 0 = o_0 <= ... <= o_bags = length, with at least one empty bag."""
    cuts = np.sort(rng.integers(0, length + 1, size=bags - 1))
    if bags > 2:
        cuts[bags // 2] = cuts[bags // 2 - 1]  # an empty bag in the middle
    return np.concatenate([[0], cuts, [length]]).astype(np.int64)
