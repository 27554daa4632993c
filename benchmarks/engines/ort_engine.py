"""ONNX Runtime int8 engines, from the same weights as the other engines.

Layer cases, two graph forms of the same numbers (u8 activations x s8 weights, per-channel weight
scales, weight zero points 0):

- `ort-qlinear`: operator form. conv: one QLinearConv; linear: one com.microsoft QGemm
  (transB=1). ONNX's QLinearMatMul has no bias input, QGemm is what ORT's own quantizer emits
  for a Gemm with bias.
- `ort-qdq`: QDQ form, DequantizeLinear -> Conv/Gemm -> QuantizeLinear, which ORT's graph
  optimizer fuses back into QLinearConv / QGemm (the ops it ran are reported from the optimized
  graph).

Both need the bias as int32 in accumulator units: round(b / (sx * sw[o])). PyTorch adds the
float bias after scaling instead, and ORT requantizes with its own float math, so ORT may differ
from the reference by 1 LSB on some outputs; the harness reports the max difference.

Zoo models (`ort-qdq` only): the float model exported with torch.onnx.export (the TorchScript
exporter, dynamo=False; the default dynamo exporter needs onnxscript) then quantized by ORT:
quantize_static (QDQ, per-channel s8 weights, u8 activations, MinMax calibration on the same
four batches the zoo calibrates PyTorch with) for the eager-flow conv nets, quantize_dynamic
(s8 weights) for the dynamic-flow models. These are ORT's quantizations, not PyTorch's: their
outputs are compared for information only.

Sessions: CPUExecutionProvider, intra_op_num_threads = threads, inter_op 1, sequential
execution, ORT_ENABLE_ALL; calls go through an IOBinding with preallocated input and output
OrtValues, so the timed call has no numpy conversion.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from benchmarks import cases as C
from benchmarks.engines.common import Engine, NotAvailable

OPSET = 21


def _session_options(threads: int, optimized_path: str | None = None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if optimized_path:
        so.optimized_model_filepath = optimized_path
    return so


def bias_int32(data: C.LayerData) -> np.ndarray:
    """The bias in accumulator units, round-half-even(b / (sx * sw[o])), as ORT needs it."""
    q = np.rint(data.bias.astype(np.float64) / (data.x_scale * data.w_scales))
    return np.clip(q, -2**31, 2**31 - 1).astype(np.int32)


def build_layer_model(data: C.LayerData, form: str) -> Any:
    """The ONNX model of one layer case: form 'qlinear' or 'qdq'."""
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh

    case = data.case
    o = case.out_features
    f32, u8, i8 = np.float32, np.uint8, np.int8
    inits: dict[str, np.ndarray] = {
        "x_scale": np.array(data.x_scale, f32), "x_zp": np.array(data.x_zp, u8),
        "w": data.w, "w_scale": data.w_scales.astype(f32), "w_zp": np.zeros(o, i8),
        "y_scale": np.array(data.out_scale, f32), "y_zp": np.array(data.out_zp, u8),
        "b": bias_int32(data), "b_scale": (data.x_scale * data.w_scales).astype(f32),
        "b_zp": np.zeros(o, np.int32),
    }
    conv_attrs: dict[str, Any] = {"kernel_shape": [case.kernel] * 2, "pads": [case.padding] * 4,
                  "strides": [case.stride] * 2, "dilations": [1, 1], "group": case.groups}
    nodes = []
    domains = [h.make_opsetid("", OPSET)]
    if form == "qlinear":
        if case.is_conv:
            nodes.append(h.make_node("QLinearConv", ["x", "x_scale", "x_zp", "w", "w_scale",
                                                     "w_zp", "y_scale", "y_zp", "b"], ["y"],
                                     **conv_attrs))
        else:
            nodes.append(h.make_node("QGemm", ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp",
                                               "b", "y_scale", "y_zp"], ["y"],
                                     domain="com.microsoft", transB=1))
            domains.append(h.make_opsetid("com.microsoft", 1))
        del inits["b_scale"], inits["b_zp"]
    elif form == "qdq":
        nodes += [
            h.make_node("DequantizeLinear", ["x", "x_scale", "x_zp"], ["xf"]),
            h.make_node("DequantizeLinear", ["w", "w_scale", "w_zp"], ["wf"], axis=0),
            h.make_node("DequantizeLinear", ["b", "b_scale", "b_zp"], ["bf"], axis=0),
        ]
        if case.is_conv:
            nodes.append(h.make_node("Conv", ["xf", "wf", "bf"], ["yf"], **conv_attrs))
        else:
            nodes.append(h.make_node("Gemm", ["xf", "wf", "bf"], ["yf"], transB=1))
        nodes.append(h.make_node("QuantizeLinear", ["yf", "y_scale", "y_zp"], ["y"]))
    else:
        raise ValueError(f"unknown ONNX form {form!r}")
    graph = h.make_graph(nodes, case.name,
                         [h.make_tensor_value_info("x", TP.UINT8, list(case.in_shape))],
                         [h.make_tensor_value_info("y", TP.UINT8, list(case.out_shape))],
                         [nh.from_array(v, k) for k, v in inits.items()])
    model = h.make_model(graph, opset_imports=domains, producer_name="qcompiler-benchmarks")
    model.ir_version = 10
    return model


def optimized_op_counts(path: str) -> dict[str, int]:
    """Op types of the graph ORT actually runs (from optimized_model_filepath)."""
    import onnx

    if not os.path.exists(path):
        return {}
    m = onnx.load(path, load_external_data=False)
    return dict(Counter(n.op_type for n in m.graph.node))


class OrtEngine(Engine):
    role = "peer"
    form = "qdq"

    def setup(self) -> dict[str, Any]:
        import onnxruntime as ort

        self._ort = ort
        info: dict[str, Any] = {"onnxruntime": ort.__version__, "form": self.form}
        if isinstance(self.case, C.LayerCase):
            data = C.make_layer_data(self.case)
            model_bytes = build_layer_model(data, self.form).SerializeToString()
            self._check_inputs: dict[str, Any] = dict(data.check_inputs)
        else:
            if self.form != "qdq":
                raise NotAvailable("zoo models run only in the QDQ form (ort-qdq)")
            model_bytes, note = self._zoo_model()
            info["quantization"] = note
            self._check_inputs = {"x": self._zoo_feed}  # a tuple of inputs
        opt_path = os.path.join(self.workdir, f"ort-{self.form}-{self.case.name}-opt.onnx")
        sess = ort.InferenceSession(model_bytes, _session_options(self.threads, opt_path),
                                    providers=["CPUExecutionProvider"])
        info["ops_run"] = optimized_op_counts(opt_path)
        self._sess = sess
        self._in_names = [i.name for i in sess.get_inputs()]
        self._out_name = sess.get_outputs()[0].name
        self._bind(self._check_inputs["x"])
        return info

    def _feed(self, x: Any) -> dict[str, np.ndarray]:
        xs = x if isinstance(x, tuple) else (x,)
        return {n: np.ascontiguousarray(v) for n, v in zip(self._in_names, xs)}

    def _bind(self, x: Any) -> None:
        ort = self._ort
        feed = self._feed(x)
        y = self._sess.run([self._out_name], feed)[0]
        io = self._sess.io_binding()
        self._keep = [ort.OrtValue.ortvalue_from_numpy(v) for v in feed.values()]
        for name, v in zip(feed, self._keep):
            io.bind_ortvalue_input(name, v)
        self._yv = ort.OrtValue.ortvalue_from_numpy(np.empty_like(y))
        io.bind_ortvalue_output(self._out_name, self._yv)
        self._io = io

    def call(self) -> None:
        self._sess.run_with_iobinding(self._io)

    def outputs(self) -> dict[str, np.ndarray]:
        return {k: self._sess.run([self._out_name], self._feed(x))[0]
                for k, x in self._check_inputs.items()}

    # --- zoo -----------------------------------------------------------------------------------

    def _zoo_model(self) -> tuple[bytes, str]:
        """Export + ORT-quantize the zoo model (cached on disk across thread counts)."""
        case: C.ZooCase = self.case
        inputs = C.zoo_inputs(case)
        self._zoo_feed = tuple(x.numpy() for x in inputs)
        cache = os.path.join(self.options.get("cache_dir") or self.workdir, "onnx")
        os.makedirs(cache, exist_ok=True)
        fp32 = os.path.join(cache, f"{case.name}-fp32.onnx")
        q = os.path.join(cache, f"{case.name}-int8-{case.flow}.onnx")
        note = ("quantize_static QDQ per-channel (MinMax, zoo calibration batches)"
                if case.flow == "eager" else "quantize_dynamic (s8 weights)")
        if not os.path.exists(q):
            self._export(case, inputs, fp32)
            self._quantize(case, fp32, q)
        with open(q, "rb") as f:
            return f.read(), note

    def _export(self, case: C.ZooCase, inputs: tuple[Any, ...], path: str) -> None:
        import torch

        model = C.zoo_float_model(case)
        names = [f"input{i}" for i in range(len(inputs))]
        errors = []
        attempts: tuple[dict[str, Any], ...] = ({"dynamo": False}, {})
        for kwargs in attempts:
            try:
                torch.onnx.export(model, inputs, path, opset_version=17, input_names=names,
                                  output_names=["output"], **kwargs)
                return
            except Exception as e:  # noqa: BLE001 - exporter errors have many types
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                errors.append(f"{'dynamo=False' if kwargs else 'dynamo'}: "
                              f"{type(e).__name__}: {msg[:200]}")
        raise NotAvailable("torch.onnx.export failed (" + "; ".join(errors) + ")")

    def _quantize(self, case: C.ZooCase, fp32: str, out: str) -> None:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        tmp = out + ".tmp"
        try:
            if case.flow == "eager":
                batches = C.zoo_calibration_batches(case)

                class Reader(CalibrationDataReader):
                    def __init__(self) -> None:
                        self._it = iter([{f"input{i}": x.numpy() for i, x in enumerate(b)}
                                         for b in batches])

                    def get_next(self) -> dict[str, np.ndarray] | None:
                        return next(self._it, None)

                quantize_static(fp32, tmp, Reader(), quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8)
            else:
                quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8)
        except Exception as e:
            raise NotAvailable(f"ORT quantization failed: {type(e).__name__}: "
                               f"{str(e).strip()[:200]}") from e
        os.replace(tmp, out)


class OrtQLinear(OrtEngine):
    name = "ort-qlinear"
    form = "qlinear"


class OrtQDQ(OrtEngine):
    name = "ort-qdq"
    form = "qdq"
