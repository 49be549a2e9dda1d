"""The MobileNetV2 image tower as an ONNX graph run by onnxruntime: the same weights as the
Flax tower (trainer/models/mobilenet_v2.py), on CPU faster than XLA (docs/performance.md).

Why: every query and every re-embedded target runs the image tower, and XLA:CPU runs
MobileNetV2's depthwise and small 1x1 convolutions well below what the cores can do (issue
16). onnxruntime's fused convolution kernels do the same arithmetic in float32; features
agree with the Flax tower within 2e-5 (tests/serving/test_serving_onnx_tower.py).

The graph is built here from the checkpoint's own parameters (no exporter, no file): NHWC
float32 ImageNet-normalised pixels in, the pooled [B,1280] features out, exactly
`MobileNetV2.features`.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from trainer.models.mobilenet_v2 import block_layout


def _graph(tower: dict[str, Any]):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = iter(range(10_000))

    def conv(x: str, p: dict[str, Any], stride: int, group: int = 1) -> str:
        kernel = np.asarray(p["kernel"], np.float32)  # [kh, kw, in/group, out] (HWIO)
        k = kernel.shape[0]
        w = kernel.transpose(3, 2, 0, 1)  # OIHW; depthwise [k, k, 1, C] -> [C, 1, k, k]
        n = next(counter)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w), f"w{n}"))
        inits.append(numpy_helper.from_array(np.asarray(p["bias"], np.float32), f"b{n}"))
        pad = (k - 1) // 2
        out = f"c{n}"
        nodes.append(helper.make_node("Conv", [x, f"w{n}", f"b{n}"], [out],
                                      kernel_shape=[k, k], strides=[stride, stride],
                                      pads=[pad, pad, pad, pad], group=group))
        return out

    def relu6(x: str) -> str:
        out = f"{x}_r"
        nodes.append(helper.make_node("Clip", [x, "zero", "six"], [out]))
        return out

    inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    nodes.append(helper.make_node("Transpose", ["pixels"], ["nchw"], perm=[0, 3, 1, 2]))
    x = relu6(conv("nchw", tower["features_0"], 2))
    for i, (inp, oup, stride, t) in enumerate(block_layout(), start=1):
        p = tower[f"features_{i}"]
        y = x
        if t != 1:
            y = relu6(conv(y, p["expand"], 1))
        y = relu6(conv(y, p["depthwise"], stride, group=inp * t))
        y = conv(y, p["project"], 1)
        if stride == 1 and inp == oup:
            out = f"{y}_add"
            nodes.append(helper.make_node("Add", [x, y], [out]))
            y = out
        x = y
    x = relu6(conv(x, tower["features_18"], 1))
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], axis=1))
    graph = helper.make_graph(
        nodes, "mobilenet_v2_features",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["B", 224, 224, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", 1280])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def graph(tower_params: dict[str, Any]) -> bytes:
    """The serialized ONNX model of these tower parameters."""
    return _graph(tower_params).SerializeToString()


def session(model: bytes, threads: int, spin: bool = False):
    """An onnxruntime session of the tower's ONNX `model` (see `graph`). `threads`: intra-op
    threads. `spin`: idle pool threads busy-wait for the next op (ORT's default; off here:
    on two shared cores a spinning pool burns what the other thread, tower or process
    needs, and a contended run took 17 ms instead of 9, docs/performance.md)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def run(sess, pixels: np.ndarray) -> np.ndarray:
    """[B,224,224,3] float32 -> [B,1280] float32 on one session."""
    return sess.run(["features"], {"pixels": np.ascontiguousarray(pixels, np.float32)})[0]


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a pod's CPU
    limit, which the affinity mask does not show)."""
    n = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            n = min(n, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(n, 1)


@functools.cache
def _helpers(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(n, thread_name_prefix="onnx-tower")


class OnnxImageTower:
    """`MobileNetV2.features` of these tower parameters on onnxruntime, threaded as measured
    on 2 cores (docs/performance.md, "The image tower"):

    - one image (a lone query): one run with an intra-op thread per core (6.4 ms instead of
      9 when the second core is free);
    - a batch: cut into one share per core, each run single-threaded, side by side (the
      fewest CPU ms per image, 9.2 against 10-11 for one two-thread run of the batch).

    Sessions are thread-safe; concurrent callers (the query and target models, the worker)
    share them."""

    def __init__(self, tower_params: dict[str, Any], cores: int | None = None) -> None:
        self.cores = cores or available_cores()
        model = graph(tower_params)
        self.single = session(model, threads=self.cores)
        self.shared = session(model, threads=1) if self.cores > 1 else self.single

    def features(self, pixels: np.ndarray) -> np.ndarray:
        """[B,224,224,3] ImageNet-normalised float32 -> [B,1280] float32, any B."""
        pixels = np.ascontiguousarray(pixels, np.float32)
        n = pixels.shape[0]
        if n <= 1 or self.cores == 1:
            return run(self.single, pixels)
        share = -(-n // self.cores)
        parts = [pixels[i:i + share] for i in range(0, n, share)]
        rest = [_helpers(self.cores - 1).submit(run, self.shared, p) for p in parts[1:]]
        return np.concatenate([run(self.shared, parts[0]), *[f.result() for f in rest]])
