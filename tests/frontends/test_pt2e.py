"""PT2E / torch.export import: models quantized with prepare_pt2e/convert_pt2e, imported, fused
and interpreted, compared with PyTorch's execution of the same converted module.

The comparison is teacher-forced (qcompiler/testing/pt2e.py): every quantized tensor is checked
against the PyTorch quantize node of the same name, computed from PyTorch's own upstream
values, so each difference is one op's (or one fused group's). Bound: 1 LSB. Final float
outputs (the last linear stays float) are compared within float tolerance. Match rates are
printed (run with -s). The zoo models are slow (about 10-25 s each): marked `slow`, run with
QC_SLOW=1 or `-m slow`.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchao")

from torch import nn

from qcompiler.errors import FrontendError, UnsupportedError
from qcompiler.frontends import from_torch
from qcompiler.frontends.torch_export import (
    import_exported_graph,
    import_pt2e_graph,
    is_pt2e_graph,
)
from qcompiler.ir.graph import Graph
from qcompiler.ir.verify import verify
from qcompiler.passes.fuse_qdq import FuseQdq, FuseQdqResult
from qcompiler.reference.interpreter import interpret
from qcompiler.testing.pt2e import compare_with_torch, quantize_pt2e

pytestmark = pytest.mark.torch
warnings.filterwarnings("ignore", module="torchao")


def _slow_enabled(config) -> bool:
    expr = config.getoption("markexpr") or ""
    return bool(os.environ.get("QC_SLOW")) or ("slow" in expr and "not slow" not in expr)


# --- models ----------------------------------------------------------------------------------

def _bn(n: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(n)
    bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
    bn.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
    bn.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
    bn.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return bn


class ConvBnRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), _bn(8, 1)
        self.conv2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv(x))))


class LinearNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 24), nn.Linear(24, 5)

    def forward(self, x):
        return self.fc3(self.fc2(torch.relu(self.fc1(x))))


class AddResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = (nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                     nn.Conv2d(8, 8, 1))

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y) + y)
        return self.c3(y)


class MaxPoolNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        return self.c2(self.pool(torch.relu(self.c1(x))))


class ResBlockNet(nn.Module):
    """A ResNet stem and one downsampling basic block, pooled to a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, 2, 1, bias=False), _bn(8, 2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.c1, self.bn1 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), _bn(16, 3)
        self.c2, self.bn2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False), _bn(16, 4)
        self.down, self.bnd = nn.Conv2d(8, 16, 1, 2, bias=False), _bn(16, 5)
        self.c3 = nn.Conv2d(16, 16, 3, 1, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn0(self.stem(x))))
        y = self.bn2(self.c2(torch.relu(self.bn1(self.c1(x)))))
        y = torch.relu(y + self.bnd(self.down(x)))
        y = torch.relu(self.c3(y))
        y = nn.functional.adaptive_avg_pool2d(y, 1)
        return self.fc(torch.flatten(y, 1))


class MobileBlock(nn.Module):
    """Inverted residual: 1x1 expand + relu6, depthwise 3x3 + relu6, 1x1 project, add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand, self.bn1 = nn.Conv2d(8, 32, 1, bias=False), _bn(32, 6)
        self.dw, self.bn2 = nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), _bn(32, 7)
        self.project, self.bn3 = nn.Conv2d(32, 8, 1, bias=False), _bn(8, 8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = nn.functional.relu6(self.stem(x))
        y = nn.functional.relu6(self.bn1(self.expand(x)))
        y = nn.functional.relu6(self.bn2(self.dw(y)))
        return self.head(x + self.bn3(self.project(y)))


class CatNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.c = nn.Conv2d(10, 4, 1)

    def forward(self, x):
        return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))


def _x(*shape: int, seed: int = 0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)),)


MODELS = {
    "conv_bn_relu": (ConvBnRelu, _x(1, 3, 10, 10), {"qnn.conv2d_relu"}),
    "linear": (LinearNet, _x(4, 16), {"qnn.linear_relu", "qnn.linear"}),
    "add_residual": (AddResidual, _x(1, 3, 8, 8), {"qnn.conv2d_relu", "qnn.conv2d_add_relu"}),
    "maxpool": (MaxPoolNet, _x(1, 3, 12, 12), {"qnn.conv2d_relu", "qnn.max_pool2d"}),
    "resblock": (ResBlockNet, _x(2, 3, 32, 32),
                 {"qnn.conv2d_relu", "qnn.max_pool2d", "qnn.conv2d", "qnn.conv2d_add_relu"}),
    "mobile_block": (MobileBlock, _x(1, 3, 12, 12),
                     {"qnn.conv2d", "qnn.clamp", "qnn.conv2d_add"}),
    "cat": (CatNet, _x(1, 3, 9, 9), {"qnn.conv2d_relu", "qnn.cat"}),
}

_CACHE: dict[tuple[str, str, bool], object] = {}


def converted(name: str, quantizer: str = "x86", reduce_range: bool = False):
    key = (name, quantizer, reduce_range)
    if key not in _CACHE:
        cls, x, _ = MODELS[name]
        torch.manual_seed(0)
        _CACHE[key] = quantize_pt2e(cls().eval(), x, quantizer, reduce_range=reduce_range)
    return _CACHE[key]


def _torch_out(gm, x) -> np.ndarray:
    with torch.no_grad():
        y = gm(*x)
    return (y[0] if isinstance(y, (tuple, list)) else y).numpy()


def _check_float_out(ours: np.ndarray, theirs: np.ndarray) -> None:
    # float32 conv/linear summation order (PyTorch's oneDNN/MKL vs our float64 rounded once)
    atol = 1e-5 * (float(np.abs(theirs).max()) + 1e-3)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=atol)


def _import_fuse_compare(name: str, gm, x, expect: set[str]) -> tuple[Graph, FuseQdqResult]:
    g = import_pt2e_graph(gm, x)
    verify(g)
    before = compare_with_torch(g, gm, x)
    res = FuseQdq().apply(g)
    verify(g)
    after = compare_with_torch(g, gm, x)
    print(f"\n{name}: importer {before.summary()}\n{name}: fused    {after.summary()}"
          f"\n{name}: fired {dict(res.fired)}; stays float: {[str(r) for r in res.report]}")
    assert before.max_lsb <= 1 and after.max_lsb <= 1
    assert not after.missing, after.missing
    ops = set(g.op_counts())
    assert expect <= ops, f"{name}: expected {expect - ops} in {sorted(ops)}"
    _check_float_out(after.outputs[0], _torch_out(gm, x))
    return g, res


@pytest.mark.parametrize("name", sorted(MODELS))
def test_x86_models_match_pytorch(name):
    _, x, expect = MODELS[name]
    _, res = _import_fuse_compare(name, converted(name), x, expect)
    # every conv/linear whose result is quantized became an integer op
    for r in res.report:
        if r.op in ("f.conv2d", "f.linear"):
            assert "not quantized" in r.reason, r


def test_from_torch_graph_module_exported_program_and_module_agree(capsys, caplog):
    gm = converted("resblock")
    x = MODELS["resblock"][1]
    with caplog.at_level("INFO", logger="qcompiler.passes.fuse_qdq"):
        g_gm = from_torch(gm, x)
    ep = torch.export.export(gm, x)
    g_ep = from_torch(ep, x)
    g_mod = from_torch(ep.module(), x)
    assert capsys.readouterr().out == ""
    assert "stays float: f.linear" in caplog.text
    assert g_gm.op_counts() == g_ep.op_counts() == g_mod.op_counts()
    ref = _torch_out(gm, x)
    for g in (g_gm, g_ep, g_mod):
        assert g.op_counts()["qnn.conv2d_add_relu"] == 1
        # free-running (not teacher-forced): rounding-tie differences may propagate
        np.testing.assert_allclose(interpret(g, x[0].numpy()), ref, atol=0.05 * np.abs(ref).max())


def test_exported_program_lifts_parameters_and_names_constants():
    gm = converted("conv_bn_relu")
    x = MODELS["conv_bn_relu"][1]
    ep = torch.export.export(gm, x)
    assert any(s.kind.name == "PARAMETER" for s in ep.graph_signature.input_specs)
    g = import_exported_graph(ep, x)
    verify(g)
    assert [v.name for v in g.inputs] == ["x"]
    names = {n.attrs.name for n in g.nodes if n.op == "const"}
    assert any("bias" in k for k in names), names
    cmp = compare_with_torch(g, ep.module(), x)
    assert cmp.max_lsb <= 1


def test_core_aten_decomposition():
    """run_decompositions(): convolution, addmm(b, x, permute(w)), max_pool2d_with_indices +
    getitem, mean.dim, view."""
    gm = converted("resblock")
    x = MODELS["resblock"][1]
    ep = torch.export.export(gm, x).run_decompositions()
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert {"aten.addmm.default", "aten.convolution.default",
            "aten.max_pool2d_with_indices.default", "aten.mean.dim"} <= targets
    g = import_exported_graph(ep, x)
    res = FuseQdq().apply(g)
    verify(g)
    cmp = compare_with_torch(g, ep.module(), x)
    print(f"\ncore aten: {cmp.summary()}")
    assert cmp.max_lsb <= 1 and not cmp.missing
    ops = g.op_counts()
    assert ops["qnn.conv2d_add_relu"] == 1 and ops["qnn.max_pool2d"] == 1
    assert "transpose" not in ops and "permute" not in ops  # addmm(b, x, w.t()) is f.linear
    assert [r.op for r in res.report if r.op == "f.linear"] == ["f.linear"]
    _check_float_out(cmp.outputs[0], _torch_out(gm, x))


def test_unfolded_weights_are_quantized_at_import():
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from qcompiler.testing.pt2e import quantizer

    x = MODELS["add_residual"][1]
    torch.manual_seed(0)
    gm = torch.export.export(AddResidual().eval(), x).module()
    p = prepare_pt2e(gm, quantizer())
    p(*x)
    c = convert_pt2e(p, fold_quantize=False)
    assert any("quantize_per_channel" in str(n.target) for n in c.graph.nodes)
    _import_fuse_compare("unfolded", c, x, {"qnn.conv2d_relu", "qnn.conv2d_add_relu"})


def test_reduce_range_becomes_a_clamp():
    x = MODELS["conv_bn_relu"][1]
    g, _ = _import_fuse_compare("reduce_range", converted("conv_bn_relu", reduce_range=True), x,
                             {"qnn.conv2d_relu", "qnn.clamp"})
    clamps = [n for n in g.nodes if n.op == "qnn.clamp"]
    assert all(n.attrs.min is None and n.attrs.max is not None for n in clamps)


def test_xnnpack_int8_activations_keep_convs_float():
    x = MODELS["add_residual"][1]
    gm = converted("add_residual", "xnnpack")
    g = import_pt2e_graph(gm, x)
    res = FuseQdq().apply(g)
    verify(g)
    cmp = compare_with_torch(g, gm, x)
    print(f"\nxnnpack: {cmp.summary()}")
    assert cmp.max_lsb <= 1
    convs = [r for r in res.report if r.op == "f.conv2d"]
    assert convs and all("quint8" in r.reason for r in convs)
    assert "qnn.add_relu" in g.op_counts() or "qnn.add" in g.op_counts()
    _check_float_out(cmp.outputs[0], _torch_out(gm, x))


def test_is_pt2e_graph():
    gm = converted("linear")
    assert is_pt2e_graph(gm)
    assert not is_pt2e_graph(torch.fx.symbolic_trace(LinearNet()))


# --- errors ----------------------------------------------------------------------------------

class CumsumNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.cumsum(self.conv(x), dim=1)


def test_unsupported_aten_op_names_node_source_and_alternatives():
    x = _x(1, 3, 6, 6)
    gm = quantize_pt2e(CumsumNet().eval(), x, calibration=1)
    with pytest.raises(UnsupportedError) as e:
        from_torch(gm, x)
    msg = str(e.value)
    assert msg.startswith("unsupported op aten.cumsum.default")
    assert "at FX node 'cumsum'" in msg
    assert "test_pt2e.py" in msg and "torch.cumsum(self.conv(x), dim=1)" in msg
    assert "supported: " in msg and "aten.conv2d" in msg
    assert "quantized_decomposed.quantize_per_tensor" in msg


def _fx(fn) -> torch.fx.GraphModule:
    return torch.fx.symbolic_trace(fn)


def test_dequantize_of_a_raw_integer_input_is_refused():
    qd = torch.ops.quantized_decomposed

    def f(x):
        return qd.dequantize_per_tensor.default(x, 0.1, 3, 0, 255, torch.uint8)

    with pytest.raises(UnsupportedError, match="not the result of a quantize"):
        from_torch(_fx(f), (torch.zeros(2, 3, dtype=torch.uint8),))


def test_dequantize_with_other_qparams_than_its_quantize_is_refused():
    qd = torch.ops.quantized_decomposed

    def f(x):
        q = qd.quantize_per_tensor.default(x, 0.1, 3, 0, 255, torch.uint8)
        return qd.dequantize_per_tensor.default(q, 0.2, 3, 0, 255, torch.uint8)

    with pytest.raises(UnsupportedError, match="with the qparams of the matching quantize"):
        from_torch(_fx(f), (torch.zeros(2, 3),))


def test_bad_arguments_are_a_frontend_error():
    a = torch.ops.aten

    def f(x):
        return a.add.Tensor(a.relu.default(x), a.hardtanh.default(x, 0.0, 6.0))

    g = from_torch(_fx(f), (torch.randn(2, 3),))
    assert "f.clamp" in g.op_counts()

    def bad(x):
        return a.max_pool2d.default(x, [2, 2], [2, 2], [3, 3])  # padding > kernel / 2

    with pytest.raises(FrontendError, match="f.max_pool2d: padding"):
        from_torch(_fx(bad), (torch.randn(1, 1, 4, 4),))


# --- the zoo (slow) --------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_zoo_models_match_pytorch(name, request):
    if not _slow_enabled(request.config):
        pytest.skip("slow (10-25 s): run with QC_SLOW=1 or -m slow")
    from qcompiler.testing.zoo import ZOO

    e = ZOO[name]
    x = e.inputs()
    gm = quantize_pt2e(e.build(), x)
    expect = {"qnn.conv2d_relu", "qnn.conv2d_add_relu", "qnn.max_pool2d"} if name == "resnet18" \
        else {"qnn.conv2d", "qnn.clamp", "qnn.conv2d_add", "qnn.adaptive_avg_pool2d"}
    _import_fuse_compare(name, gm, x, expect)
