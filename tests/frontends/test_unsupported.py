"""Unsupported modules, functions and attributes give clear errors naming node, op and place."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
from torch.ao.quantization import DeQuantStub, QuantStub  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.errors import FrontendError, UnsupportedError  # noqa: E402
from qcompiler.testing.zoo import quantize_eager  # noqa: E402


class _Wrap(nn.Module):
    def __init__(self, body, fn=None):
        super().__init__()
        self.quant, self.body, self.dequant, self.fn = QuantStub(), body, DeQuantStub(), fn

    def forward(self, x):
        y = self.body(self.quant(x))
        if self.fn is not None:
            y = self.fn(y)
        return self.dequant(y)


def _import(body, fn=None, x=None):
    x = torch.randn(1, 4, 8, 8) if x is None else x
    model = quantize_eager(_Wrap(body, fn), (x,))
    return qc.from_torch(model, (x,))


def test_unsupported_module_names_module_path_and_alternatives():
    with pytest.raises(UnsupportedError) as e:
        _import(nn.Sequential(nn.Conv2d(4, 4, 3), nn.PixelShuffle(2)))
    msg = str(e.value)
    assert "unsupported module torch.nn.PixelShuffle" in msg
    assert "module 'body.1'" in msg
    assert "supported:" in msg and "torch.ao.nn.quantized.Conv2d" in msg


def test_unsupported_function_names_source_line():
    with pytest.raises(UnsupportedError) as e:
        _import(nn.Identity(), fn=lambda y: torch.cumsum(y, 1))
    msg = str(e.value)
    assert "unsupported function torch.cumsum" in msg
    assert "test_unsupported.py" in msg  # the user's source line


def test_unsupported_method():
    with pytest.raises(UnsupportedError, match=r"unsupported tensor method \.roll\(\)"):
        _import(nn.Identity(), fn=lambda y: y.roll(1, 2))


def test_unsupported_attribute_value():
    class Pad(nn.Module):
        def forward(self, y):
            return torch.nn.functional.interpolate(y, scale_factor=2, mode="bicubic")
    with pytest.raises(UnsupportedError, match="interpolate mode 'bicubic' on a quantized"):
        _import(nn.Identity(), fn=Pad())


def test_float_arithmetic_on_quantized_tensor_is_explained():
    with pytest.raises(UnsupportedError, match="FloatFunctional"):
        _import(nn.Identity(), fn=lambda y: y * 2)


def test_bad_model_objects():
    with pytest.raises(FrontendError, match="training mode"):
        qc.from_torch(nn.Linear(2, 2).train(), (torch.randn(1, 2),))
    with pytest.raises(FrontendError, match="takes a torch.nn.Module"):
        qc.from_torch("model.pt", ())
    with pytest.raises(FrontendError, match="example inputs were given"):
        qc.from_torch(nn.Linear(2, 2).eval(), ())
    scripted = torch.jit.script(nn.Linear(2, 2).eval())
    with pytest.raises(UnsupportedError, match="TorchScript"):
        qc.from_torch(scripted, (torch.randn(1, 2),))
