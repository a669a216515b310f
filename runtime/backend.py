"""The small interface every backend implements (Polygraphy's loader/runner split), and their registry.

Three calls: ``load`` turns a manifest graph entry into an engine (verifying the file; the engine's bytes are
the manifest's, which is what the residency cache budgets), ``run`` executes it on numpy feeds, ``release``
frees it. ``configure`` and ``close`` are optional hooks. The runner never knows which backend it drives.

Backends register themselves by name with a factory (``register_backend``): the device ones in
``nanotrt.engines`` (imported with the ``nanotrt`` package), the eager PyTorch reference in
``nanotrt.pipeline`` (offline side: registered when that package is imported, as the CLI does for
``--backend torch``). Factories import their module on first use, so the runtime never names the offline side
and never imports a heavy optional dependency it does not run. This module itself imports nothing heavy.
"""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nanotrt.runtime.errors import NanotrtError

if TYPE_CHECKING:
    import numpy as np
    from nanotrt.runtime.artifact import Manifest


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

    def prefetch_pays(self, manifest: Manifest, name: str) -> bool:
        """Whether loading ``name`` on the prefetch thread hides more than it costs (the residency cache skips
        the prefetch otherwise). A session build does; mapping a swap graph's weights does not (issue 21)."""
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def trim_heap() -> None:
    """Give freed memory back to the OS: glibc keeps freed arenas otherwise and RSS never drops.
    (No gc.collect here: engines are freed by refcount, and a full collection per swap costs ms.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass


BackendFactory = Callable[..., Backend]
_FACTORIES: dict[str, BackendFactory] = {}
# Backends that live on the offline side: what to install and import when one is asked for unregistered.
OFFLINE_BACKENDS = {"torch": "the PyTorch eager reference: install the 'export' extra (pip install "
                             "'nanotrt[export]') and import nanotrt.pipeline, which registers it (the CLI does)"}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``get_backend(name, **options)`` call ``factory(**options)``. Registering a name again replaces it."""
    _FACTORIES[name] = factory


def backend_names() -> list[str]:
    return list(_FACTORIES)


def get_backend(name: str, **options: object) -> Backend:
    factory = _FACTORIES.get(name)
    if factory is None:
        if name in OFFLINE_BACKENDS:
            raise NanotrtError(f"backend '{name}' is not registered in this process: it is {OFFLINE_BACKENDS[name]}")
        raise NanotrtError(f"unknown backend '{name}': use one of {', '.join(_FACTORIES)}")
    return factory(**options)


def check_threads(threads: int | None) -> int | None:
    """``threads`` for an intra-op pool: None (the library's default) or 1..4x the CPUs. More only adds
    threads fighting for the same cores (5000 took minutes to start and never finished on 2 cores)."""
    import os

    cap = 4 * (os.cpu_count() or 1)
    if threads is not None and not (isinstance(threads, int) and 1 <= threads <= cap):
        raise NanotrtError(f"threads={threads!r} is out of range: use 1..{cap} (4x this machine's "
                           f"{os.cpu_count()} CPUs), or leave it unset for the default")
    return threads
