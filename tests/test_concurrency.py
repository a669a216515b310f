"""Concurrency: a Runner shared by 8 threads gives the serial results under a streaming budget (callers
wait on its lock), and its prefetch thread ends on close() and at interpreter exit without a hang or
a warning."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from conftest import TINY_ARTIFACT
from nanotrt.engines.onnxruntime import OrtBackend
from nanotrt.runtime.runner import Runner

THREADS, PER_THREAD = 8, 100
TEXTS = [f"sentence number {i} says {'good' if i % 3 else 'bad'} things about {'films' * (i % 4 + 1)}"
         for i in range(37)]


class BudgetCheckingBackend(OrtBackend):
    """Counts engine bytes held across all threads and records any moment they exceed the budget."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.budget, self.held, self.peak, self.lock = budget, 0, 0, threading.Lock()

    def load(self, manifest: Any, name: str) -> Any:
        e = super().load(manifest, name)
        with self.lock:
            self.held += e.nbytes
            self.peak = max(self.peak, self.held)
        return e

    def release(self, engine: Any) -> None:
        with self.lock:
            self.held -= engine.nbytes
        super().release(engine)


def test_eight_threads_match_serial_under_streaming_budget() -> None:
    art = TINY_ARTIFACT
    with Runner.from_artifact(art, exit="patience=1") as r:
        serial = {t: r.predict([t]) for t in TEXTS}
    budget = Runner.from_artifact(art, memory_budget="2layers").budget
    assert budget is not None
    backend = BudgetCheckingBackend(budget)
    runner = Runner(Runner.from_artifact(art).manifest, backend, memory_budget="2layers", exit="patience=1")

    def worker(k: int) -> list[tuple[str, Any]]:
        out = []
        for j in range(PER_THREAD):
            text = TEXTS[(k * 7 + j) % len(TEXTS)]
            # mixed entry points and batch sizes: both are serialized on the same lock
            out.append((text, runner.predict([text], batch_size=1 + j % 2)))
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        results = [x for chunk in pool.map(worker, range(THREADS)) for x in chunk]
    runner.close()
    assert len(results) == THREADS * PER_THREAD
    for text, res in results:
        ref = serial[text]
        assert res.exit_layers.tolist() == ref.exit_layers.tolist(), text
        np.testing.assert_allclose(res.logits, ref.logits, atol=1e-5)
    assert backend.peak <= budget, (backend.peak, budget)
    assert backend.held == 0  # everything released on close
    assert not [t for t in threading.enumerate() if t.name.startswith("nanotrt-prefetch")]


def test_close_waits_for_a_running_predict() -> None:
    """close() from another thread while predict runs: predict finishes normally, then the runner closes."""
    runner = Runner.from_artifact(TINY_ARTIFACT, memory_budget="1layer")
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(runner.predict, TEXTS * 3, None, 1)
        while not runner.cache.stats.loads:  # wait until it is really inside predict
            threading.Event().wait(0.001)
        runner.close()
        assert len(fut.result(timeout=120).predictions) == len(TEXTS) * 3
    assert not [t for t in threading.enumerate() if t.name.startswith("nanotrt-prefetch")]


@pytest.mark.parametrize("close", [True, False])
def test_interpreter_exit_with_runner_open_or_closed(close: bool) -> None:
    """An unclosed runner (prefetches possibly in flight) must not hang the interpreter or print a warning."""
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('always')\n"
        "from nanotrt.runtime.runner import Runner\n"
        f"r = Runner.from_artifact({str(TINY_ARTIFACT)!r}, memory_budget='1layer', prefetch=True)\n"
        "r.predict(['one text', 'and another one'], batch_size=1)\n"
        "r.cache.prefetch(3)\n"  # a load in flight at exit
        + ("r.close()\n" if close else "")
        + "print('done')\n"
    )
    p = subprocess.run([sys.executable, "-X", "dev", "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "done"
    assert p.stderr == "", p.stderr  # -X dev shows ResourceWarnings and unraisable exceptions


def test_runner_that_streamed_works_in_a_forked_child() -> None:
    """fork() after streaming: the child has no prefetch thread (and the lock may be held by a thread that is
    not there); the runner re-creates both and gives the parent's results instead of hanging."""
    code = (
        "import json, os, signal, sys\n"
        "from nanotrt.runtime.runner import Runner\n"
        f"texts = {TEXTS[:6]!r}\n"
        f"with Runner.from_artifact({str(TINY_ARTIFACT)!r}) as r:\n"
        "    budget = r.largest + max(r.acts.block([r.tokenizer([t])['input_ids'].shape]) for t in texts)\n"
        f"r = Runner.from_artifact({str(TINY_ARTIFACT)!r}, memory_budget=budget, prefetch=True)\n"
        "parent = r.predict(texts, mode='latency')\n"
        "assert r.cache.stats.releases and r.cache.stats.prefetches, 'the runner must stream'\n"
        "r.cache.prefetch(3)\n"  # a load in flight at the fork
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    signal.alarm(60)\n"  # a hang ends the child with SIGALRM instead of the test's timeout
        "    child = r.predict(texts, mode='latency')\n"
        "    ok = child.exit_layers.tolist() == parent.exit_layers.tolist() and child.stats.cache['prefetches'] > 0\n"
        "    r.close()\n"
        "    os._exit(0 if ok else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(json.dumps(os.waitstatus_to_exitcode(status)))\n"
        "r.close()\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "0", (p.stdout, p.stderr)  # -14: the child hung (SIGALRM)
