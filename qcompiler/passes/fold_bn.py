"""Batch-norm folding: why this module folds nothing (yet), measured.

The classic rewrite conv -> batch_norm => conv' (weights scaled by gamma / sigma, bias
adjusted) is a float identity. Neither form that could apply to our IR is bit-exact, and
every pass in the default pipelines must keep the reference outputs bit for bit, so none is
implemented. This module records why; revisit it when one of the premises changes.

**Integer level: `qnn.conv2d` -> `qnn.batch_norm` (the only batch norm in the op set).**
The pair rounds twice: the conv requantizes to its own output qparams (round + clip to
0..255), then batch_norm computes `clamp(zo + rint(fma(alpha, q - zq, beta)))`. A folded conv
(per-channel weight scales `sw * gamma / sigma`, bias `(b - mean) * gamma / sigma + beta`, the
batch norm's output qparams) rounds once. Measured on 120 conv2d registry samples with random
batch-norm parameters (gamma in 0.3..2, so the fold needs no weight negation): 16 % of outputs
differ; 756 of the 2504 by one LSB (double rounding), the rest by up to 246 LSB where the
conv's own output saturated its range, which the folded conv no longer clips. A negative
gamma would also need negated int8 weights, and -(-128) does not fit. So folding changes the
model's integer results: it is a quantization decision (PyTorch makes it before calibrating,
in `fuse_modules` / FX and PT2E `prepare`, through `fuse_conv_bn_eval`), not a compiler's.
`tests/passes/test_fold_bn.py::test_integer_conv_bn_fold_is_not_exact` keeps a counterexample.

**Float level: `f.conv2d` / `f.linear` -> a float batch norm.** The float op family (`f.*`,
ops/float_ops.py) has no batch-norm op: the frontends never see one, because PyTorch's
quantization flows fold BN into the conv weights before `convert`. Even with one, scaling
float weights changes float32 rounding (the folded conv sums differently rounded products),
so the result could only be within a tolerance, not bit-exact.
`tests/passes/test_fold_bn.py::test_no_float_batch_norm_op` fails when a float batch-norm op
is registered, as a reminder to implement the float fold here (with a documented tolerance,
outside the bit-exact pipelines).

What IS exact and done elsewhere: `qnn.batch_norm` -> `qnn.relu` => `qnn.batch_norm_relu`
(passes/fuse_activation.py), and a batch norm runs in its producer's kernel when grouped
(passes/group_kernels.py: it is an injective epilogue of the conv, one pass over memory).
"""

from __future__ import annotations

__all__: list[str] = []
