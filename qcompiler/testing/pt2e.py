"""PT2E test helpers: quantize a model with prepare_pt2e/convert_pt2e, and compare an imported
graph with PyTorch's execution of the converted module, quantize node by quantize node.

Comparing whole networks element by element is misleading: one 1-LSB rounding-tie difference
early on changes every later layer a little, and the differences grow with depth. So
`compare_with_torch` runs the IR graph *teacher-forced*: PyTorch's converted module runs once
(recording every `quantize_per_tensor` result), then the IR interpreter runs and, after each
node whose result has the name of a PyTorch quantize node (the importer and fuse-qdq keep those
names), records the difference and continues with PyTorch's values. Each recorded difference
is then the error of one op (or one fused group) alone, on the inputs PyTorch gave it.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qcompiler.ir.graph import Graph, Node
from qcompiler.reference.interpreter import Interpreter


def quantizer(name: str = "x86", reduce_range: bool = False) -> Any:
    """A PT2E quantizer: "x86" (X86InductorQuantizer) or "xnnpack" (torchao's test copy)."""
    if name == "x86":
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

        cfg = xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
        return xiq.X86InductorQuantizer().set_global(cfg)
    if name == "xnnpack":
        from torchao.testing.pt2e import _xnnpack_quantizer as xq

        return xq.XNNPACKQuantizer().set_global(xq.get_symmetric_quantization_config())
    raise ValueError(f"unknown quantizer {name!r}; known: x86, xnnpack")


def quantize_pt2e(model: Any, example_inputs: Sequence[Any], quantizer_name: str = "x86",
                  reduce_range: bool = False, calibration: int = 4, seed: int = 1) -> Any:
    """export -> prepare_pt2e -> calibrate (random batches + the example) -> convert_pt2e."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        m = copy.deepcopy(model).eval()
        inputs = tuple(example_inputs)
        gm = torch.export.export(m, inputs).module()
        prepared = prepare_pt2e(gm, quantizer(quantizer_name, reduce_range))
        gen = torch.Generator().manual_seed(seed)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # observed ranges must not depend on the thread count (zoo)
        try:
            with torch.no_grad():
                for _ in range(calibration):
                    prepared(*(torch.randn(x.shape, generator=gen) if x.is_floating_point()
                               else x for x in inputs))
                prepared(*inputs)
        finally:
            torch.set_num_threads(threads)
        return convert_pt2e(prepared)


def torch_quantize_results(gm: Any, inputs: Sequence[Any]) -> tuple[dict[str, np.ndarray], Any]:
    """Run the converted module; return {quantize node name: its integer result} and the
    module's output."""
    import torch

    rec: dict[str, np.ndarray] = {}

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            r = super().run_node(n)
            if n.op == "call_function" and str(n.target).startswith(
                    "quantized_decomposed.quantize_per_"):
                rec[n.name] = r.detach().numpy().copy()
            return r

    with torch.no_grad():
        out = _Recorder(gm).run(*inputs)
    return rec, out


@dataclass
class TensorDiff:
    name: str
    op: str
    max_lsb: int
    mismatches: int
    total: int


@dataclass
class Comparison:
    """Per quantized tensor differences between the IR graph and PyTorch (teacher-forced)."""

    tensors: list[TensorDiff] = field(default_factory=list)
    outputs: tuple[np.ndarray, ...] = ()
    """The IR graph's outputs (computed from PyTorch's quantized values upstream)."""
    missing: list[str] = field(default_factory=list)
    """PyTorch quantize nodes with no same-named IR value (e.g. folded away)."""

    @property
    def total(self) -> int:
        return sum(t.total for t in self.tensors)

    @property
    def mismatches(self) -> int:
        return sum(t.mismatches for t in self.tensors)

    @property
    def max_lsb(self) -> int:
        return max((t.max_lsb for t in self.tensors), default=0)

    @property
    def rate(self) -> float:
        return self.mismatches / self.total if self.total else 0.0

    def by_op(self) -> dict[str, tuple[int, int, int]]:
        """op -> (mismatches, total, max LSB)."""
        out: dict[str, tuple[int, int, int]] = {}
        for t in self.tensors:
            m, n, mx = out.get(t.op, (0, 0, 0))
            out[t.op] = (m + t.mismatches, n + t.total, max(mx, t.max_lsb))
        return out

    def summary(self) -> str:
        ops = ", ".join(f"{op} {m}/{n} (max {mx})" for op, (m, n, mx) in sorted(
            self.by_op().items()))
        return (f"{self.mismatches}/{self.total} quantized values differ ({self.rate:.2e}),"
                f" max {self.max_lsb} LSB; by op: {ops}")


def compare_with_torch(graph: Graph, gm: Any, inputs: Sequence[Any]) -> Comparison:
    """Teacher-forced comparison of `graph` (imported from `gm`) with PyTorch (module doc)."""
    theirs, _ = torch_quantize_results(gm, inputs)
    cmp = Comparison()
    seen: set[str] = set()

    class _Forced(Interpreter):
        def run_node(self, node: Node, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
            outs = super().run_node(node, args)
            name = node.outputs[0].name if len(node.outputs) == 1 else ""
            ref = theirs.get(name)
            if ref is None or ref.shape != outs[0].shape or node.op == "const":
                return outs
            d = np.abs(outs[0].astype(np.int64) - ref.astype(np.int64))
            cmp.tensors.append(TensorDiff(name, node.op, int(d.max(initial=0)),
                                          int((d != 0).sum()), int(d.size)))
            seen.add(name)
            return (ref.astype(outs[0].dtype),)

    for node in graph.nodes:  # quantized constants (weights PyTorch quantizes at run time)
        ref = theirs.get(node.outputs[0].name) if node.op == "const" else None
        if ref is not None:
            ours = graph.constants[node.attrs.name]
            d = np.abs(ours.astype(np.int64) - ref.astype(np.int64))
            cmp.tensors.append(TensorDiff(node.outputs[0].name, "const", int(d.max(initial=0)),
                                          int((d != 0).sum()), int(d.size)))
            seen.add(node.outputs[0].name)
    np_inputs = [x.detach().numpy() for x in inputs]
    cmp.outputs = _Forced(graph).run(*np_inputs)
    cmp.missing = [k for k in theirs if k not in seen]
    return cmp
