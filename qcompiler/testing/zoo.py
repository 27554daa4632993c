"""Reference models, written in plain torch with fixed-seed weights (no downloads), and the
PyTorch quantization flows that produce the quantized models qcompiler imports.

Every model here can be quantized with eager prepare/convert (QuantStub/DeQuantStub,
FloatFunctional adds, fusable Conv-BN-ReLU), with FX (`prepare_fx`/`convert_fx`) and, where it
applies, with PT2E. BatchNorm layers get non-trivial running statistics so folding is exercised.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.ao.nn.quantized as nnq
import torch.nn as nn
import torch.nn.functional as F  # noqa: N812
from torch.ao.quantization import DeQuantStub, QuantStub


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 relu: bool = True, relu6: bool = False, dims: int = 2) -> None:
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        layers: list[nn.Module] = [conv(cin, cout, k, stride, (k - 1) // 2, groups=groups,
                                        bias=False), bn(cout)]
        if relu6:
            layers.append(nn.ReLU6())
        elif relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


def fuse_conv_bn_relu(model: nn.Module) -> None:
    """Eager-mode fusion of every ConvBNReLU block (conv+bn, +relu when it is a ReLU)."""
    for m in model.modules():
        if isinstance(m, ConvBNReLU):
            names = ["0", "1"] + (["2"] if len(m) > 2 and isinstance(m[2], nn.ReLU) else [])
            torch.ao.quantization.fuse_modules(m, [names], inplace=True)


# --- ResNet-18 -----------------------------------------------------------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBNReLU(cin, cout, 3, stride)
        self.conv2 = ConvBNReLU(cout, cout, 3, 1, relu=False)
        self.down = (ConvBNReLU(cin, cout, 1, stride, relu=False)
                     if stride != 1 or cin != cout else None)
        self.add_relu = nn.quantized.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = self.down(x) if self.down is not None else x
        return self.add_relu.add_relu(self.conv2(self.conv1(x)), idt)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000, width: int = 64) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.stem = ConvBNReLU(3, width, 7, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        layers: list[nn.Module] = []
        cin = width
        for i, cout in enumerate([width, width * 2, width * 4, width * 8]):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(self.quant(x)))
        x = self.avgpool(self.layers(x))
        return self.dequant(self.fc(torch.flatten(x, 1)))


# --- MobileNetV2 ---------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(cin, hidden, 1, relu6=True))
        layers += [ConvBNReLU(hidden, hidden, 3, stride, groups=hidden, relu6=True),
                   ConvBNReLU(hidden, cout, 1, relu=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.skip_add = nn.quantized.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return self.skip_add.add(x, self.conv(x))
        return self.conv(x)


class MobileNetV2(nn.Module):
    CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        self.quant = QuantStub()
        c = int(32 * width_mult)
        feats: list[nn.Module] = [ConvBNReLU(3, c, 3, 2, relu6=True)]
        for t, ch, n, s in self.CFG:
            out = int(ch * width_mult)
            for i in range(n):
                feats.append(InvertedResidual(c, out, s if i == 0 else 1, t))
                c = out
        last = int(1280 * max(1.0, width_mult))
        feats.append(ConvBNReLU(c, last, 1, relu6=True))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.quant(x))
        x = F.adaptive_avg_pool2d(x, 1).reshape(x.shape[0], -1)
        return self.dequant(self.classifier(x))


# --- small conv nets: 1d, 3d, U-Net-like ---------------------------------------------------

class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.c1 = ConvBNReLU(4, 16, 5, dims=1)
        self.c2 = ConvBNReLU(16, 32, 3, 2, dims=1)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(32, 10)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c2(self.c1(self.quant(x)))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.c1 = ConvBNReLU(3, 8, 3, dims=3)
        self.c2 = ConvBNReLU(8, 16, 3, 2, dims=3)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.c2(self.c1(self.quant(x))))


class UNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.enc1 = ConvBNReLU(3, 8)
        self.enc2 = ConvBNReLU(8, 16, stride=2)
        # NOTE: in == out channels: PyTorch's x86 engine sends symmetric-weight transposed convs
        # to oneDNN, which reads the weights in the wrong order when they differ (see
        # qcompiler/ops/conv_transpose.py); the model should test us, not that bug.
        self.up = nn.ConvTranspose2d(16, 16, 2, stride=2)
        self.cat = nn.quantized.FloatFunctional()
        self.dec = ConvBNReLU(24, 8)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.head = nn.Conv2d(8, 2, 1)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d = self.dec(self.cat.cat([self.up(e2), e1], 1))
        return self.dequant(self.head(self.up2(d)))


# --- dynamic-quantized sequence models -----------------------------------------------------

class BertLikeEncoder(nn.Module):
    """A 2-layer transformer encoder; dynamic quantization turns its Linears into int8."""

    def __init__(self, vocab: int = 100, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.heads = heads
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(nn.ModuleDict({
                "q": nn.Linear(dim, dim), "k": nn.Linear(dim, dim), "v": nn.Linear(dim, dim),
                "o": nn.Linear(dim, dim), "ln1": nn.LayerNorm(dim),
                "ff1": nn.Linear(dim, dim * 4), "ff2": nn.Linear(dim * 4, dim),
                "ln2": nn.LayerNorm(dim)}))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        b, t, d = x.shape
        h = self.heads
        for blk in self.blocks:
            q = blk["q"](x).reshape(b, t, h, d // h).transpose(1, 2)
            k = blk["k"](x).reshape(b, t, h, d // h).transpose(1, 2)
            v = blk["v"](x).reshape(b, t, h, d // h).transpose(1, 2)
            att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / (d // h) ** 0.5, dim=-1)
            ctx = torch.matmul(att, v).transpose(1, 2).reshape(b, t, d)
            x = blk["ln1"](x + blk["o"](ctx))
            x = blk["ln2"](x + blk["ff2"](F.gelu(blk["ff1"](x))))
        return x


class LSTMModel(nn.Module):
    def __init__(self, inp: int = 16, hidden: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.lstm = nn.LSTM(inp, hidden, layers, batch_first=True)
        self.fc = nn.Linear(hidden, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.fc(y)


class GRUModel(nn.Module):
    def __init__(self, inp: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(inp, hidden, 1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


class EmbeddingBagModel(nn.Module):
    def __init__(self, num: int = 200, dim: int = 16) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(num, dim, mode="sum")
        self.fc = nn.Linear(dim, 4)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bag(ids, offsets))


# --- quantization flows --------------------------------------------------------------------

def calibrate(model: nn.Module, inputs: tuple[Any, ...], batches: int = 2, seed: int = 1) -> None:
    """Run the observers on `batches` seeded random batches, on one torch thread: float convs
    sum in a thread-count-dependent order, so observed ranges (and so every qparam) would
    otherwise depend on how many threads the calling process has."""
    g = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for _ in range(batches):
                xs = tuple(torch.randn(x.shape, generator=g) if x.is_floating_point() else x
                           for x in inputs)
                model(*xs)
    finally:
        torch.set_num_threads(threads)


def quantize_eager(model: nn.Module, inputs: tuple[Any, ...], backend: str = "x86"
                   ) -> nn.Module:
    """Eager-mode static quantization: fuse, prepare, calibrate, convert."""
    m = copy.deepcopy(model).eval()
    fuse_conv_bn_relu(m)
    m.qconfig = torch.ao.quantization.get_default_qconfig(backend)
    for sub in m.modules():
        if isinstance(sub, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            # eager mode has no per-channel weight observer for transposed convs
            sub.qconfig = torch.ao.quantization.QConfig(
                activation=m.qconfig.activation,
                weight=torch.ao.quantization.default_weight_observer)
    torch.ao.quantization.prepare(m, inplace=True)
    calibrate(m, inputs)
    return torch.ao.quantization.convert(m)


def quantize_fx(model: nn.Module, inputs: tuple[Any, ...], backend: str = "x86") -> nn.Module:
    """FX graph-mode static quantization (prepare_fx / convert_fx)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    m = copy.deepcopy(model).eval()
    prepared = prepare_fx(m, get_default_qconfig_mapping(backend), inputs)
    calibrate(prepared, inputs)
    return convert_fx(prepared)


def quantize_dynamic(model: nn.Module) -> nn.Module:
    """Dynamic quantization of Linear/LSTM/GRU (int8 weights, activations per call)."""
    m = copy.deepcopy(model).eval()
    return torch.ao.quantization.quantize_dynamic(m, {nn.Linear, nn.LSTM, nn.GRU},
                                                  dtype=torch.qint8)


@dataclass
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[Any, ...]]
    flows: tuple[str, ...]
    """Which quantization flows apply: eager, fx, dynamic, pt2e."""
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def _seeded(fn: Callable[[], nn.Module], seed: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(seed)
        return _randomize_bn(fn(), seed).eval()
    return build


def _x(*shape: int, seed: int = 0) -> Callable[[], tuple[Any, ...]]:
    return lambda: (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)),)


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("resnet18", _seeded(lambda: ResNet18(num_classes=100), 0), _x(1, 3, 64, 64),
             ("eager", "fx", "pt2e")),
    ZooEntry("mobilenet_v2", _seeded(lambda: MobileNetV2(num_classes=100, width_mult=0.5), 1),
             _x(1, 3, 64, 64), ("eager", "fx", "pt2e")),
    ZooEntry("conv1d_net", _seeded(Conv1dNet, 2), _x(2, 4, 50), ("eager", "fx")),
    ZooEntry("conv3d_net", _seeded(Conv3dNet, 3), _x(1, 3, 6, 10, 10), ("eager", "fx")),
    ZooEntry("unet_like", _seeded(UNetLike, 4), _x(1, 3, 16, 16), ("eager", "fx")),
    ZooEntry("bert_like", _seeded(BertLikeEncoder, 5),
             lambda: (torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0)),),
             ("dynamic",)),
    ZooEntry("lstm", _seeded(LSTMModel, 6), _x(1, 24, 16), ("dynamic",)),
    ZooEntry("gru", _seeded(GRUModel, 7), _x(1, 24, 16), ("dynamic",)),
    ZooEntry("embedding_bag", _seeded(EmbeddingBagModel, 8),
             lambda: (torch.randint(0, 200, (20,), generator=torch.Generator().manual_seed(0)),
                      torch.tensor([0, 5, 11, 17])), ("embedding",)),
]}


BENCH_ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("resnet18_224", _seeded(lambda: ResNet18(num_classes=1000), 0),
             _x(1, 3, 224, 224), ("eager",), notes="ImageNet size; benchmarks only"),
    ZooEntry("mobilenet_v2_224", _seeded(lambda: MobileNetV2(num_classes=1000), 1),
             _x(1, 3, 224, 224), ("eager",), notes="ImageNet size, width 1.0; benchmarks only"),
]}
"""Full-size variants for the benchmarks (too slow for the test suite, which iterates ZOO)."""


def entry(name: str) -> ZooEntry:
    """A model of ZOO or BENCH_ZOO by name."""
    if name in ZOO:
        return ZOO[name]
    if name in BENCH_ZOO:
        return BENCH_ZOO[name]
    raise KeyError(f"unknown zoo model {name!r}; known: {', '.join([*ZOO, *BENCH_ZOO])}")


@functools.lru_cache(maxsize=None)
def quantized(name: str, flow: str) -> tuple[nn.Module, tuple[Any, ...]]:
    """The zoo model `name` (ZOO or BENCH_ZOO) quantized with `flow`, and its example inputs
    (cached: callers must not modify the model)."""
    e = entry(name)
    model, inputs = e.build(), e.inputs()
    if flow == "eager":
        return quantize_eager(model, inputs), inputs
    if flow == "fx":
        return quantize_fx(model, inputs), inputs
    if flow == "dynamic":
        return quantize_dynamic(model), inputs
    if flow == "embedding":
        from torch.ao.quantization import float_qparams_weight_only_qconfig

        m = copy.deepcopy(model).eval()
        m.bag.qconfig = float_qparams_weight_only_qconfig
        torch.ao.quantization.prepare(m, inplace=True)
        return torch.ao.quantization.convert(m), inputs
    raise ValueError(f"unknown flow {flow!r}")


__all__ = ["BENCH_ZOO", "ZOO", "ZooEntry", "entry", "nnq", "quantized"]
