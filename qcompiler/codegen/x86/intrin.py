"""x86 int8 tensor intrinsics (description + implementation pairs), registered on import.

The activations reach every intrinsic *packed*: the G reduction steps of one position are one
int32 word (4 bytes for VNNI, 2 zero-extended int16 halves for pmaddwd), so a packing stage
can build them with vectorized shifts and ors, and the description reads step k of word `a`
as `(a >> bits*k) & mask`. Two shapes of each instruction, by what the vector lanes hold:

    lanes = output channels (`a` = one activation word broadcast, `b` = weight tile)
    VNNI_16x4       c[16] (i32) += sum_{k<4} byte_k(a) (u8) * b[16, k] (i8)     `vpdpbusd zmm`
    PMADDWD_8x2     c[8]  (i32) += sum_{k<2} half_k(a) (i16) * b[8, k] (i16)    `vpmaddwd ymm`
    PMADDWD_16x2    c[16] (i32) += sum_{k<2} half_k(a) (i16) * b[16, k] (i16)   zmm (AVX-512 BW)

    lanes = output positions (`a` = 16 or 8 activation words, `b` = one weight group broadcast)
    VNNI_16x4_BW    c[16] (i32) += sum_{k<4} byte_k(a[16]) (u8) * b[k] (i8)
    PMADDWD_8x2_BW  c[8]  (i32) += sum_{k<2} half_k(a[8]) (i16) * b[k] (i16)
    PMADDWD_16x2_BW c[16] (i32) += sum_{k<2} half_k(a[16]) (i16) * b[k] (i16)

A weight tile (16 or 8 lanes x 4 or 2 steps) is contiguous: one vector load; a broadcast group
is one 32-bit value. Lanes = positions lets a conv whose input and output are NCHW write 16
consecutive output pixels of one channel with one store (no transpose).

Why our own VNNI intrinsic (docs/tvm-0.27-notes.md recipe 3): the stock `dot_16x4_vnni`
calls `llvm.x86.avx512.vpdpbusd.512` with three `<16 x i32>` operands, which LLVM 22 rejects
(its operands are now `<64 x i8>`), and `import tvm.s_tir.tensor_intrin` costs 20-30 s. The
implementations follow recipe 3's `_vnni.py`.

Why pmaddwd and not the stock `dot_16x4_avx512` (`vpmaddubsw` + `vpmaddwd`): `vpmaddubsw`
adds two u8 x s8 products into an int16 with *saturation*, so the result is wrong whenever
the pair exceeds 32767 (activations >= 128: 255 * 127 * 2 = 64770). `vpmaddwd` multiplies int16
pairs and adds them into an int32, which is exact for every u8 x s8 pair (|sum| <= 65280): the
activations are widened to int16 in the packing stage (the `vpmovzxbw` step) and the weights
are int16 constants. Results equal the reference for every input.

NOTE: a kernel tensorized with VNNI and compiled for a CPU without avx512vnni kills the process
inside LLVM; `intrinsic_for` refuses a target that lacks the feature.
"""

from __future__ import annotations

from dataclasses import dataclass

from qcompiler.errors import LoweringError
from qcompiler.lowering.tvm_compat import T, TensorIntrin, llvm_version_major
from qcompiler.target import TargetPreset

# vpdpbusd.512's operand vector types changed in LLVM 22 (llvm-project PR 155194)
_A_T, _B_T = ("uint8x64", "int8x64") if llvm_version_major() >= 22 else ("int32x16", "int32x16")


@dataclass(frozen=True)
class DotIntrin:
    """One registered intrinsic and the packed layouts it reads."""

    name: str
    lanes: int
    """int32 lanes: output channels, or output positions with `weight_broadcast`."""
    kgroup: int
    """Reduction steps per packed activation word (4 bytes for VNNI, 2 halves for pmaddwd)."""
    w_dtype: str
    """Storage of the packed weights ('int8' or 'int16')."""
    feature: str
    """Target feature the instruction needs."""
    weight_broadcast: bool = False
    """True: lanes are output positions and the weight group is broadcast (`..._BW`)."""

    @property
    def x_bits(self) -> int:
        """Bits per reduction step in a packed activation word."""
        return 32 // self.kgroup


VNNI_16x4 = DotIntrin("qc_x86_vnni_16x4", 16, 4, "int8", "avx512vnni")
PMADDWD_8x2 = DotIntrin("qc_x86_pmaddwd_8x2", 8, 2, "int16", "avx2")
PMADDWD_16x2 = DotIntrin("qc_x86_pmaddwd_16x2", 16, 2, "int16", "avx512bw")
VNNI_16x4_BW = DotIntrin("qc_x86_vnni_16x4_bw", 16, 4, "int8", "avx512vnni", True)
PMADDWD_8x2_BW = DotIntrin("qc_x86_pmaddwd_8x2_bw", 8, 2, "int16", "avx2", True)
PMADDWD_16x2_BW = DotIntrin("qc_x86_pmaddwd_16x2_bw", 16, 2, "int16", "avx512bw", True)


def _descriptions(lanes: int, k: int, w_dtype: str, broadcast_weight: bool) -> object:
    """The description: c[i] += sum_k step_k(a) * b (see the module doc)."""
    bits, mask = 32 // k, (1 << (32 // k)) - 1
    na = lanes if broadcast_weight else 1
    b_shape = (k,) if broadcast_weight else (lanes, k)
    if broadcast_weight:
        @T.prim_func(s_tir=True)
        def desc(a: T.Buffer((na,), "int32", offset_factor=1),
                 b: T.Buffer(b_shape, w_dtype, offset_factor=1),
                 c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(c[0:lanes], a[0:na], b[0:k])
                T.writes(c[0:lanes])
                for i, j in T.grid(lanes, k):
                    with T.sblock("update"):
                        vi, vj = T.axis.remap("SR", [i, j])
                        c[vi] = c[vi] + T.bitwise_and(T.shift_right(a[vi], vj * bits), mask) \
                            * T.Cast("int32", b[vj])
        return desc

    @T.prim_func(s_tir=True)
    def desc_c(a: T.Buffer((na,), "int32", offset_factor=1),
               b: T.Buffer(b_shape, w_dtype, offset_factor=1),
               c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:na], b[0:lanes, 0:k])
            T.writes(c[0:lanes])
            for i, j in T.grid(lanes, k):
                with T.sblock("update"):
                    vi, vj = T.axis.remap("SR", [i, j])
                    c[vi] = c[vi] + T.bitwise_and(T.shift_right(a[0], vj * bits), mask) \
                        * T.Cast("int32", b[vi, vj])
    return desc_c


# --- VNNI: vpdpbusd zmm ------------------------------------------------------------------------


@T.prim_func(s_tir=True)
def _vnni_impl(
    a: T.Buffer((1,), "int32", offset_factor=1),
    b: T.Buffer((16, 4), "int8", offset_factor=1),
    c: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:1], b[0:16, 0:4])
        T.writes(c[0:16])
        # the activation word broadcast to 16 lanes; b is one 64-byte vector
        c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            c.vload([0], dtype="int32x16"),
            T.reinterpret(T.broadcast(a[0], 16), dtype=_A_T),
            T.reinterpret(b.vload([0, 0], dtype="int8x64"), dtype=_B_T),
            dtype="int32x16",
        )


@T.prim_func(s_tir=True)
def _vnni_bw_impl(
    a: T.Buffer((16,), "int32", offset_factor=1),
    b: T.Buffer((4,), "int8", offset_factor=1),
    c: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:16], b[0:4])
        T.writes(c[0:16])
        # 16 activation words = one 64-byte vector; the weight group broadcast to 16 lanes
        c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
            c.vload([0], dtype="int32x16"),
            T.reinterpret(a.vload([0], dtype="int32x16"), dtype=_A_T),
            T.reinterpret(
                T.broadcast(T.reinterpret(b.vload([0], "int8x4"), dtype="int32"), 16),
                dtype=_B_T,
            ),
            dtype="int32x16",
        )


# --- pmaddwd: exact int16 pairs (AVX2 ymm, AVX-512 BW zmm) ------------------------------------


@T.prim_func(s_tir=True)
def _pmaddwd8_impl(
    a: T.Buffer((1,), "int32", offset_factor=1),
    b: T.Buffer((8, 2), "int16", offset_factor=1),
    c: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(c[0:8], a[0:1], b[0:8, 0:2])
        T.writes(c[0:8])
        c[T.ramp(T.int32(0), 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.reinterpret(T.broadcast(a[0], 8), dtype="int16x16"),
            b.vload([0, 0], dtype="int16x16"),
            dtype="int32x8",
        )


@T.prim_func(s_tir=True)
def _pmaddwd8_bw_impl(
    a: T.Buffer((8,), "int32", offset_factor=1),
    b: T.Buffer((2,), "int16", offset_factor=1),
    c: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(c[0:8], a[0:8], b[0:2])
        T.writes(c[0:8])
        c[T.ramp(T.int32(0), 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
            T.reinterpret(a.vload([0], dtype="int32x8"), dtype="int16x16"),
            T.reinterpret(
                T.broadcast(T.reinterpret(b.vload([0], "int16x2"), dtype="int32"), 8),
                dtype="int16x16",
            ),
            dtype="int32x8",
        )


@T.prim_func(s_tir=True)
def _pmaddwd16_impl(
    a: T.Buffer((1,), "int32", offset_factor=1),
    b: T.Buffer((16, 2), "int16", offset_factor=1),
    c: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:1], b[0:16, 0:2])
        T.writes(c[0:16])
        c[T.ramp(T.int32(0), 1, 16)] = c.vload([0], dtype="int32x16") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"),
            T.reinterpret(T.broadcast(a[0], 16), dtype="int16x32"),
            b.vload([0, 0], dtype="int16x32"),
            dtype="int32x16",
        )


@T.prim_func(s_tir=True)
def _pmaddwd16_bw_impl(
    a: T.Buffer((16,), "int32", offset_factor=1),
    b: T.Buffer((2,), "int16", offset_factor=1),
    c: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(c[0:16], a[0:16], b[0:2])
        T.writes(c[0:16])
        c[T.ramp(T.int32(0), 1, 16)] = c.vload([0], dtype="int32x16") + T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pmaddw.d.512"),
            T.reinterpret(a.vload([0], dtype="int32x16"), dtype="int16x32"),
            T.reinterpret(
                T.broadcast(T.reinterpret(b.vload([0], "int16x2"), dtype="int32"), 16),
                dtype="int16x32",
            ),
            dtype="int32x16",
        )


_IMPLS = {
    VNNI_16x4: _vnni_impl,
    VNNI_16x4_BW: _vnni_bw_impl,
    PMADDWD_8x2: _pmaddwd8_impl,
    PMADDWD_8x2_BW: _pmaddwd8_bw_impl,
    PMADDWD_16x2: _pmaddwd16_impl,
    PMADDWD_16x2_BW: _pmaddwd16_bw_impl,
}
for _intrin, _impl in _IMPLS.items():
    TensorIntrin.register(
        _intrin.name,
        _descriptions(_intrin.lanes, _intrin.kgroup, _intrin.w_dtype, _intrin.weight_broadcast),
        _impl,
        override=True,
    )

FAMILY_INTRINS: dict[str, DotIntrin] = {
    "x86-vnni": VNNI_16x4,
    "x86-avx512": PMADDWD_16x2,
    "x86-avx2": PMADDWD_8x2,
}
"""The dot-product intrinsic (lanes = channels) each x86 schedule family uses."""

FAMILY_INTRINS_BW: dict[str, DotIntrin] = {
    "x86-vnni": VNNI_16x4_BW,
    "x86-avx512": PMADDWD_16x2_BW,
    "x86-avx2": PMADDWD_8x2_BW,
}
"""The same with lanes = output positions (weights broadcast)."""


def intrinsic_for(target: TargetPreset, weight_broadcast: bool = False) -> DotIntrin | None:
    """The intrinsic for `target`'s schedule family, or None (no x86 int8 kernels there).

    Checks the target's features: the family alone is not trusted, because a VNNI kernel
    compiled for a CPU without avx512vnni kills the process inside LLVM.
    """
    table = FAMILY_INTRINS_BW if weight_broadcast else FAMILY_INTRINS
    intrin = table.get(target.schedule_family)
    if intrin is None or not target.has(intrin.feature):
        return None
    return intrin


def intrinsic_by_name(name: str) -> DotIntrin:
    for intrin in _IMPLS:
        if intrin.name == name:
            return intrin
    raise LoweringError(f"unknown x86 dot-product intrinsic {name!r}")


__all__ = [
    "FAMILY_INTRINS",
    "FAMILY_INTRINS_BW",
    "DotIntrin",
    "PMADDWD_8x2",
    "PMADDWD_8x2_BW",
    "PMADDWD_16x2",
    "PMADDWD_16x2_BW",
    "VNNI_16x4",
    "VNNI_16x4_BW",
    "intrinsic_by_name",
    "intrinsic_for",
]
