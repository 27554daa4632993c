"""Weight prepacking for the x86 VNNI conv kernels (`prepack-x86-conv`).

`qnn.conv2d[_relu]` / `qnn.conv2d_add[_relu]` nodes with a constant weight become
`x86.conv2d_packed` nodes (ops/layout.py) whose weight is a new constant in the layout the
kernel reads, plus a constant of zero-point corrections:

    %y = qnn.conv2d_relu(%x, %w, %b) {...}
 -> %wp = const "w_packed" : i8[OCp/16, ceil(C/4), KH, KW, 16, 4]      (or [OCp, C/4, KH, KW, 4])
    %corr = const "w_corr" : i32[OCp]        corr[o] = T*zx*zw[o] - zx*sum_t w[o, t]
    %y = x86.conv2d_packed(%x, %wp, %corr, %b) {base="qnn.conv2d_relu", w_layout=..., ...}

The packing plan (which of the two kernel layouts, and OCp: output channels padded to the
register tiles) is the one the x86 strategy would pick itself (`codegen/x86_plan.py`:
`choose_conv_plan`, the same cost model), so the kernel reads the constant as it is. The
requantize multipliers stay derived from the qparams the node carries (te_lib computes them
in numpy at compile time; they are float32 functions of the scales, not data to pack).

Skipped (left as they are, lowered as before): groups != 1 (depthwise has its own strategy),
non-constant weights, reductions too long for the int32 kernel (`conv_corrections`
returns None: T > 16447 taps or |corr| >= 2**31).

Requires: a verified graph (constants folded, so weights are constants); a target with
AVX-512 VNNI (the pipeline adds the pass only then). Ensures: a verified graph with the same
reference outputs bit for bit (the packed op's reference computes the kernel's accumulator
from the packed constants: tests/passes/test_prepack.py); running it again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.codegen.x86_plan import VNNI_SHAPE, choose_conv_plan, conv_corrections
from qcompiler.ir.graph import Graph, Node
from qcompiler.ir.registry import get_op
from qcompiler.ir.types import TensorType, i8, i32, u8
from qcompiler.ops.conv import expand_spatial
from qcompiler.ops.layout import (
    PACKED_CONV_BASES,
    pack_weight,
    packed_conv_attrs,
    weight_corrections,
)
from qcompiler.passes.manager import Pass
from qcompiler.passes.rewrite import remove_dead_nodes

W_LAYOUT_OF_PLAN = {"nchwc": "OIHW16o4i", "nchw": "OIHW4i"}


def prepack_plan(node: Node) -> tuple[str, int] | None:
    """(w_layout, OCp) for a conv node the pass packs, or None (groups, int32 bound)."""
    attrs = node.attrs
    x, w = node.inputs[0].type, node.inputs[1].type
    if attrs.groups != 1 or x.rank != 4 or x.dtype != u8 or w.qparams is None:
        return None
    geometry = (x.shape, w.shape, expand_spatial(attrs.stride, 2),
                expand_spatial(attrs.padding, 2), expand_spatial(attrs.dilation, 2))
    plan = choose_conv_plan(*geometry, {"nchwc": VNNI_SHAPE, "nchw": VNNI_SHAPE})
    if plan is None:
        return None
    return W_LAYOUT_OF_PLAN[plan.layout], plan.ocp


@dataclass(frozen=True)
class PrepackX86Conv(Pass):
    """Conv weights packed for VNNI, zero-point corrections precomputed (module doc).

    Requires: verified graph, constant weights (run after fold-constants). Ensures: verified
    graph, same reference outputs bit for bit; idempotent.
    """

    name: ClassVar[str] = "prepack-x86-conv"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if node.op in PACKED_CONV_BASES and self._rewrite(graph, node):
                changed = True
        if changed:
            remove_dead_nodes(graph)
        return changed

    def _rewrite(self, graph: Graph, node: Node) -> bool:
        x, w = node.inputs[0], node.inputs[1]
        rest = list(node.inputs[2:])
        if not graph.is_const(w):
            return False
        picked = prepack_plan(node)
        if picked is None:
            return False
        w_layout, ocp = picked
        xq, wq = x.type.qparams, w.type.qparams
        assert xq is not None and wq is not None
        wdata = graph.const_data(w)
        o = wdata.shape[0]
        zx = int(xq.zp_value)
        zws = np.broadcast_to(wq.zero_points_array(), (o,)).astype(np.int64)
        if conv_corrections(wdata, zx, zws, int(np.prod(wdata.shape[1:]))) is None:
            return False
        wp = pack_weight(wdata, w_layout, ocp)
        corr = weight_corrections(wdata, zx, zws, ocp)
        hint = w.name or "w"
        wv = graph.add_constant(wp, TensorType(wp.shape, i8), f"{hint}_packed", node.loc,
                                before=node)
        cv = graph.add_constant(corr, TensorType(corr.shape, i32), f"{hint}_corr", node.loc,
                                before=node)
        attrs = packed_conv_attrs(node.op, node.attrs, x.type, w.type, w_layout)
        out_types = get_op("x86.conv2d_packed").infer_types(
            attrs, [x.type, wv.type, cv.type, *(v.type for v in rest)])
        new = graph.create_node("x86.conv2d_packed", [x, wv, cv, *rest], attrs, out_types,
                                node.loc, [node.outputs[0].name], before=node)
        graph.replace_all_uses(node.outputs[0], new.outputs[0])
        return True


__all__ = ["PrepackX86Conv", "prepack_plan"]
