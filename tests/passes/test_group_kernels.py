"""Kernel grouping: anchored epilogue chains, where groups end, convexity, random graphs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from qcompiler.ir import Builder, QParams, TensorType, f32, i8, print_graph, u8
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.registry import all_ops
from qcompiler.ops.conv import ConvAttrs
from qcompiler.ops.elementwise import QBinaryAttrs
from qcompiler.ops.pool import MaxPoolAttrs
from qcompiler.ops.quant import QuantizeAttrs
from qcompiler.ops.shape import PermuteAttrs
from qcompiler.passes.group_kernels import (
    INDEX_REMAPPING_OPS,
    GroupingError,
    NodeGroup,
    check_groups,
    group_kernels,
    is_convex,
)
from qcompiler.testing.golden import check_golden
from qcompiler.testing.strategies import graphs

GOLDEN = Path(__file__).parent / "golden"
Q = QParams.per_tensor


def conv(b: Builder, x: Value, cout: int = 4, name: str = "", zo: int = 60) -> Value:
    cin = x.type.shape[1]
    rng = np.random.default_rng(cout * 31 + cin)
    w = b.const(rng.integers(-40, 40, (cout, cin, 3, 3)).astype(np.int8),
                TensorType((cout, cin, 3, 3), i8, Q(0.02, 0, "symmetric")), f"w_{name}")
    bias = b.const(rng.standard_normal(cout).astype(np.float32), TensorType((cout,), f32),
                   f"b_{name}")
    return b.op("qnn.conv2d", [x, w, bias], ConvAttrs(Q(0.1, zo), (1,), (1,)), name=name,
                loc=name)


def groups_text(groups: list[NodeGroup]) -> str:
    return "".join(f"{' + '.join(g.ops)}" + (f"  (anchor {g.anchor.op})" if g.anchor else "")
                   + "\n" for g in groups)


def ops_of(groups: list[NodeGroup]) -> list[tuple[str, ...]]:
    return [g.ops for g in groups]


def block_graph() -> Graph:
    """conv -> relu -> add(residual) -> requantize -> dequantize: one kernel."""
    b = Builder("block")
    x = b.input("x", TensorType((1, 3, 8, 8), u8, Q(0.05, 10)))
    e = b.input("e", TensorType((1, 4, 8, 8), u8, Q(0.08, 5)))
    y = conv(b, x, name="conv")
    r = b.op("qnn.relu", [y], name="relu")
    a = b.op("qnn.add", [r, e], QBinaryAttrs(Q(0.12, 7)), name="add")
    q = b.op("requantize", [a], QuantizeAttrs(u8, Q(0.2, 3)), name="rq")
    return b.finish(b.op("dequantize", [q], name="out"))


def test_conv_relu_add_chain_is_one_group() -> None:
    g = block_graph()
    groups = group_kernels(g)
    check_groups(g, groups)
    assert ops_of(groups) == [("qnn.conv2d", "qnn.relu", "qnn.add", "requantize", "dequantize")]
    assert groups[0].anchor is g.nodes[2]
    check_golden(GOLDEN / "group-kernels.before.qir", print_graph(g))
    check_golden(GOLDEN / "group-kernels.groups.txt", groups_text(groups))


def test_a_value_with_two_users_ends_the_group() -> None:
    b = Builder()
    x = b.input("x", TensorType((1, 3, 8, 8), u8, Q(0.05, 10)))
    y = conv(b, x, name="c")
    r = b.op("qnn.relu", [y], name="r")
    a = b.op("qnn.add", [r, r], QBinaryAttrs(Q(0.2, 0)), name="a")   # one user, twice: joins
    s1 = b.op("qnn.relu6", [a], name="s1")                           # a has two users
    s2 = b.op("requantize", [a], QuantizeAttrs(u8, Q(0.3, 1)), name="s2")
    g = b.finish(s1, s2)
    groups = group_kernels(g)
    check_groups(g, groups)
    assert ops_of(groups) == [("qnn.conv2d", "qnn.relu", "qnn.add"), ("qnn.relu6",),
                              ("requantize",)]


def test_a_graph_output_ends_the_group() -> None:
    b = Builder()
    x = b.input("x", TensorType((1, 3, 8, 8), u8, Q(0.05, 10)))
    y = conv(b, x, name="c")
    r = b.op("qnn.relu", [y], name="r")
    g = b.finish(r, b.op("dequantize", [r]))
    assert ops_of(group_kernels(g)) == [("qnn.conv2d", "qnn.relu"), ("dequantize",)]


def test_anchors_do_not_share_a_kernel_and_prologues_stay_apart() -> None:
    b = Builder()
    x = b.input("x", TensorType((1, 3, 8, 8), u8, Q(0.05, 10)))
    x2 = b.op("requantize", [x], QuantizeAttrs(u8, Q(0.06, 11)))      # before an anchor
    y = conv(b, x2, name="c1")
    p = b.op("qnn.max_pool2d", [y], MaxPoolAttrs((2, 2), (2, 2)))
    z = conv(b, p, name="c2")
    g = b.finish(b.op("qnn.relu", [z]))
    groups = group_kernels(g)
    check_groups(g, groups)
    assert ops_of(groups) == [("requantize",), ("qnn.conv2d",), ("qnn.max_pool2d",),
                              ("qnn.conv2d", "qnn.relu")]


def test_data_movement_ends_an_epilogue_but_not_an_elementwise_chain() -> None:
    b = Builder()
    x = b.input("x", TensorType((1, 4, 4, 4), u8, Q(0.05, 10)))
    y = conv(b, x, name="c")                                   # [1, 4, 4, 4]: a permute of
    t = b.op("permute", [y], PermuteAttrs((0, 1, 3, 2)))       # it keeps the shape
    d = b.op("dequantize", [t])
    g = b.finish(d)
    assert ops_of(group_kernels(g)) == [("qnn.conv2d",), ("permute", "dequantize")]


def test_elementwise_chains_are_claimed_after_anchors() -> None:
    """requantize(e) comes first in graph order, but the add belongs to the conv's epilogue."""
    b = Builder()
    x = b.input("x", TensorType((1, 3, 8, 8), u8, Q(0.05, 10)))
    e = b.input("e", TensorType((1, 4, 8, 8), u8, Q(0.08, 5)))
    e2 = b.op("requantize", [e], QuantizeAttrs(u8, Q(0.1, 9)))
    y = conv(b, x, name="c")
    g = b.finish(b.op("qnn.add", [y, e2], QBinaryAttrs(Q(0.12, 7))))
    groups = group_kernels(g)
    check_groups(g, groups)
    assert ops_of(groups) == [("requantize",), ("qnn.conv2d", "qnn.add")]


def test_convexity_check() -> None:
    """{conv, add} around a relu6 that leaves and comes back is not convex."""
    b = Builder()
    x = b.input("x", TensorType((1, 3, 8, 8), u8, Q(0.05, 10)))
    y = conv(b, x, name="c")
    r = b.op("qnn.relu6", [y])
    a = b.op("qnn.add", [y, r], QBinaryAttrs(Q(0.12, 7)))
    g = b.finish(a)
    c, rn, an = (n for n in g.nodes if n.op != "const")
    assert not is_convex(g, [c, an])
    assert is_convex(g, [c, rn, an]) and is_convex(g, [rn, an])
    with pytest.raises(GroupingError, match="not convex"):
        check_groups(g, [NodeGroup((c, an), c), NodeGroup((rn,))])
    with pytest.raises(GroupingError, match="in no kernel group"):
        check_groups(g, [NodeGroup((c,), c)])
    with pytest.raises(GroupingError, match="in kernel groups 0 and 1"):
        check_groups(g, [NodeGroup((c, rn), c), NodeGroup((rn, an))])
    groups = group_kernels(g)             # y has two users: the grouping ends at the conv
    check_groups(g, groups)
    assert ops_of(groups) == [("qnn.conv2d",), ("qnn.relu6", "qnn.add")]


def test_index_remapping_ops_are_registered_injective_ops() -> None:
    injective = {o.name for o in all_ops() if o.schedule_kind == "injective"}
    assert INDEX_REMAPPING_OPS <= injective, INDEX_REMAPPING_OPS - injective


@given(gi=graphs(max_nodes=8))
def test_random_graphs_partition_into_convex_groups(gi: tuple[Graph, list[np.ndarray]]) -> None:
    g, _ = gi
    groups = group_kernels(g)
    check_groups(g, groups)
    for grp in groups:
        for n, nxt in zip(grp.nodes, grp.nodes[1:]):      # chains: single user, in order
            assert nxt.inputs and any(v is n.outputs[0] for v in nxt.inputs)
            assert n.outputs[0].users() == [nxt]
        if grp.anchor is not None:
            assert grp.anchor is grp.nodes[0]
