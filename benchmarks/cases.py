"""The benchmark cases of issue 7: a layer set (as data) and the zoo models.

Layer cases are single quantized ops with fixed-seed data, identical in every process:

- activations u8 (quint8), per tensor, uniform over 0..255 (0..127 for depthwise, see below);
- weights i8 (qint8) symmetric per output channel (zero points 0), values in -127..127;
- bias f32 in real units (PyTorch's convention; ORT needs it as int32, see engines/ort_engine.py);
- output qparams (per tensor) fitted so that few outputs saturate.

Scales are rounded to float32 values so every engine (PyTorch keeps doubles, ORT float32) sees the
same numbers. The integer semantics are qcompiler's qnn.conv2d / qnn.linear (ops/conv.py,
ops/linear.py): acc = sum((x - zx) * w), then PyTorch's x86-engine requantization.

**Depthwise trap.** fbgemm's depthwise kernel sums pairs of u8*i8 products in int16 with
saturation, so PyTorch's fbgemm (and x86, which sends groups > 100 to fbgemm) is wrong for
activations >= 128. The timed and checked input of depthwise cases is therefore 7-bit (0..127);
a second, full-range input (`x_full`) is only run once per engine to *report* the trap.

Zoo cases are the models of qcompiler/testing/zoo.py quantized with its flows (eager for the conv
nets, dynamic for bert_like and lstm) at the zoo's own input shapes (batch 1): the test zoo's
small ones (64x64 images) and ImageNet-size ResNet-18 / MobileNetV2 (zoo.BENCH_ZOO, 224x224).

This module imports numpy and qcompiler's IR only; torch is imported by the zoo helpers.
"""

from __future__ import annotations

import fnmatch
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SEED = 7
"""Base seed (issue 7); each case mixes in a CRC of its name."""


@dataclass(frozen=True)
class LayerCase:
    """One quantized layer: a conv (incl. depthwise) on [1, C, H, W] or a linear on [M, K]."""

    name: str
    kind: str
    """'conv', 'depthwise' or 'linear'."""
    in_shape: tuple[int, ...]
    """conv: (N, C_in, H, W); linear: (M, K)."""
    out_features: int
    """conv: C_out; linear: N."""
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    description: str = ""

    @property
    def is_conv(self) -> bool:
        return self.kind in ("conv", "depthwise")

    @property
    def x_max(self) -> int:
        """Largest activation value of the timed input (7-bit for depthwise, see module doc)."""
        return 127 if self.kind == "depthwise" else 255

    @property
    def w_shape(self) -> tuple[int, ...]:
        if self.is_conv:
            return (self.out_features, self.in_shape[1] // self.groups, self.kernel, self.kernel)
        return (self.out_features, self.in_shape[1])

    @property
    def out_shape(self) -> tuple[int, ...]:
        if self.is_conv:
            n, _, h, w = self.in_shape
            oh = (h + 2 * self.padding - self.kernel) // self.stride + 1
            ow = (w + 2 * self.padding - self.kernel) // self.stride + 1
            return (n, self.out_features, oh, ow)
        return (self.in_shape[0], self.out_features)

    @property
    def reduction(self) -> int:
        """Terms per output: C_in/groups * k * k (conv) or K (linear)."""
        if self.is_conv:
            return self.in_shape[1] // self.groups * self.kernel * self.kernel
        return self.in_shape[1]

    @property
    def macs(self) -> int:
        return int(np.prod(self.out_shape)) * self.reduction

    def summary(self) -> str:
        if self.is_conv:
            _, c, h, w = self.in_shape
            g = f" g={self.groups}" if self.groups > 1 else ""
            return (f"{self.kernel}x{self.kernel} s{self.stride} p{self.padding}{g} "
                    f"{c}->{self.out_features} @{h}x{w}")
        m, k = self.in_shape
        return f"{m}x{k} -> {self.out_features}"


@dataclass(frozen=True)
class ZooCase:
    """A model from qcompiler/testing/zoo.py, quantized with one of its flows."""

    name: str
    model: str
    """Key in zoo.ZOO or zoo.BENCH_ZOO."""
    flow: str
    """'eager' (static, conv nets) or 'dynamic' (bert_like, lstm)."""
    kind: str = "model"
    description: str = ""

    def summary(self) -> str:
        return f"zoo {self.model} ({self.flow})"


Case = LayerCase | ZooCase


def _conv(name: str, c: int, o: int, hw: int, k: int, s: int = 1, groups: int = 1,
          desc: str = "") -> LayerCase:
    kind = "depthwise" if groups > 1 and groups == c else "conv"
    return LayerCase(name, kind, (1, c, hw, hw), o, k, s, (k - 1) // 2, groups, desc)


def _linear(name: str, m: int, k: int, n: int, desc: str = "") -> LayerCase:
    return LayerCase(name, "linear", (m, k), n, description=desc)


LAYER_CASES: tuple[LayerCase, ...] = (
    _conv("r18_c3x3_64_56", 64, 64, 56, 3, desc="ResNet-18 layer1 3x3 conv"),
    _conv("r18_c3x3_128_28", 128, 128, 28, 3, desc="ResNet-18 layer2 3x3 conv"),
    _conv("r18_c3x3_256_14", 256, 256, 14, 3, desc="ResNet-18 layer3 3x3 conv"),
    _conv("r18_c3x3_512_7", 512, 512, 7, 3, desc="ResNet-18 layer4 3x3 conv"),
    _conv("r18_c1x1s2_64_128_56", 64, 128, 56, 1, 2, desc="ResNet-18 downsample 1x1 s2"),
    _conv("r18_c3x3s2_64_128_56", 64, 128, 56, 3, 2, desc="ResNet-18 layer2 first 3x3 s2"),
    _conv("r18_c3x3s2_128_256_28", 128, 256, 28, 3, 2, desc="ResNet-18 layer3 first 3x3 s2"),
    _conv("r18_c3x3s2_256_512_14", 256, 512, 14, 3, 2, desc="ResNet-18 layer4 first 3x3 s2"),
    _conv("r18_stem7x7s2_3_64_224", 3, 64, 224, 7, 2, desc="ResNet-18 stem 7x7 s2"),
    _conv("mv2_pw_24_144_56", 24, 144, 56, 1, desc="MobileNetV2 expand 1x1"),
    _conv("mv2_pw_144_24_56", 144, 24, 56, 1, desc="MobileNetV2 project 1x1"),
    _conv("mv2_dw3x3_144_56_s1", 144, 144, 56, 3, 1, groups=144,
          desc="MobileNetV2 depthwise 3x3 s1"),
    _conv("mv2_dw3x3_96_112_s2", 96, 96, 112, 3, 2, groups=96,
          desc="MobileNetV2 depthwise 3x3 s2"),
    _linear("fc_1x512_1000", 1, 512, 1000, "ResNet-18 classifier"),
    _linear("fc_1x768_3072", 1, 768, 3072, "BERT-base FFN up, 1 token"),
    _linear("fc_128x768_768", 128, 768, 768, "BERT-base attention projection, 128 tokens"),
    _linear("fc_128x768_3072", 128, 768, 3072, "BERT-base FFN up, 128 tokens"),
    _linear("fc_512x1024_1024", 512, 1024, 1024, "BERT-large projection, 512 tokens"),
)

ZOO_CASES: tuple[ZooCase, ...] = (
    ZooCase("zoo_resnet18", "resnet18", "eager", description="zoo ResNet-18 (100 classes)"),
    ZooCase("zoo_mobilenet_v2", "mobilenet_v2", "eager",
            description="zoo MobileNetV2 (width 0.5, 100 classes)"),
    ZooCase("zoo_bert_like", "bert_like", "dynamic",
            description="zoo 2-layer BERT-like encoder, dim 64, 12 tokens"),
    ZooCase("zoo_lstm", "lstm", "dynamic", description="zoo 2-layer LSTM 16->32, 24 steps"),
    ZooCase("zoo_resnet18_224", "resnet18_224", "eager",
            description="ResNet-18 at ImageNet size (224x224, 1000 classes)"),
    ZooCase("zoo_mobilenet_v2_224", "mobilenet_v2_224", "eager",
            description="MobileNetV2 at ImageNet size (224x224, width 1.0, 1000 classes)"),
)

_CASE_LIST: list[Case] = [*LAYER_CASES, *ZOO_CASES]
ALL_CASES: dict[str, Case] = {c.name: c for c in _CASE_LIST}


def select_cases(spec: str | Sequence[str] | None) -> list[Case]:
    """Cases from a comma list of names, fnmatch patterns or groups (layers, zoo, all)."""
    if spec is None:
        items = ["all"]
    elif isinstance(spec, str):
        items = [s.strip() for s in spec.split(",") if s.strip()]
    else:
        items = list(spec)
    out: list[Case] = []
    for item in items:
        if item == "all":
            found: list[Case] = list(ALL_CASES.values())
        elif item == "layers":
            found = list(LAYER_CASES)
        elif item == "zoo":
            found = list(ZOO_CASES)
        else:
            found = [c for n, c in ALL_CASES.items() if fnmatch.fnmatchcase(n, item)]
            if not found:
                raise ValueError(f"unknown case {item!r}; known: layers, zoo, all, "
                                 + ", ".join(ALL_CASES))
        out += [c for c in found if c not in out]
    return out


def get_case(name: str) -> Case:
    if name not in ALL_CASES:
        raise ValueError(f"unknown case {name!r}; known: {', '.join(ALL_CASES)}")
    return ALL_CASES[name]


# --- layer data ------------------------------------------------------------------------------


@dataclass
class LayerData:
    """Fixed-seed tensors and qparams of one layer case (storage arrays + scales)."""

    case: LayerCase
    x: np.ndarray
    """u8 activations, the timed and checked input."""
    x_scale: float
    x_zp: int
    w: np.ndarray
    """i8 weights [O, C/g, k, k] or [O, K]."""
    w_scales: np.ndarray
    """float64 [O] (values exactly representable in float32); zero points are all 0."""
    bias: np.ndarray
    """float32 [O], real units."""
    out_scale: float
    out_zp: int
    check_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    """Inputs whose outputs are compared with the reference: 'x' and, for depthwise, 'x_full'
    (full-range activations: reports fbgemm's int16 saturation; not timed)."""


def case_rng(name: str, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(name.encode()), salt])


def _f32(v: float) -> float:
    return float(np.float32(v))


def make_layer_data(case: LayerCase) -> LayerData:
    """Deterministic data for `case` (the same in every process and run)."""
    rng = case_rng(case.name)
    o = case.out_features
    x = rng.integers(0, case.x_max + 1, case.in_shape, dtype=np.int64).astype(np.uint8)
    x_zp = int(rng.integers(0, min(64, case.x_max) + 1))
    x_scale = _f32(rng.uniform(0.01, 0.05))
    w = rng.integers(-127, 128, case.w_shape, dtype=np.int64).astype(np.int8)
    w_scales = np.array([_f32(v) for v in rng.uniform(0.002, 0.02, o)], dtype=np.float64)
    # Output qparams from the expected spread of the real-valued result: each output sums K
    # products (x - zx) * w with independent w, so std ~ sqrt(K * E[(x - zx)^2] * E[w^2]).
    xs = x.astype(np.float64) - x_zp
    acc_std = np.sqrt(case.reduction * float(np.mean(xs * xs)) * float(np.mean(
        w.astype(np.float64) ** 2)))
    real_std = acc_std * x_scale * float(np.mean(w_scales))
    bias = (rng.standard_normal(o) * real_std * 0.5).astype(np.float32)
    out_scale = _f32(8.0 * real_std / 255.0)
    out_zp = int(rng.integers(100, 156))
    checks = {"x": x}
    if case.kind == "depthwise":
        checks["x_full"] = case_rng(case.name, 1).integers(
            0, 256, case.in_shape, dtype=np.int64).astype(np.uint8)
    return LayerData(case, x, x_scale, x_zp, w, w_scales, bias, out_scale, out_zp, checks)


def layer_types(data: LayerData) -> tuple[Any, Any, Any, Any]:
    """IR types (x, w, bias) and the out QParams of a layer case."""
    from qcompiler.ir.types import QParams, TensorType, f32, i8, u8

    case = data.case
    xt = TensorType(tuple(case.in_shape), u8, QParams.per_tensor(data.x_scale, data.x_zp))
    wt = TensorType(tuple(case.w_shape), i8, QParams.per_axis(
        data.w_scales, np.zeros(case.out_features, np.int64), 0, "symmetric"))
    bt = TensorType((case.out_features,), f32)
    oq = QParams.per_tensor(data.out_scale, data.out_zp)
    return xt, wt, bt, oq


def build_graph(data: LayerData) -> Any:
    """A one-op qcompiler graph: qnn.conv2d or qnn.linear on input %x, with const w and b."""
    from qcompiler.ir.builder import Builder

    case = data.case
    xt, wt, bt, oq = layer_types(data)
    b = Builder(case.name)
    x = b.input("x", xt)
    w = b.const(data.w, wt, "w")
    bias = b.const(data.bias, bt, "b")
    if case.is_conv:
        from qcompiler.ops.conv import ConvAttrs

        attrs: Any = ConvAttrs(oq, stride=(case.stride,), padding=(case.padding,),
                               dilation=(1,), groups=case.groups)
        y = b.op("qnn.conv2d", [x, w, bias], attrs, loc=case.name)
    else:
        from qcompiler.ops.linear import LinearAttrs

        y = b.op("qnn.linear", [x, w, bias], LinearAttrs(oq), loc=case.name)
    return b.finish(y)


# --- zoo -------------------------------------------------------------------------------------


def zoo_inputs(case: ZooCase) -> tuple[Any, ...]:
    from qcompiler.testing import zoo

    return tuple(zoo.entry(case.model).inputs())


def zoo_float_model(case: ZooCase) -> Any:
    from qcompiler.testing import zoo

    return zoo.entry(case.model).build()


def zoo_quantized(case: ZooCase, engine: str = "x86") -> tuple[Any, tuple[Any, ...]]:
    """The zoo model quantized with its flow; weights prepacked for `engine`.

    The quantization itself (qconfig 'x86', observers, calibration data) is the zoo's and does
    not depend on `engine`: only where the packed weights go does, because PyTorch packs them
    for torch.backends.quantized.engine at convert / quantize_dynamic time.
    """
    import torch

    from qcompiler.testing import zoo

    old = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        model, inputs = zoo.quantized(case.model, case.flow)
    finally:
        torch.backends.quantized.engine = old
    return model.eval(), tuple(inputs)


def zoo_calibration_batches(case: ZooCase, batches: int = 4, seed: int = 1) -> list[tuple]:
    """The batches zoo.calibrate feeds the observers (same generator, same order)."""
    import torch

    inputs = zoo_inputs(case)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        out.append(tuple(torch.randn(x.shape, generator=g) if x.is_floating_point() else x
                         for x in inputs))
    return out


def zoo_macs(case: ZooCase) -> int:
    """MACs of the int8 layers (Conv, Linear, LSTM) of one forward pass at batch 1.

    Float parts (attention matmuls, softmax, layer norm) are not counted.
    """
    import torch
    from torch import nn

    model = zoo_float_model(case)
    inputs = zoo_inputs(case)
    total = [0]

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        if isinstance(mod, nn.Conv2d):
            total[0] += out.numel() * (mod.in_channels // mod.groups) * int(
                np.prod(mod.kernel_size))
        elif isinstance(mod, nn.Linear):
            total[0] += out.numel() * mod.in_features
        elif isinstance(mod, nn.LSTM):
            x = args[0]
            steps = x.shape[1] if mod.batch_first else x.shape[0]
            batch = x.shape[0] if mod.batch_first else x.shape[1]
            h = mod.hidden_size
            for layer in range(mod.num_layers):
                inp = mod.input_size if layer == 0 else h
                total[0] += steps * batch * 4 * h * (inp + h)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear, nn.LSTM))]
    with torch.no_grad():
        model(*inputs)
    for hd in handles:
        hd.remove()
    return total[0]


def case_macs(case: Case) -> int:
    return case.macs if isinstance(case, LayerCase) else zoo_macs(case)


__all__ = ["ALL_CASES", "LAYER_CASES", "ZOO_CASES", "Case", "LayerCase", "LayerData",
           "ZooCase", "build_graph", "case_macs", "get_case", "layer_types", "make_layer_data",
           "select_cases", "zoo_calibration_batches", "zoo_macs", "zoo_quantized"]
