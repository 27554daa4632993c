"""The op registry: every fact about an op lives in one `OpDef` subclass.

An op module under `qcompiler/ops/` defines an attrs dataclass and an `OpDef` subclass with
`infer_type` (the only place its type and qparam rules live), `reference` (numpy semantics,
PyTorch-exact), optionally `verify` (checks `infer_type` cannot express), `lower` (TE compute,
see lowering/), and the test hooks `samples` + `torch_reference`, which the registry-driven
tests use to compare every op with real PyTorch. `@register_op` adds it to the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from qcompiler.errors import VerifyError
from qcompiler.ir.types import TensorType


@dataclass(frozen=True)
class NoAttrs:
    """Attrs of ops that take none."""


@dataclass(frozen=True)
class ConstAttrs:
    name: str
    """Key of the data in `Graph.constants`."""


@dataclass(frozen=True)
class Sig:
    """The types around one application of an op: what `reference` and `lower` see."""

    in_types: tuple[TensorType, ...]
    out_types: tuple[TensorType, ...]
    attrs: Any

    @property
    def out(self) -> TensorType:
        return self.out_types[0]


@dataclass
class OpSample:
    """One test case for an op: attrs, typed inputs, and a label for the test id."""

    attrs: Any
    in_types: tuple[TensorType, ...]
    arrays: tuple[np.ndarray, ...]
    label: str = ""
    max_lsb: int | None = None
    """Override of the op's documented bound for this sample (None: the op's `max_lsb`)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything `torch_reference` needs that the IR does not carry (e.g. the float bias)."""


class OpDef:
    """Base class of op definitions. Subclass, fill the class attributes, `@register_op` it."""

    name: ClassVar[str]
    Attrs: ClassVar[type] = NoAttrs
    schedule_kind: ClassVar[str] = "injective"
    """Chooses the generic schedule family: injective, reduction, conv, dense, opaque."""
    num_inputs: ClassVar[int | tuple[int, ...] | None] = None
    """Accepted input counts (None: any)."""
    torch_counterparts: ClassVar[tuple[str, ...]] = ()
    """The PyTorch ops/modules this op models, for docs and error messages."""
    max_lsb: ClassVar[int] = 0
    """Documented bound on |ours - PyTorch| in output LSBs (0: exact)."""
    fidelity_note: ClassVar[str] = ""
    """Why the op is not exact, when `max_lsb > 0`."""

    # --- the definition ------------------------------------------------------------------

    def infer_type(self, attrs: Any, *in_types: TensorType) -> TensorType | tuple[TensorType, ...]:
        raise NotImplementedError(f"{self.name}: infer_type")

    def verify(self, node: Any) -> None:
        """Extra structural checks on a node; raise VerifyError. Default: none."""

    def reference(self, sig: Sig, *args: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        raise NotImplementedError(f"{self.name}: reference")

    def lower(self, sig: Sig, *args: Any) -> Any:
        """TE compute for this op (te imported lazily). Implemented per op in ops/."""
        from qcompiler.errors import LoweringError

        raise LoweringError(f"op {self.name} has no lowering to TVM yet")

    # --- test hooks ----------------------------------------------------------------------

    def samples(self, rng: np.random.Generator) -> Iterator[OpSample]:
        """Random and edge-case inputs for the registry-driven tests."""
        return iter(())

    def torch_reference(self, sample: OpSample, sig: Sig) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the real PyTorch counterpart on `sample`; return storage arrays (int_repr)."""
        raise NotImplementedError(f"{self.name}: torch_reference")

    # --- helpers used by the machinery ---------------------------------------------------

    def check_arity(self, n: int) -> None:
        allowed = self.num_inputs
        if allowed is None:
            return
        counts = (allowed,) if isinstance(allowed, int) else allowed
        if n not in counts:
            raise VerifyError(
                f"op {self.name} takes {' or '.join(map(str, counts))} inputs, got {n}"
            )

    def infer_types(self, attrs: Any, in_types: Sequence[TensorType]) -> tuple[TensorType, ...]:
        """`infer_type` normalized to a tuple, with arity and attrs class checked."""
        self.check_arity(len(in_types))
        if not isinstance(attrs, self.Attrs):
            raise VerifyError(
                f"op {self.name} takes attrs {self.Attrs.__name__}, got {type(attrs).__name__}"
            )
        out = self.infer_type(attrs, *in_types)
        return out if isinstance(out, tuple) else (out,)

    def __repr__(self) -> str:
        return f"<op {self.name}>"


_REGISTRY: dict[str, OpDef] = {}
_LOADED = False
OP_PACKAGES = ("qcompiler.ops",)


def register_op(cls: type[OpDef]) -> type[OpDef]:
    """Class decorator: instantiate and register an OpDef under `cls.name`."""
    name = cls.name
    if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
        raise VerifyError(f"op {name} is registered twice ({type(_REGISTRY[name])} and {cls})")
    _REGISTRY[name] = cls()
    return cls


def _ensure_loaded() -> None:
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for pkg in OP_PACKAGES:
            importlib.import_module(pkg)


def get_op(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        near = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise VerifyError(f"unknown op {name!r}{hint}") from None


def has_op(name: str) -> bool:
    _ensure_loaded()
    return name in _REGISTRY


def all_ops() -> list[OpDef]:
    """Every registered op, sorted by name."""
    _ensure_loaded()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


@register_op
class Const(OpDef):
    """A constant tensor; its data is `graph.constants[attrs.name]`."""

    name = "const"
    Attrs = ConstAttrs
    num_inputs = 0
    schedule_kind = "opaque"

    def infer_type(self, attrs: ConstAttrs, *in_types: TensorType) -> TensorType:
        raise VerifyError("const nodes carry their type; it is not inferred")
