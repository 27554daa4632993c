"""The one module that names Apache TVM's modules. Everything else imports TVM through here.

TVM renamed and removed APIs repeatedly in 2025-26 (`tir` -> `tirx`, `tir.Schedule` ->
`s_tir.Schedule`, `get_block` -> `get_sblock`, `tvm.nd` -> `tvm.runtime.tensor`, ...; see
docs/tvm-0.27-notes.md). Keeping every module path, and every renamed method we call, in this
file makes a TVM upgrade a one-file change. Pinned: apache-tvm 0.27 with apache-tvm-ffi
0.1.14.post1 (0.1.15.x segfaults in `Schedule.tensorize`).

NOTE: TVM fixes its thread-pool size on first use. `qcompiler/lowering/__init__.py` sets
`TVM_NUM_THREADS` (when unset) before this module imports TVM; see there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, te, tirx, topi
from tvm.ir import IRModule
from tvm.s_tir import Schedule, TensorIntrin
from tvm.s_tir.schedule import SBlockRV as BlockRV
from tvm.s_tir.schedule import ScheduleError
from tvm.script import tirx as T
from tvm.target import Target
from tvm.target.codegen import llvm_version_major
from tvm.tirx import PrimFunc

TVM_VERSION: str = str(tvm.__version__)

Tensor = te.Tensor
"""A TE tensor (placeholder or compute result)."""
PrimExpr = tvm.ir.expr.Expr
Executable = tvm.runtime.Executable
RuntimeTensor = tvm.runtime.Tensor

ITER_SPATIAL = int(tirx.IterVar.DataPar)
ITER_REDUCE = int(tirx.IterVar.CommReduce)

# NOTE: TVM's VectorizeLoop scalarizes a whole vectorized loop when it meets a call to an op
# without the `TVectorizable` attribute, and 0.27 leaves it off `tirx.nearbyint` and
# `tirx.isnan`, so every requantize epilogue (te_lib.round_half_even, the NaN checks) ran as
# scalar code inside `vectorize`d loops. Both lower to LLVM operations that take vectors
# (`llvm.nearbyint.v16f32`, `fcmp uno`) with the same per-lane result (checked bit for bit in
# tests/codegen/test_x86_vnni.py), so they are marked vectorizable here, once per process.
VECTORIZABLE_OPS = ("tirx.nearbyint", "tirx.isnan")
for _op in VECTORIZABLE_OPS:
    if not tvm.ir.Op.get(_op).get_attr("TVectorizable"):
        tvm.ir.register_op_attr(_op, "TVectorizable", True)

__all__ = [
    "ITER_REDUCE",
    "ITER_SPATIAL",
    "TVM_VERSION",
    "VECTORIZABLE_OPS",
    "BlockRV",
    "Executable",
    "IRModule",
    "PrimExpr",
    "PrimFunc",
    "RuntimeTensor",
    "Schedule",
    "ScheduleError",
    "T",
    "Target",
    "Tensor",
    "TensorIntrin",
    "block_info",
    "child_blocks",
    "compile_module",
    "cpu",
    "create_prim_func",
    "empty",
    "expr_dtype",
    "get_block",
    "int_shape",
    "is_placeholder",
    "llvm_version_major",
    "loop_extent",
    "new_schedule",
    "relax",
    "relax_const",
    "rename_func",
    "scheduled_func",
    "structural_key",
    "te",
    "tirx",
    "to_tensor",
    "topi",
    "tvm",
]


# --- tensors and devices -----------------------------------------------------------------------


def cpu() -> Any:
    """The host CPU device."""
    return tvm.cpu(0)


def to_tensor(arr: np.ndarray) -> RuntimeTensor:
    """A TVM runtime tensor on the CPU holding a copy of `arr` (was `tvm.nd.array`)."""
    return tvm.runtime.tensor(np.asarray(arr, order="C"), cpu())


def empty(shape: Sequence[int], dtype: str) -> RuntimeTensor:
    """An uninitialised CPU runtime tensor (was `tvm.nd.empty`)."""
    return tvm.runtime.empty(tuple(shape), dtype, cpu())


# --- TE / TIR ----------------------------------------------------------------------------------


def is_placeholder(t: Tensor) -> bool:
    """True when `t` is a `te.placeholder` (a kernel argument), not a computed tensor."""
    return isinstance(t.op, te.PlaceholderOp)


def expr_dtype(e: Any) -> str:
    """The dtype string of a TIR expression (`.ty` in 0.27, `.dtype` before) or tensor slice."""
    ty = getattr(e, "ty", None)
    return str(ty) if ty is not None else str(e.dtype)


def int_shape(t: Tensor) -> tuple[int, ...]:
    """The static shape of a TE tensor as Python ints."""
    return tuple(int(d) for d in t.shape)


def create_prim_func(args: Sequence[Tensor]) -> PrimFunc:
    """`te.create_prim_func`: a schedulable PrimFunc with `args` as its parameters, in order."""
    return te.create_prim_func(list(args))


def rename_func(func: PrimFunc, name: str) -> PrimFunc:
    """Set the PrimFunc's `global_symbol`.

    NOTE: `te.create_prim_func` and `Schedule` name every function `main`; two of them in one
    Relax module fail `tvm.compile` with "IRModule contains duplicate global symbol: main".
    """
    return func.with_attr("global_symbol", name)


def structural_key(func: PrimFunc) -> Any:
    """A hashable key equal for structurally equal functions (to share identical kernels)."""
    return tvm_ffi.StructuralKey(func)


def relax_const(arr: np.ndarray) -> Any:
    """`relax.const` keeping the array's dtype.

    NOTE: `relax.const(ndarray)` silently narrows float64 -> float32 and int64 -> int32.
    """
    arr = np.asarray(arr, order="C")  # NOTE: ascontiguousarray makes 0-d arrays 1-d
    return relax.const(arr, dtype=str(arr.dtype))


# --- schedules (renamed in 0.27: get_block -> get_sblock, BlockRV -> SBlockRV) ----------------


def new_schedule(func: PrimFunc) -> Schedule:
    """A schedule over one PrimFunc."""
    return Schedule(func)


def scheduled_func(sch: Schedule) -> PrimFunc:
    """The (single) PrimFunc a schedule over one function has produced."""
    funcs = list(sch.mod.functions.values())
    if len(funcs) != 1:
        raise ValueError(f"expected a schedule over one PrimFunc, it holds {len(funcs)}")
    return funcs[0]


def get_block(sch: Schedule, name: str) -> BlockRV:
    """The block named `name` (`"root"` is the function's root block)."""
    return sch.get_sblock(name)


def child_blocks(sch: Schedule) -> list[BlockRV]:
    """The blocks directly under the root block, in program order."""
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def block_info(sch: Schedule, block: BlockRV) -> tuple[str, list[int], bool]:
    """(name, iter kinds (ITER_SPATIAL / ITER_REDUCE / other), has an init statement)."""
    blk = sch.get(block)
    kinds = [int(iv.iter_type) for iv in blk.iter_vars]
    return str(blk.name_hint), kinds, blk.init is not None


def loop_extent(sch: Schedule, loop: Any) -> int | None:
    """A loop's constant extent, or None when it is not a constant."""
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


# --- build -------------------------------------------------------------------------------------


def compile_module(mod: IRModule, target: Target) -> Executable:
    """`tvm.compile` a Relax module (or PrimFunc) for `target` (the default Relax pipeline).

    Machine code is generated lazily, on the first `jit()`, call or export.
    """
    return tvm.compile(mod, target=target)
