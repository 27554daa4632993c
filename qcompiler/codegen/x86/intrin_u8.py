"""VNNI intrinsics that read activations as bytes: the NCHW4c operand layout (ops/layout.py).

intrin.py's VNNI intrinsics read a packed int32 word per position (built by a packing stage
with shifts and ors from NCHW). An NCHW4c activation already holds the 4 channels of a
position in 4 consecutive bytes, so these read a `uint8` buffer with a trailing axis of 4
and reinterpret it in the implementation (no shifts, no packing stage):

    VNNI_U8_16x4     c[16] (i32) += sum_{k<4} a[k] (u8) * b[16, k] (i8)    lanes = channels
    VNNI_U8_16x4_BW  c[16] (i32) += sum_{k<4} a[i, k] (u8) * b[k] (i8)     lanes = positions

Same instruction (`vpdpbusd zmm`), same lanes and weight layouts as their word twins
(`U8_TWIN`), so a plan made for one serves the other.
"""

from __future__ import annotations

from qcompiler.codegen.x86.intrin import _A_T, _B_T, DotIntrin, VNNI_16x4, VNNI_16x4_BW
from qcompiler.lowering.tvm_compat import T, TensorIntrin

VNNI_U8_16x4 = DotIntrin("qc_x86_vnni_u8_16x4", 16, 4, "int8", "avx512vnni")
VNNI_U8_16x4_BW = DotIntrin("qc_x86_vnni_u8_16x4_bw", 16, 4, "int8", "avx512vnni", True)

U8_TWIN: dict[DotIntrin, DotIntrin] = {VNNI_16x4: VNNI_U8_16x4, VNNI_16x4_BW: VNNI_U8_16x4_BW}
"""Word intrinsic -> the byte-reading one with the same lanes and weight layout."""


@T.prim_func(s_tir=True)
def _desc(a: T.Buffer((4,), "uint8", offset_factor=1),
          b: T.Buffer((16, 4), "int8", offset_factor=1),
          c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:4], b[0:16, 0:4])
        T.writes(c[0:16])
        for i, j in T.grid(16, 4):
            with T.sblock("update"):
                vi, vj = T.axis.remap("SR", [i, j])
                c[vi] = c[vi] + T.Cast("int32", a[vj]) * T.Cast("int32", b[vi, vj])


@T.prim_func(s_tir=True)
def _impl(a: T.Buffer((4,), "uint8", offset_factor=1),
          b: T.Buffer((16, 4), "int8", offset_factor=1),
          c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:4], b[0:16, 0:4])
        T.writes(c[0:16])
        # the 4 bytes of one position as one int32, broadcast to 16 lanes
        c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            c.vload([0], dtype="int32x16"),
            T.reinterpret(T.broadcast(T.reinterpret(a.vload([0], "uint8x4"), dtype="int32"), 16),
                          dtype=_A_T),
            T.reinterpret(b.vload([0, 0], dtype="int8x64"), dtype=_B_T),
            dtype="int32x16",
        )


@T.prim_func(s_tir=True)
def _desc_bw(a: T.Buffer((16, 4), "uint8", offset_factor=1),
             b: T.Buffer((4,), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:16, 0:4], b[0:4])
        T.writes(c[0:16])
        for i, j in T.grid(16, 4):
            with T.sblock("update"):
                vi, vj = T.axis.remap("SR", [i, j])
                c[vi] = c[vi] + T.Cast("int32", a[vi, vj]) * T.Cast("int32", b[vj])


@T.prim_func(s_tir=True)
def _impl_bw(a: T.Buffer((16, 4), "uint8", offset_factor=1),
             b: T.Buffer((4,), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:16, 0:4], b[0:4])
        T.writes(c[0:16])
        # 16 positions x 4 channels = one 64-byte vector; the weight group broadcast
        c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            c.vload([0], dtype="int32x16"),
            T.reinterpret(a.vload([0, 0], dtype="uint8x64"), dtype=_A_T),
            T.reinterpret(
                T.broadcast(T.reinterpret(b.vload([0], "int8x4"), dtype="int32"), 16),
                dtype=_B_T,
            ),
            dtype="int32x16",
        )


TensorIntrin.register(VNNI_U8_16x4.name, _desc, _impl, override=True)
TensorIntrin.register(VNNI_U8_16x4_BW.name, _desc_bw, _impl_bw, override=True)


def intrinsic_by_name_u8(name: str) -> DotIntrin | None:
    """The byte-reading intrinsic called `name`, or None."""
    return next((i for i in U8_TWIN.values() if i.name == name), None)


__all__ = ["U8_TWIN", "VNNI_U8_16x4", "VNNI_U8_16x4_BW", "intrinsic_by_name_u8"]
