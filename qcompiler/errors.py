"""The exceptions qcompiler raises. Every error a user can cause is a `QCompilerError`."""

from __future__ import annotations


class QCompilerError(Exception):
    """Base class of every error qcompiler raises on bad input."""


class VerifyError(QCompilerError):
    """A graph breaks a structural or typing rule; the message names the node."""


class TypeInferenceError(VerifyError):
    """An op's type rule rejects its inputs or attributes."""


class InterpretError(QCompilerError):
    """The reference interpreter was given inputs that do not fit the graph."""


class ParseError(QCompilerError):
    """The text form of a graph could not be read."""


class SerializationError(QCompilerError):
    """A serialized graph could not be written or read back."""


class LoweringError(QCompilerError):
    """An op or graph could not be lowered to TVM."""


class TargetError(QCompilerError):
    """An unknown target preset, or one this machine cannot compile for."""


class ArtifactError(QCompilerError):
    """A compiled artifact is corrupt, tampered with, or needs CPU features this host lacks."""


class InputError(QCompilerError):
    """A compiled module was called with inputs that do not match its signature."""


class FrontendError(QCompilerError):
    """A model could not be imported."""


class UnsupportedError(FrontendError):
    """A model uses a module, op or attribute qcompiler does not support."""
