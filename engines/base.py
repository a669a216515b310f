"""The small interface every backend implements (Polygraphy's loader/runner split, reduced to four calls).

``load`` turns a manifest graph entry into an engine (verifying the file), ``run`` executes it on numpy
feeds, ``release`` frees it, ``resident_bytes`` says what it holds. The runner never knows which backend
it drives. ``formats`` lists the manifest graph formats the backend can load.
"""

from __future__ import annotations

import ctypes
import sys
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from pipeline.artifact import Manifest


class Backend(ABC):
    name: str = ""
    formats: tuple[str, ...] = ()

    @abstractmethod
    def load(self, manifest: Manifest, name: str) -> Any: ...

    @abstractmethod
    def run(self, engine: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def release(self, engine: Any) -> None: ...

    def resident_bytes(self, engine: Any) -> int:
        return int(engine.nbytes)

    def variant_for(self, precision: str) -> str:
        """The manifest variant this backend runs at ``precision`` (fp32 exported graphs by default)."""
        return "fp32" if precision == "fp32" else f"ort-{precision}"

    def configure(self, swapping: bool) -> None:  # noqa: B027 - optional hook
        """Told by the runner whether engines will be swapped (budget below the model) or stay resident."""

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
