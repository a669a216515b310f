"""Backends: one file each, imported lazily so the device path never pulls in torch or TensorRT."""

from __future__ import annotations

import importlib

from pipeline.errors import NanotrtError

from .base import Backend

_BACKENDS = {
    "onnxruntime": ("engines.onnxruntime", "OrtBackend"),
    "tensorrt": ("engines.tensorrt", "TrtBackend"),
    "torch": ("engines.torch_ref", "TorchBackend"),
}


def get_backend(name: str, **options: object) -> Backend:
    if name not in _BACKENDS:
        raise NanotrtError(f"unknown backend '{name}': use one of {', '.join(_BACKENDS)}")
    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls)(**options)  # type: ignore[no-any-return]


__all__ = ["Backend", "get_backend"]
