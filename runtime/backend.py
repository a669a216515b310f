"""The small interface every backend implements (Polygraphy's loader/runner split), and their registry.

Three calls: ``load`` turns a manifest graph entry into an engine (verifying the file; the engine's bytes are
the manifest's, which is what the residency cache budgets), ``run`` executes it on numpy feeds, ``release``
frees it. ``configure`` and ``close`` are optional hooks. The runner never knows which backend it drives.

Backends live in ``nanotrt.engines`` (device side) and ``nanotrt.pipeline.torch_backend`` (the eager
reference, offline side); the registry names them by module path and imports them on first use, so the
device runtime never imports the offline side or a heavy optional dependency it does not run.
"""

from __future__ import annotations

import ctypes
import importlib
import sys
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError


class Backend(ABC):
    name: str = ""

    @abstractmethod
    def load(self, manifest: Manifest, name: str) -> Any: ...

    @abstractmethod
    def run(self, engine: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def release(self, engine: Any) -> None: ...

    def reserve(self, manifest: Manifest, names: list[str]) -> int:
        """Allocate the fixed working set these graphs need besides their engines (TensorRT: the shared
        scratch and I/O buffers) now, on the runner's thread; return its bytes (counted in the budget)."""
        return 0

    def configure(self, swapping: bool) -> None:  # noqa: B027 - optional hook
        """Told by the runner whether engines will be swapped (budget below the model) or stay resident: a
        swapped engine must hold no more than its manifest bytes."""

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def trim_heap() -> None:
    """Give freed memory back to the OS: glibc keeps freed arenas otherwise and RSS never drops.
    (No gc.collect here: engines are freed by refcount, and a full collection per swap costs ms.)"""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass


_BACKENDS = {
    "onnxruntime": ("nanotrt.engines.onnxruntime", "OrtBackend"),
    "tensorrt": ("nanotrt.engines.tensorrt", "TrtBackend"),
    "torch": ("nanotrt.pipeline.torch_backend", "TorchBackend"),
}


def get_backend(name: str, **options: object) -> Backend:
    if name not in _BACKENDS:
        raise NanotrtError(f"unknown backend '{name}': use one of {', '.join(_BACKENDS)}")
    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls)(**options)  # type: ignore[no-any-return]
