"""PyTorch quantized engines: torch.ops.quantized conv2d / linear on prepacked weights.

One class, three names: `torch-x86` (PyTorch's default on x86: oneDNN for convs with symmetric
weights and groups <= 100, fbgemm otherwise and for every linear), `torch-fbgemm` and
`torch-onednn`. The engine is set with torch.backends.quantized.engine before prepacking (the
packed object decides the kernel) and stays set while timing. Threads: torch.set_num_threads.

Zoo models are quantized with the zoo's flow while the engine is selected, so their packed
weights belong to that engine; the quantization parameters are the same for all three.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from benchmarks import cases as C
from benchmarks.engines.common import Engine, NotAvailable

warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")


class TorchEngine(Engine):
    role = "peer"
    qengine = "x86"

    def setup(self) -> dict[str, Any]:
        import torch

        if self.qengine not in torch.backends.quantized.supported_engines:
            raise NotAvailable(f"quantized engine {self.qengine!r} not in this build "
                               f"({torch.backends.quantized.supported_engines})")
        torch.set_num_threads(self.threads)
        torch.backends.quantized.engine = self.qengine
        self._torch = torch
        info: dict[str, Any] = {"torch": torch.__version__, "qengine": self.qengine,
                                "threads": torch.get_num_threads()}
        if isinstance(self.case, C.LayerCase):
            self._setup_layer()
            info["kernel"] = self._kernel_note()
        else:
            self._setup_zoo()
        return info

    # --- layers --------------------------------------------------------------------------------

    def _setup_layer(self) -> None:
        torch = self._torch
        from qcompiler.testing.torch_bridge import to_torch

        case: C.LayerCase = self.case
        data = C.make_layer_data(case)
        xt, wt, _, oq = C.layer_types(data)
        qw = to_torch(data.w, wt)
        bias = torch.from_numpy(data.bias.copy())
        ops = torch.ops.quantized
        if case.is_conv:
            s, p = [case.stride] * 2, [case.padding] * 2
            packed = ops.conv2d_prepack(qw, bias, s, p, [1, 1], case.groups)
            run = ops.conv2d
        else:
            packed = ops.linear_prepack(qw, bias)
            run = ops.linear
        scale, zp = oq.scale_value, oq.zp_value
        self._qx = {k: to_torch(v, xt) for k, v in data.check_inputs.items()}
        qx = self._qx["x"]
        self._fn: Any = lambda: run(qx, packed, scale, zp)
        self._run: Any = lambda x: run(x, packed, scale, zp)

    def _kernel_note(self) -> str:
        case: C.LayerCase = self.case
        if not case.is_conv:
            return "fbgemm" if self.qengine in ("x86", "fbgemm") else "onednn"
        from qcompiler.ops.conv import fbgemm_depthwise_fast_path

        if self.qengine == "x86":
            # symmetric weights: oneDNN unless groups > 100 (qcompiler.ops.conv.requant_path)
            lib = "onednn" if case.groups <= 100 else "fbgemm"
        else:
            lib = self.qengine
        if lib == "fbgemm" and fbgemm_depthwise_fast_path(
                case.in_shape[1], case.out_features, case.groups, (case.kernel,) * 2,
                (case.stride,) * 2, (case.padding,) * 2, (1, 1)):
            return "fbgemm depthwise (int16-saturating)"
        return lib

    # --- zoo -----------------------------------------------------------------------------------

    def _setup_zoo(self) -> None:
        torch = self._torch
        model, inputs = C.zoo_quantized(self.case, self.qengine)
        self._model, self._inputs = model, inputs

        def fn() -> Any:
            with torch.inference_mode():
                return model(*inputs)

        self._fn = fn

    # --- protocol ------------------------------------------------------------------------------

    def call(self) -> None:
        self._fn()

    def outputs(self) -> dict[str, np.ndarray]:
        from qcompiler.testing.torch_bridge import to_numpy

        if isinstance(self.case, C.LayerCase):
            return {k: to_numpy(self._run(x)) for k, x in self._qx.items()}
        return {"x": to_numpy(self._fn())}


class TorchX86(TorchEngine):
    name = "torch-x86"
    qengine = "x86"


class TorchFbgemm(TorchEngine):
    name = "torch-fbgemm"
    qengine = "fbgemm"


class TorchOnednn(TorchEngine):
    name = "torch-onednn"
    qengine = "onednn"
