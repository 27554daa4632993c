"""Issue 6's checks on the zoo's ResNet-18 and MobileNetV2: after the opt_level 3 pipeline for
x86 VNNI, one kernel per conv (plus pools, the fc and the graph's boundary ops), no standalone
relu / add / requantize kernels, no layout transform between convs; `qcompiler inspect
--kernels` shows it. The graph-level checks need no TVM (kernel grouping is an analysis);
one compiled check per model runs where the host has AVX-512 VNNI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import qcompiler as qc
from qcompiler.ir.graph import Graph, Node
from qcompiler.passes.group_kernels import NodeGroup
from qcompiler.passes.layout import PACKED_ELEMENTWISE
from qcompiler.passes.pipelines import kernel_groups, optimize
from qcompiler.target import get_target, host_arch, host_features
from qcompiler.testing.zoo import quantized

VNNI = get_target("x86-avx512-vnni")
MODELS = ("resnet18", "mobilenet_v2")
CONVS = ("x86.conv2d_packed", "qnn.conv2d", "qnn.conv2d_relu", "qnn.conv2d_add",
         "qnn.conv2d_add_relu")
ANCHORS_ALLOWED = CONVS + ("qnn.max_pool2d", "qnn.adaptive_avg_pool2d", "qnn.linear")
BOUNDARY_KERNELS = {("quantize",), ("flatten",), ("reshape",), ("layout_transform",)}
"""Kernels that are not convs, pools or the fc: the input quantize, the flatten before the
fc, and layout transforms where a pool meets the packed activations."""
STANDALONE_FORBIDDEN = {"qnn.relu", "qnn.add", "qnn.add_relu", "requantize", "qnn.relu6",
                        "qnn.clamp", "qnn.hardtanh"}
HAS_VNNI = host_arch() == "x86_64" and "avx512vnni" in host_features()


def _graph(name: str) -> Graph:
    model, inputs = quantized(name, "eager")
    return qc.from_torch(model, inputs)


def _o3(name: str) -> tuple[Graph, list[NodeGroup]]:
    g = optimize(_graph(name), 3, VNNI)
    groups = kernel_groups(g, 3)
    assert groups is not None
    return g, groups


def _is_conv(n: Node | None) -> bool:
    return n is not None and n.op in CONVS


@pytest.mark.parametrize("name", MODELS)
def test_one_kernel_per_conv_and_no_standalone_epilogues(name: str) -> None:
    g, groups = _o3(name)
    n_convs = sum(1 for n in g.nodes if _is_conv(n))
    conv_groups = [grp for grp in groups if grp.anchor is not None and _is_conv(grp.anchor)]
    assert len(conv_groups) == n_convs
    assert all(sum(_is_conv(n) for n in grp.nodes) == 1 for grp in conv_groups)
    for grp in groups:
        if grp.anchor is not None:
            assert grp.anchor.op in ANCHORS_ALLOWED, grp.ops
        else:
            assert grp.ops in BOUNDARY_KERNELS, f"standalone kernel {grp.ops}"
        assert not (len(grp.nodes) == 1 and grp.ops[0] in STANDALONE_FORBIDDEN)
    # every pointwise / 3x3 conv with groups = 1 is prepacked; depthwise convs keep their op
    assert not [n for n in g.nodes if n.op.startswith("qnn.conv2d") and n.attrs.groups == 1]


@pytest.mark.parametrize("name", MODELS)
def test_no_layout_transform_between_convs(name: str) -> None:
    g, _ = _o3(name)
    for n in g.nodes:
        if n.op != "layout_transform":
            continue
        src = n.inputs[0].producer
        # what feeds a transform is a boundary op (pool, graph input), never a conv or the
        # element-wise tail of a conv's kernel
        assert src is not None and not _is_conv(src) and src.op not in PACKED_ELEMENTWISE, src
    # a conv whose kernel writes NCHW4c well (channel-lane plan) hands it to the convs that
    # consume it directly (passes/layout.py: position-lane convs write NCHW by default)
    n_chained = 0
    for n in g.nodes:
        if n.op == "x86.conv2d_packed" and n.attrs.w_layout == "OIHW16o4i":
            users = n.outputs[0].users()
            if users and all(u.op == "x86.conv2d_packed" and u.inputs[0] is n.outputs[0]
                             for u in users) and not any(v is n.outputs[0] for v in g.outputs):
                assert n.attrs.out_layout == "NCHW4c"
                assert all(u.attrs.x_layout == "NCHW4c" for u in users)
                n_chained += 1
    assert n_chained >= (3 if name == "resnet18" else 0)


@pytest.mark.parametrize("name", MODELS)
def test_layout_pipeline_keeps_the_outputs_exactly(name: str) -> None:
    model, inputs = quantized(name, "eager")
    g = qc.from_torch(model, inputs)
    want = qc.interpret(g, *inputs)
    np.testing.assert_array_equal(qc.interpret(optimize(g, 3, VNNI), *inputs), want)


def test_inspect_shows_the_kernels(capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from qcompiler.cli import main

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    assert main(["inspect", "zoo_entry:resnet18", "--kernels", "--opt-level", "3",
                 "--target", "x86-avx512-vnni"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "x86.conv2d_packed" in ln]
    model, inputs = quantized("resnet18", "eager")
    convs = sum(n.op.startswith("qnn.conv2d") for n in qc.from_torch(model, inputs).nodes)
    assert len(lines) == convs > 0                          # one kernel line per conv
    assert any("qnn.add_relu" in ln for ln in lines)
    assert any("NCHW -> NCHW4c" in ln for ln in lines) and any("NCHW4c" in ln.split("->")[0]
                                                               for ln in lines)
    assert "anchor" in out and "epilogue" in out and "layouts" in out


@pytest.mark.tvm
@pytest.mark.skipif(not HAS_VNNI, reason="host CPU lacks avx512vnni")
@pytest.mark.parametrize("name", MODELS)
def test_compiled_o3_kernels_and_output(name: str) -> None:
    pytest.importorskip("tvm")
    model, inputs = quantized(name, "eager")
    g = qc.from_torch(model, inputs)
    cm = qc.compile(g, target="x86-avx512-vnni", opt_level=3)
    kernels = cm.manifest["kernels"]
    convs = [k for k in kernels if k["op"] == "x86.conv2d_packed"]
    assert convs and all(k["strategy"] == "conv2d_prepacked" for k in convs)
    assert all(k["schedule"] == "conv2d_int8_x86" for k in convs)
    assert not [k for k in kernels if k["ops"] and k["ops"][0] in STANDALONE_FORBIDDEN]
    assert any("NCHW4c" in k["layouts"]["in"] for k in convs)
    np.testing.assert_array_equal(cm(inputs[0].numpy()), qc.interpret(g, *inputs))
