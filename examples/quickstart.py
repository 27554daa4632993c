"""Quantize a small CNN with PyTorch, compile it with qcompiler, run it, export and reload it.

    python3 examples/quickstart.py [--target host] [--out build/quickstart.qc]

Prints the imported IR's op counts, checks the compiled output against PyTorch and the reference
interpreter, and times both.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
from torch.ao.quantization import DeQuantStub, QuantStub

import qcompiler as qc
from qcompiler.testing.zoo import ConvBNReLU, quantize_eager

warnings.filterwarnings("ignore", category=UserWarning)


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = QuantStub()
        self.stem = ConvBNReLU(3, 16, 3, 2)
        self.block = nn.Sequential(ConvBNReLU(16, 16), ConvBNReLU(16, 16, relu=False))
        self.add = nn.quantized.FloatFunctional()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.quant(x))
        x = self.add.add_relu(self.block(x), x)
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default="host")
    ap.add_argument("--out", default="build/quickstart.qc")
    args = ap.parse_args()

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    model = quantize_eager(SmallNet().eval(), (x,))

    graph = qc.from_torch(model, (x,))
    print("imported:", ", ".join(f"{k}={v}" for k, v in sorted(graph.op_counts().items())))

    t0 = time.perf_counter()
    cm = qc.compile(model, (x,), target=args.target)
    print(f"compiled for {cm.target.name if cm.target else args.target} "
          f"in {time.perf_counter() - t0:.1f}s")

    y = cm(x)
    y_torch = model(x)
    y_ref = qc.interpret(graph, x)
    assert np.array_equal(y.numpy(), y_ref), "compiled output differs from the reference"
    same = np.array_equal(y.numpy(), y_torch.numpy())
    print(f"output {tuple(y.shape)}: equals the reference interpreter; "
          f"{'equals' if same else 'DIFFERS FROM'} PyTorch")

    path = cm.export(args.out)
    again = qc.load(path)
    assert np.array_equal(again(x).numpy(), y.numpy())
    print(f"exported to {path} and reloaded: same output")

    res = cm.benchmark(x.numpy(), number=20, repeat=10)
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(200):
            model(x)
        torch_ms = (time.perf_counter() - t0) / 200 * 1e3
    print(f"latency: qcompiler {res}, PyTorch {torch_ms:.3f} ms/call")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
