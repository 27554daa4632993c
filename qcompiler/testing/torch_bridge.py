"""Convert between IR-typed numpy arrays and torch (quantized) tensors, for tests."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from qcompiler.ir.types import TensorType

warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")


def to_torch(arr: np.ndarray, ty: TensorType) -> Any:
    """A torch tensor holding `arr`: quantized (per-tensor or per-channel) when `ty` is."""
    import torch

    t = torch.from_numpy(np.array(arr, order="C", copy=True))
    qp = ty.qparams
    if qp is None:
        return t
    if ty.dtype.short == "u4":
        raise NotImplementedError("quint4x2 tensors are built by the embedding ops themselves")
    if qp.axis is None:
        return torch._make_per_tensor_quantized_tensor(t, qp.scale_value, qp.zp_value)
    scales = torch.tensor(qp.scale, dtype=torch.float64)
    zps = torch.tensor([int(z) for z in qp.zero_point], dtype=torch.int64)
    return torch._make_per_channel_quantized_tensor(t, scales, zps, qp.axis)


def to_numpy(t: Any) -> np.ndarray:
    """Storage values of a torch tensor (int_repr for quantized ones)."""
    if t.is_quantized:
        return t.int_repr().contiguous().numpy()
    return t.detach().contiguous().numpy()


def qparams_of(t: Any) -> tuple[float, int]:
    return float(t.q_scale()), int(t.q_zero_point())


@contextlib.contextmanager
def quantized_engine(engine: str) -> Iterator[None]:
    """Switch torch.backends.quantized.engine for a block; restore it afterwards."""
    import torch

    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = old
