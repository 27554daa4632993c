"""Graph passes: the manager, the rewrite driver, and the optimisation passes."""

from qcompiler.passes.dce import CommonSubexpressionElimination, DeadCodeElimination
from qcompiler.passes.fold_constants import FoldConstants
from qcompiler.passes.manager import Pass, PassError, Pipeline
from qcompiler.passes.rewrite import Pattern, Rewriter, rewrite_greedily

__all__ = ["CommonSubexpressionElimination", "DeadCodeElimination", "FoldConstants", "Pass",
           "PassError", "Pattern", "Pipeline", "Rewriter", "rewrite_greedily"]
