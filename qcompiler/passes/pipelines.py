"""The graph pipelines `qc.compile` runs, one per opt_level, readable top to bottom.

    opt_level 0   verify                                     compile the graph as given
    opt_level 1   dce, cse, fold-constants, verify           exact cleanups
    opt_level 2   + fuse-activation; then kernel grouping    fused epilogues, one kernel each
    opt_level 3   + on x86 VNNI targets: prepack-x86-conv, select-layout
                  (conv weights packed into IR constants with their zero-point corrections;
                  NCHW4c activations between convs, transforms only at the boundaries)

Every pass here keeps the reference outputs bit for bit, so every opt_level computes the
same integers. The target-specific passes run only when `pipeline` is given a target that
has the kernels they prepare for (`target_passes`). Kernel grouping is an analysis, not a pass: it leaves the graph alone and
returns the groups that `lower_graph` turns into one PrimFunc each (`kernel_groups`).
`optimize` runs a pipeline on a copy, so the caller's graph is never modified.
(The schedule side of opt_level, naive / generic / target rules, is codegen's: driver.py.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from qcompiler.errors import QCompilerError
from qcompiler.ir.graph import Graph, Value
from qcompiler.ir.verify import verify
from qcompiler.passes.dce import CommonSubexpressionElimination, DeadCodeElimination
from qcompiler.passes.fold_constants import FoldConstants
from qcompiler.passes.fuse_activation import FuseActivation
from qcompiler.passes.group_kernels import NodeGroup, group_kernels
from qcompiler.passes.layout import SelectLayout
from qcompiler.passes.manager import Pass, Pipeline
from qcompiler.passes.prepack import PrepackX86Conv
from qcompiler.target import TargetPreset

OPT_LEVELS = (0, 1, 2, 3)
KERNEL_GROUPING_LEVEL = 2
LAYOUT_LEVEL = 3
"""From this opt_level on, target passes prepack weights and choose activation layouts."""
"""From this opt_level on, kernels are fused groups (below: one kernel per node)."""


@dataclass(frozen=True)
class Verify(Pass):
    """Run the verifier; change nothing. Requires: nothing. Ensures: a verified graph."""

    name: ClassVar[str] = "verify"

    def run(self, graph: Graph) -> bool:
        verify(graph)
        return False


def _check_level(opt_level: Any) -> int:
    if isinstance(opt_level, bool) or opt_level not in OPT_LEVELS:
        raise QCompilerError(f"opt_level must be one of {list(OPT_LEVELS)}, got {opt_level!r}")
    return int(opt_level)


def target_passes(target: TargetPreset | None) -> list[Pass]:
    """Layout passes for `target`'s kernels: x86 VNNI (the packed layouts of
    codegen/x86/strategies.py) gets prepack-x86-conv + select-layout; other targets none."""
    if target is None or target.schedule_family != "x86-vnni" or not target.has("avx512vnni"):
        return []
    return [PrepackX86Conv(), SelectLayout()]


def pipeline(opt_level: int, target: TargetPreset | None = None) -> list[Pass]:
    """The graph passes for `opt_level` (and `target`, from LAYOUT_LEVEL on), in order."""
    level = _check_level(opt_level)
    if level == 0:
        return [Verify()]
    passes: list[Pass] = [
        DeadCodeElimination(),
        CommonSubexpressionElimination(),
        FoldConstants(),  # before fusion: biases become constants, which the guards inspect
    ]
    if level >= 2:
        passes.append(FuseActivation())
    if level >= LAYOUT_LEVEL:
        passes += target_passes(target)  # after fusion: it packs the fused convs
    passes.append(Verify())
    return passes


def kernel_groups(graph: Graph, opt_level: int) -> list[NodeGroup] | None:
    """The kernel groups for `lower_graph` at `opt_level`; None means one kernel per node."""
    if _check_level(opt_level) < KERNEL_GROUPING_LEVEL:
        return None
    return group_kernels(graph)


def copy_graph(graph: Graph) -> Graph:
    """A structurally equal copy of `graph`: new values and nodes, same attrs, types, names and
    locs; the constant arrays are shared (passes replace constants, never write into them)."""
    new = Graph(graph.name)
    env: dict[int, Value] = {id(v): new.add_input(v.type, v.name) for v in graph.inputs}
    for n in graph.nodes:
        m = new.create_node(n.op, [env[id(v)] for v in n.inputs], n.attrs,
                            [o.type for o in n.outputs], n.loc, [o.name for o in n.outputs])
        env.update((id(o), p) for o, p in zip(n.outputs, m.outputs))
    new.constants = dict(graph.constants)
    new.set_outputs(env[id(v)] for v in graph.outputs)
    return new


def optimize(graph: Graph, opt_level: int, target: TargetPreset | None = None,
             **pipeline_options: Any) -> Graph:
    """Run `pipeline(opt_level, target)` on a copy of `graph` and return the copy.

    `pipeline_options` go to `Pipeline` (verify_each, print_after, print_after_all, out).
    """
    g = copy_graph(graph)
    Pipeline(pipeline(opt_level, target), **pipeline_options).run(g)
    return g


__all__ = [
    "KERNEL_GROUPING_LEVEL",
    "LAYOUT_LEVEL",
    "OPT_LEVELS",
    "Verify",
    "copy_graph",
    "kernel_groups",
    "optimize",
    "pipeline",
    "target_passes",
]
