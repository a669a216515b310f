"""Anonymous vs file-backed memory of this process, for the memory benchmarks.

VmHWM (the kernel's peak RSS) adds both kinds. On a device only anonymous memory (RssAnon: heap, arenas,
activations, copies of weights) is memory the kernel cannot give back; clean file-backed pages (RssFile:
mapped weight files, shared libraries) it drops under pressure and re-reads when touched. The kernel keeps no
peak of either, so ``Peaks`` samples /proc/self/status on a thread (every ``interval`` seconds) while a
measurement runs.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from nanotrt.runtime.profile import proc_status_bytes


def status() -> dict[str, int]:
    """RssAnon, RssFile and VmHWM now, in bytes (one read of /proc/self/status)."""
    from pathlib import Path

    out = {"RssAnon": 0, "RssFile": 0, "VmHWM": 0}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = line.split(":", 1)[0]
            if key in out:
                out[key] = int(line.split()[1]) * 1024
    except OSError:
        out["VmHWM"] = proc_status_bytes("VmHWM")
    return out


class Peaks:
    """``with Peaks() as p: ...`` then ``p.result()``: peak RssAnon, peak RssFile (sampled) and VmHWM."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.anon = self.file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="memstat")

    def _sample(self) -> None:
        s = status()
        self.anon, self.file = max(self.anon, s["RssAnon"]), max(self.file, s["RssFile"])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Peaks:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def result(self) -> dict[str, Any]:
        return {"peak_anon": self.anon, "peak_file": self.file, "vmhwm": status()["VmHWM"]}
