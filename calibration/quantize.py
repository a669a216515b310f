"""INT8 quantization through ONNX Runtime: static QDQ (calibrated) and dynamic, plus a per-graph error
measure used to keep sensitive graphs in higher precision."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
from nanotrt.calibration.readers import FeedReader, Feeds
from nanotrt.runtime.errors import NanotrtError

CALIB_METHODS = ("minmax", "entropy", "percentile")


def _method(name: str) -> object:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}
    if name not in table:
        raise NanotrtError(f"unknown calibration method '{name}': use {', '.join(CALIB_METHODS)}")
    return table[name]


def weight_matmuls(path: Path, skip_ffn_down: bool = False) -> list[str]:
    """MatMul/Gemm nodes with a constant weight: the dense layers. Activation x activation products
    (Q.K^T, attention x V) stay float. With ``skip_ffn_down`` the FFN down-projection (input: the GELU
    output, whose outliers wreck a per-tensor activation scale: in a development check on MiniLM-L6/CoLA
    it alone took a layer's relative error from ~0.07 to ~0.29) stays float too."""
    import onnx

    g = onnx.load(str(path)).graph
    shapes = {i.name: list(i.dims) for i in g.initializer}
    nodes = []
    for n in g.node:
        weights = [shapes[i] for i in n.input if i in shapes and len(shapes[i]) == 2]
        if n.op_type not in ("MatMul", "Gemm") or not weights:
            continue
        k, out = weights[0]
        if skip_ffn_down and n.op_type == "MatMul" and k > out:  # [intermediate, hidden]: down-projection
            continue
        nodes.append(n.name)
    return nodes


def quantize_static_qdq(src: Path, dst: Path, batches: list[Feeds], input_names: list[str], method: str = "minmax",
                        for_tensorrt: bool = False, skip_ffn_down: bool = True) -> bool:
    """Explicit QDQ INT8. For TensorRT: symmetric signed activations and weights (what its explicit
    quantization accepts). For ORT CPU: unsigned activations (U8S8, the fast x86 kernels)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    ort.set_default_logger_severity(3)

    extra: dict[str, object] = {"ActivationSymmetric": for_tensorrt, "WeightSymmetric": True}
    if method == "percentile":
        # Zero padding (needed to stack histogram batches) skews percentiles; in a development check on
        # MiniLM-L6/CoLA with 512 sentences it did worse than minmax (~0.23 vs ~0.07 on layer 4).
        extra["CalibPercentile"] = 99.999
    logging.getLogger().setLevel(logging.ERROR)  # ORT quantization logs per node and pre-processing hints
    nodes = weight_matmuls(src, skip_ffn_down)
    if not nodes:  # e.g. the embeddings graph: nothing worth quantizing
        shutil.copy2(src, dst)
        return False
    # Histogram calibrators stack batches: pad them to one length (zeros, mask 0).
    pad = method != "minmax"
    quantize_static(
        str(src), str(dst), FeedReader(batches, input_names, pad=pad),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm"],  # the FLOPs; LayerNorm/Softmax/GELU stay float
        nodes_to_quantize=nodes,
        per_channel=True,
        activation_type=QuantType.QInt8 if for_tensorrt else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=_method(method),
        extra_options=extra,
    )
    return True


def quantize_dynamic_int8(src: Path, dst: Path) -> bool:
    """Weights INT8 offline, activations quantized at run time per batch (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = weight_matmuls(src)
    if not nodes:
        shutil.copy2(src, dst)
        return False
    logging.getLogger().setLevel(logging.ERROR)  # ORT's pre-processing hint, as in quantize_static_qdq
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                     weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
    return True


def relative_error(ref_path: Path, test_path: Path, batches: list[Feeds], limit: int = 8) -> float:
    """Max over batches of ||test - ref|| / ||ref|| on the graph's own FP32 calibration inputs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(str(ref_path), so, providers=["CPUExecutionProvider"])
    test = ort.InferenceSession(str(test_path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in ref.get_inputs()]
    worst = 0.0
    step = max(1, len(batches) // limit)  # calibration batches are length-sorted: sample across lengths
    for b in batches[::step][:limit]:
        feeds = {k: b[k] for k in names}
        r = ref.run(None, feeds)[0].astype(np.float64)
        t = test.run(None, {k: feeds[k] for k in (i.name for i in test.get_inputs())})[0].astype(np.float64)
        worst = max(worst, float(np.linalg.norm(t - r)) / max(float(np.linalg.norm(r)), 1e-12))
    return worst
