"""Device-side backends, one file each (ONNX Runtime, TensorRT), registered by name in
``nanotrt.runtime.backend``; each module is imported only when its backend is made."""

from __future__ import annotations

from typing import Any

from nanotrt.runtime.backend import Backend, register_backend


def _onnxruntime(**options: Any) -> Backend:
    from nanotrt.engines.onnxruntime import OrtBackend

    return OrtBackend(**options)


def _tensorrt(**options: Any) -> Backend:
    from nanotrt.engines.tensorrt import TrtBackend

    return TrtBackend(**options)


register_backend("onnxruntime", _onnxruntime)
register_backend("tensorrt", _tensorrt)
