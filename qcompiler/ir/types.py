"""Types of IR values: storage dtypes, quantization parameters, and tensor types.

A quantized tensor is a storage dtype (u8, i8, i32, u4) plus `QParams`, as in MLIR's quant
dialect (`!quant.uniform<i8:f32, 0.5:-3>`): the qparams live in the type, so type inference,
the verifier and the printer all see them. PyTorch's names map onto (dtype, qparams):
quint8 = u8 + qparams, qint8 = i8 + qparams, qint32 = i32 + qparams, quint4x2 = u4 + qparams.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.errors import VerifyError


@dataclass(frozen=True)
class DType:
    """A storage dtype. `short` is the text form (`u8`), `storage` the numpy dtype name."""

    short: str
    storage: str
    is_float: bool
    bits: int
    signed: bool
    torch_qname: str | None = None
    """PyTorch's quantized dtype name when this dtype carries qparams (quint8, qint8, ...)."""

    _by_short: ClassVar[dict[str, DType]] = {}

    def __post_init__(self) -> None:
        DType._by_short[self.short] = self

    @property
    def np(self) -> np.dtype:
        return np.dtype(self.storage)

    @property
    def qmin(self) -> int:
        """Smallest representable integer (the quantized range's lower bound)."""
        if self.is_float or self.short == "b1":
            raise VerifyError(f"dtype {self.short} has no integer range")
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        """Largest representable integer (the quantized range's upper bound)."""
        if self.is_float or self.short == "b1":
            raise VerifyError(f"dtype {self.short} has no integer range")
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def quantizable(self) -> bool:
        return self.torch_qname is not None

    @staticmethod
    def from_short(short: str) -> DType:
        try:
            return DType._by_short[short]
        except KeyError:
            valid = ", ".join(sorted(DType._by_short))
            raise VerifyError(f"unknown dtype {short!r}; valid dtypes: {valid}") from None

    @staticmethod
    def from_torch_qname(name: str) -> DType:
        """`quint8` -> u8, `qint8` -> i8, `qint32` -> i32, `quint4x2` -> u4."""
        name = name.removeprefix("torch.")
        for d in DType._by_short.values():
            if d.torch_qname == name:
                return d
        raise VerifyError(
            f"unknown quantized dtype {name!r}; supported: quint8, qint8, qint32, quint4x2"
        )

    @staticmethod
    def all() -> list[DType]:
        return list(DType._by_short.values())

    def __repr__(self) -> str:
        return self.short

    def __str__(self) -> str:
        return self.short


u8 = DType("u8", "uint8", False, 8, False, "quint8")
i8 = DType("i8", "int8", False, 8, True, "qint8")
i32 = DType("i32", "int32", False, 32, True, "qint32")
u4 = DType("u4", "uint8", False, 4, False, "quint4x2")
"""4-bit unsigned values (PyTorch quint4x2), stored unpacked, one value per byte."""
i64 = DType("i64", "int64", False, 64, True)
f32 = DType("f32", "float32", True, 32, True)
f16 = DType("f16", "float16", True, 16, True)
f64 = DType("f64", "float64", True, 64, True)
b1 = DType("b1", "bool", False, 1, False)

SCHEMES = ("affine", "symmetric", "float_qparams")


@dataclass(frozen=True)
class QParams:
    """Quantization parameters: real = scale * (q - zero_point).

    Per-tensor when `axis is None` (one scale and zero point); per-axis otherwise (one per
    index along `axis`). `scheme` records PyTorch's qscheme: `affine`, `symmetric`
    (zero points fixed by the dtype), or `float_qparams` (embedding rows: float zero points).
    """

    scale: tuple[float, ...]
    zero_point: tuple[float, ...] | tuple[int, ...]
    axis: int | None = None
    scheme: str = "affine"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise VerifyError(f"unknown qscheme {self.scheme!r}; valid: {', '.join(SCHEMES)}")
        if len(self.scale) != len(self.zero_point):
            raise VerifyError(
                f"qparams have {len(self.scale)} scales but {len(self.zero_point)} zero points"
            )
        if self.axis is None and len(self.scale) != 1:
            raise VerifyError("per-tensor qparams need exactly one scale and zero point")
        if self.axis is not None and self.axis < 0:
            raise VerifyError(f"qparams axis must be non-negative, got {self.axis}")
        for s in self.scale:
            if not (math.isfinite(s) and s > 0):
                raise VerifyError(f"quantization scale must be finite and > 0, got {s!r}")

    @staticmethod
    def per_tensor(scale: float, zero_point: int, scheme: str = "affine") -> QParams:
        return QParams((float(scale),), (int(zero_point),), None, scheme)

    @staticmethod
    def per_axis(
        scales: object, zero_points: object, axis: int, scheme: str = "affine"
    ) -> QParams:
        s = tuple(float(v) for v in np.asarray(scales, dtype=np.float64).reshape(-1))
        zp_arr = np.asarray(zero_points).reshape(-1)
        if scheme == "float_qparams":
            zp: tuple[float, ...] | tuple[int, ...] = tuple(float(v) for v in zp_arr)
        else:
            zp = tuple(int(v) for v in zp_arr)
        return QParams(s, zp, int(axis), scheme)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def scale_value(self) -> float:
        """The one scale of per-tensor qparams."""
        self._require_per_tensor()
        return self.scale[0]

    @property
    def zp_value(self) -> int:
        """The one zero point of per-tensor qparams."""
        self._require_per_tensor()
        return int(self.zero_point[0])

    def scales_array(self) -> np.ndarray:
        return np.asarray(self.scale, dtype=np.float64)

    def zero_points_array(self) -> np.ndarray:
        if self.scheme == "float_qparams":
            return np.asarray(self.zero_point, dtype=np.float64)
        return np.asarray(self.zero_point, dtype=np.int64)

    def broadcast_shape(self, ndim: int) -> tuple[int, ...]:
        """Shape that broadcasts per-axis scales against a tensor of rank `ndim`."""
        if self.axis is None:
            return (1,) * ndim
        return tuple(len(self.scale) if d == self.axis else 1 for d in range(ndim))

    def _require_per_tensor(self) -> None:
        if self.axis is not None:
            raise VerifyError(f"expected per-tensor qparams, got per-axis (axis={self.axis})")

    def __str__(self) -> str:
        from qcompiler.ir.printer import format_qparams

        return format_qparams(self)


@dataclass(frozen=True)
class TensorType:
    """Shape, storage dtype and (for quantized tensors) qparams of one IR value."""

    shape: tuple[int, ...]
    dtype: DType
    qparams: QParams | None = None

    def __post_init__(self) -> None:
        if any((not isinstance(d, int)) or d < 0 for d in self.shape):
            raise VerifyError(f"shape must be non-negative ints, got {self.shape}")
        if self.qparams is not None:
            if not self.dtype.quantizable:
                raise VerifyError(f"dtype {self.dtype} cannot carry qparams")
            ax = self.qparams.axis
            if ax is not None:
                if ax >= len(self.shape):
                    raise VerifyError(
                        f"qparams axis {ax} out of range for shape {list(self.shape)}"
                    )
                if len(self.qparams.scale) != self.shape[ax]:
                    raise VerifyError(
                        f"per-axis qparams have {len(self.qparams.scale)} scales but dimension"
                        f" {ax} of shape {list(self.shape)} has {self.shape[ax]}"
                    )

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_quantized(self) -> bool:
        return self.qparams is not None

    @property
    def torch_dtype_name(self) -> str:
        """quint8/qint8/... for quantized types, else the numpy storage name."""
        if self.qparams is not None and self.dtype.torch_qname:
            return self.dtype.torch_qname
        return self.dtype.storage

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(tuple(int(d) for d in shape), self.dtype, self.qparams)

    def with_qparams(self, qparams: QParams | None) -> TensorType:
        return TensorType(self.shape, self.dtype, qparams)

    def check_array(self, arr: np.ndarray, what: str) -> None:
        """Raise VerifyError unless `arr` has exactly this type's shape and storage dtype."""
        if tuple(arr.shape) != self.shape or arr.dtype != self.dtype.np:
            raise VerifyError(
                f"{what}: expected {self.dtype.storage}{list(self.shape)}, "
                f"got {arr.dtype}{list(arr.shape)}"
            )

    def __str__(self) -> str:
        from qcompiler.ir.printer import format_type

        return format_type(self)


def qtype(shape: tuple[int, ...] | list[int], dtype: DType, scale: float, zero_point: int,
          scheme: str = "affine") -> TensorType:
    """Shorthand for a per-tensor quantized TensorType."""
    return TensorType(tuple(shape), dtype, QParams.per_tensor(scale, zero_point, scheme))


def ftype(shape: tuple[int, ...] | list[int], dtype: DType = f32) -> TensorType:
    """Shorthand for an unquantized TensorType."""
    return TensorType(tuple(shape), dtype, None)
