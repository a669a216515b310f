"""INT8 quantization through ONNX Runtime: static QDQ (calibrated) and dynamic, plus a per-graph error
measure used to keep sensitive graphs in higher precision; and the FP16 / Q-DQ graphs a strongly typed
TensorRT build parses."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from nanotrt.calibration.readers import FeedReader, Feeds
from nanotrt.engines.onnxruntime import library_sessions, session_options
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


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ONNX Runtime's quantizer logs per node through the *root* logger (module-level ``logging.info``),
    so there is no ORT logger to silence: raise the root level for the call only and restore it, with a
    NullHandler so that ``logging.warning`` does not ``basicConfig()`` the application's root logger."""
    root, null = logging.getLogger(), logging.NullHandler()
    level = root.level
    root.addHandler(null)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        root.removeHandler(null)


# TensorRT explicit quantization (its "Q/DQ placement recommendations"): quantize the inputs of the
# GEMMs only; never an output (a MatMul feeding its bias Add stays float, so TensorRT fuses bias and
# activation into the INT8 GEMM instead of re-quantizing); symmetric signed INT8 with zero points 0 for
# weights (per channel) and activations (per tensor); one Q/DQ pair per consumer. Biases stay float:
# ORT quantizes a Gemm's bias to INT32 by default, and TensorRT's IDequantizeLayer takes INT8/FP8/INT4
# inputs only, so every ramp (a Gemm with bias) failed to build (NVIDIA/TensorRT#3360, onnx-tensorrt#850).
TRT_QDQ_OPTIONS: dict[str, object] = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
    "DedicatedQDQPair": True,
    "QuantizeBias": False,
}


def quantize_static_qdq(src: Path, dst: Path, batches: list[Feeds], input_names: list[str], method: str = "minmax",
                        for_tensorrt: bool = False, skip_ffn_down: bool = True) -> bool:
    """Explicit QDQ INT8. For TensorRT: ``TRT_QDQ_OPTIONS`` and the residual stream kept float
    (``float_side_inputs``). For ORT CPU: unsigned activations (U8S8, the fast x86 kernels)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    ort.set_default_logger_severity(3)

    extra: dict[str, object] = dict(TRT_QDQ_OPTIONS) if for_tensorrt else {"WeightSymmetric": True}
    if method == "percentile":
        # Zero padding (needed to stack histogram batches) skews percentiles; in a development check on
        # MiniLM-L6/CoLA with 512 sentences it did worse than minmax (~0.23 vs ~0.07 on layer 4).
        extra["CalibPercentile"] = 99.999
    nodes = weight_matmuls(src, skip_ffn_down)
    if not nodes:  # e.g. the embeddings graph: nothing worth quantizing
        shutil.copy2(src, dst)
        return False
    # Histogram calibrators stack batches: pad them to one length (zeros, mask 0).
    pad = method != "minmax"
    with _quiet_quantizer(), library_sessions():  # its calibrator builds sessions of its own
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
    if for_tensorrt:
        float_side_inputs(dst)
    return True


def fold_weight_identities(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with every consumer of ``Identity(initializer)`` reading the initializer
    itself; returns how many Identity nodes went (nothing is written when none). The exporter routes
    ALBERT's shared layer weights to layers 2..N through such nodes, and the quantizer only quantizes
    MatMuls that read an initializer directly: ALBERT's one-graph INT8 would quantize layer 1 only."""
    import onnx

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name for i in g.initializer}
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input[0] in inits}
    if not alias:
        return 0
    keep = [n for n in g.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in keep:
        for k, name in enumerate(n.input):
            n.input[k] = alias.get(name, name)
    outputs = {o.name for o in g.output}
    for name in outputs & alias.keys():  # a graph output that was an Identity stays one
        keep.append(onnx.helper.make_node("Identity", [alias[name]], [name]))
    del g.node[:]
    g.node.extend(keep)
    onnx.save(model, str(dst))
    return len(alias)


def float_side_inputs(path: Path) -> int:
    """Give every consumer of an activation's Q/DQ pair that is not a GEMM (the residual Add, Shape) the
    float tensor back. ORT's DedicatedQDQPair splits pairs only among *quantized* consumers: a tensor with
    one GEMM consumer (the attention block's LayerNorm output) keeps one shared DequantizeLinear that also
    feeds the residual Add, which would push the residual stream through INT8. Returns the inputs rewired."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    rewired = 0
    for n in g.node:
        if n.op_type in ("MatMul", "Gemm", "QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(n.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear":  # activation pair (weights have no Q)
                n.input[i] = q.input[0]
                rewired += 1
    if rewired:
        g.ClearField("value_info")  # stale after rewiring; the parser and ORT re-infer
        onnx.save(model, str(path))
    return rewired


# TensorRT's parser warns that LayerNorm in FP16 after attention may overflow and suggests FP32 for it;
# the strongly typed FP16 graph therefore keeps LayerNormalization in FP32 (Casts around it).
TRT_FP16_KEEP_FP32 = ["LayerNormalization"]


# An FP16 scale needs QuantizeLinear/DequantizeLinear-19 (opset 13 takes FP32 scales only, and a strongly
# typed TensorRT network's DequantizeLinear outputs its scale's type).
QDQ_FP16_OPSET = 19


def convert_fp16(src: Path, dst: Path) -> None:
    """FP16 graph with FP32 inputs and outputs (casts at the boundary) for a strongly typed TensorRT
    build: no ORT fusions (TensorRT cannot parse com.microsoft ops); constants clamped to the FP16 range
    (the attention mask's large negative fill becomes -65504). A Q/DQ graph keeps its INT8 GEMMs and gets
    FP16 scales, so its DequantizeLinear outputs feed FP16 GEMMs and the rest runs as the FP16 graph."""
    import onnx
    from onnx import version_converter
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < QDQ_FP16_OPSET and any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        model = version_converter.convert_version(model, QDQ_FP16_OPSET)
    model = convert_float_to_float16(model, keep_io_types=True,
                                     op_block_list=[*DEFAULT_OP_BLOCK_LIST, *TRT_FP16_KEEP_FP32])
    onnx.save(model, str(dst))


def quantize_dynamic_int8(src: Path, dst: Path) -> bool:
    """Weights INT8 offline, activations quantized at run time per batch (no calibration data)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folded = dst.with_name(f".{dst.name}.folded.onnx")
    try:
        if fold_weight_identities(src, folded):
            src = folded
        nodes = weight_matmuls(src)
        if not nodes:
            shutil.copy2(src, dst)
            return False
        with _quiet_quantizer(), library_sessions():  # ORT's pre-processing hint, as in quantize_static_qdq
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                             weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
    finally:
        folded.unlink(missing_ok=True)
    return True


def _first_output(sess: object) -> Callable[[Feeds], np.ndarray]:
    def run(feeds: Feeds) -> np.ndarray:
        return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]  # type: ignore[attr-defined]

    return run


def relative_error(ref_path: Path, test: Path | Callable[[Feeds], np.ndarray], batches: list[Feeds],
                   limit: int = 8) -> float:
    """Max over batches of ||test - ref|| / ||ref|| (first output) on the graph's own FP32 calibration
    inputs. ``test``: another ONNX graph (run on ORT CPU like the reference), or any function from the
    feeds to the first output (a TensorRT plan: pipeline/trt_build.py)."""
    import onnxruntime as ort

    so = session_options(ort)
    ref = ort.InferenceSession(str(ref_path), so, providers=["CPUExecutionProvider"])
    run = _first_output(ort.InferenceSession(str(test), so, providers=["CPUExecutionProvider"])) \
        if isinstance(test, Path) else test
    names = [i.name for i in ref.get_inputs()]
    worst = 0.0
    step = max(1, len(batches) // limit)  # calibration batches are length-sorted: sample across lengths
    for b in batches[::step][:limit]:
        feeds = {k: b[k] for k in names}
        r = ref.run(None, feeds)[0].astype(np.float64)
        t = np.asarray(run(feeds)).astype(np.float64)
        worst = max(worst, float(np.linalg.norm(t - r)) / max(float(np.linalg.norm(r)), 1e-12))
    return worst
