"""CLI entry points (`module:function` -> (model, example_inputs)) for the zoo's CNNs."""

from __future__ import annotations

from typing import Any


def resnet18() -> tuple[Any, tuple[Any, ...]]:
    from qcompiler.testing.zoo import quantized

    return quantized("resnet18", "eager")


def mobilenet_v2() -> tuple[Any, tuple[Any, ...]]:
    from qcompiler.testing.zoo import quantized

    return quantized("mobilenet_v2", "eager")
