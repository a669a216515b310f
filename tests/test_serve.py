"""`nanotrt serve`: a real uvicorn server on 127.0.0.1 (ephemeral port) in front of the committed tiny
artifact. Concurrent mixed requests get exactly what Runner.predict gives on the same texts (none lost,
none duplicated), bad requests get a 4xx with one line, a text the budget cannot hold is refused without
failing the others of its batch, shutdown finishes what is in flight, logs carry no texts by default."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from conftest import TINY_ARTIFACT

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("batched")

from nanotrt.runtime.runner import Runner  # noqa: E402

from nanotrt.serve import Limits, ServeConfig, Service, create_app  # noqa: E402

EXIT = "patience=1"  # exits at different layers on the tiny random model: per-sample exits are exercised
WORDS = "good bad film rain quick fox lazy dog sentence friend today long short".split()


def mixed_requests(n: int) -> list[dict[str, Any]]:
    """n requests of 1-4 texts of 1-40 words, every third one with pairs; texts unique across requests."""
    reqs = []
    for i in range(n):
        k = 1 + i % 4
        texts = [f"request {i} text {j}: " + " ".join(WORDS[(i * 7 + j * 3 + w) % len(WORDS)]
                                                     for w in range(1 + (i * 13 + j * 5) % 40)) for j in range(k)]
        req: dict[str, Any] = {"texts": texts}
        if i % 3 == 0:
            req["pairs"] = [f"pair {i}.{j} " + WORDS[(i + j) % len(WORDS)] for j in range(k)]
        reqs.append(req)
    return reqs


@contextmanager
def serving(config: ServeConfig, service: Service | None = None) -> Iterator[tuple[int, Any, Service]]:
    """A uvicorn server in a thread on 127.0.0.1:<free port>; yields (port, server, service)."""
    import uvicorn

    service = service or config.service()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service), access_log=False, log_config=None,
                                           timeout_graceful_shutdown=30))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1], server, service
    finally:
        server.should_exit = True
        thread.join(30)
        service.runner.close()
        sock.close()


def call(port: int, method: str, path: str, body: bytes | dict[str, Any] | None = None,
         conn: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, Any]]:
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    c.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    raw = r.read()
    if conn is None:
        c.close()
    return r.status, json.loads(raw)


def load(port: int, reqs: list[dict[str, Any]], clients: int = 16) -> list[tuple[int, dict[str, Any]]]:
    """Send ``reqs`` from ``clients`` threads, each on its own keep-alive connection; results in order."""
    out: list[Any] = [None] * len(reqs)

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for i in range(k, len(reqs), clients):
            out[i] = call(port, "POST", "/predict", reqs[i], conn)
        conn.close()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return out


def reference(reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runner.predict on the same texts (pairs and singles in their own calls), one dict per text."""
    import dataclasses

    flat: list[dict[str, Any]] = []
    with Runner.from_artifact(TINY_ARTIFACT, exit=EXIT) as r:
        for paired in (False, True):
            rows = [(t, p) for q in reqs if ("pairs" in q) == paired
                    for t, p in zip(q["texts"], q.get("pairs", [None] * len(q["texts"])), strict=True)]
            res = r.predict([t for t, _ in rows], [p for _, p in rows] if paired else None, batch_size=8)
            flat += [{"key": (t, p), **dataclasses.asdict(x)} for (t, p), x in zip(rows, res.predictions, strict=True)]
    return flat


def check_same_as_runner(reqs: list[dict[str, Any]], got: list[tuple[int, dict[str, Any]]]) -> None:
    ref = {row.pop("key"): row for row in reference(reqs)}
    seen = set()
    assert len(got) == len(reqs)  # none lost
    for q, (status, body) in zip(reqs, got, strict=True):
        assert status == 200, body
        assert body["variant"] == "fp32"
        keys = list(zip(q["texts"], q.get("pairs", [None] * len(q["texts"])), strict=True))
        assert len(body["predictions"]) == len(keys)  # one answer per text, none duplicated
        for key, p in zip(keys, body["predictions"], strict=True):
            want = ref[key]
            assert (p["label"], p["label_id"], p["exit_layer"], p["ramp_preds"]) == \
                   (want["label"], want["label_id"], want["exit_layer"], want["ramp_preds"]), key
            assert p["probs"] == pytest.approx(want["probs"], abs=1e-5)
            seen.add(key)
    assert len(seen) == sum(len(q["texts"]) for q in reqs)


def run_load(n: int, max_batch_size: int = 8) -> None:
    reqs = mixed_requests(n)
    cfg = ServeConfig(str(TINY_ARTIFACT), exit=EXIT, max_batch_size=max_batch_size, max_wait_ms=5)
    with serving(cfg) as (port, _, service):
        got = load(port, reqs)
    check_same_as_runner(reqs, got)
    assert {o["exit_layer"] for _, b in got for o in b["predictions"]} != {service.runner.n}  # early exits happened


def test_200_mixed_requests_from_16_clients_equal_runner_predict() -> None:
    run_load(200)


@pytest.mark.slow
def test_1000_mixed_requests_from_16_clients_equal_runner_predict() -> None:
    run_load(1000)


def test_requests_are_batched_across_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dynamic batcher really hands samples of several requests to one Runner.predict call."""
    sizes: list[int] = []
    threads: set[str] = set()
    real = Service.predict_batch

    def spy(self: Service, samples: Any) -> Any:
        sizes.append(len(samples))
        threads.add(threading.current_thread().name)
        return real(self, samples)

    monkeypatch.setattr(Service, "predict_batch", spy)
    reqs = [{"texts": [f"single sentence number {i}"]} for i in range(64)]
    with serving(ServeConfig(str(TINY_ARTIFACT), exit=EXIT, max_batch_size=16, max_wait_ms=20)) as (port, _, _):
        got = load(port, reqs)
    assert all(s == 200 for s, _ in got)
    assert sum(sizes) == 64 and max(sizes) > 1 and max(sizes) <= 16, sizes
    assert len(threads) == 1 and threads.pop().startswith("nanotrt-predict")  # one predict thread


BAD = [
    (b"not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "not an object"),
    ({"text": ["x"]}, 400, "unknown field(s) text"),
    ({"texts": "one string"}, 400, "non-empty list of strings"),
    ({"texts": []}, 400, "non-empty list of strings"),
    ({"texts": ["fine", 3]}, 400, "texts[1] is a int, not a string"),
    ({"texts": ["fine", "   "]}, 400, "texts[1] is empty"),
    ({"texts": ["a", "b"], "pairs": ["c"]}, 400, "got 2 texts but 1 pairs"),
    ({"texts": ["x"] * 9}, 413, "at most 8 per request"),
    ({"texts": ["y" * 501]}, 413, "at most 500 (--max-chars"),
    ({"texts": ["z " * 4000]}, 413, "request body has"),
]


def test_bad_requests_get_4xx_with_one_line() -> None:
    cfg = ServeConfig(str(TINY_ARTIFACT), exit=EXIT, limits=Limits(max_texts=8, max_chars=500, max_body=4000))
    with serving(cfg) as (port, _, _):
        for body, status, words in BAD:
            got, doc = call(port, "POST", "/predict", body)
            assert (got, list(doc)) == (status, ["error"]), (body, doc)
            assert words in doc["error"] and "\n" not in doc["error"] and "Traceback" not in doc["error"]
        assert call(port, "POST", "/predict", {"texts": ["still serving"]})[0] == 200


def test_engine_failure_is_a_one_line_500_and_the_server_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = Runner.predict

    def flaky(self: Runner, *a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("ORT says: bad things\nsecond line")
        return real(self, *a, **k)

    monkeypatch.setattr(Runner, "predict", flaky)
    with serving(ServeConfig(str(TINY_ARTIFACT), exit=EXIT)) as (port, _, _):
        status, body = call(port, "POST", "/predict", {"texts": ["boom"]})
        assert status == 500 and body == {"error": "internal error (RuntimeError: ORT says: bad things): "
                                                   "see the server log"}
        assert call(port, "POST", "/predict", {"texts": ["fine again"]})[0] == 200


def test_text_over_the_budget_is_refused_and_its_batch_mates_still_answered() -> None:
    probe = Runner.from_artifact(TINY_ARTIFACT)
    short = probe.tokenizer(["a short one"])["input_ids"].shape[1]
    budget = probe._minimum(short + 4)  # holds short texts, not a 100-token one
    probe.close()
    cfg = ServeConfig(str(TINY_ARTIFACT), memory_budget=str(budget), exit=EXIT, max_batch_size=16, max_wait_ms=50)
    long = " ".join(["word"] * 100)
    reqs = [{"texts": ["a short one"]}, {"texts": [long]}, {"texts": ["a short one", "tiny"]}] * 3
    with serving(cfg) as (port, _, _):
        got = load(port, reqs, clients=9)  # all in flight together: one dynamic batch mixes them
    for q, (status, body) in zip(reqs, got, strict=True):
        if long in q["texts"]:
            assert status == 422 and "memory budget" in body["error"] and "use at least" in body["error"], body
        else:
            assert status == 200 and len(body["predictions"]) == len(q["texts"]), body


def test_health_reports_artifact_variant_budget_and_exit() -> None:
    with serving(ServeConfig(str(TINY_ARTIFACT), memory_budget="2layers", exit="patience=2")) as (port, _, service):
        status, h = call(port, "GET", "/health")
        assert status == 200
        assert (h["artifact"], h["variant"], h["exit"]) == (str(TINY_ARTIFACT), "fp32", "patience=2")
        assert h["memory_budget"] == service.runner.describe_budget() != "all" and h["streaming"] is True
        status, spec = call(port, "GET", "/openapi.json")
        assert status == 200 and {"/predict", "/health"} <= set(spec["paths"])


def test_shutdown_finishes_requests_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """should_exit (what SIGTERM sets) while a batch is running: the server waits, every client gets its
    answer, then the runner closes."""
    entered, gate = threading.Event(), threading.Event()
    real = Service.predict_batch

    def held(self: Service, samples: Any) -> Any:
        entered.set()
        gate.wait(30)
        return real(self, samples)

    monkeypatch.setattr(Service, "predict_batch", held)
    reqs = [{"texts": [f"in flight {i}"]} for i in range(8)]
    with serving(ServeConfig(str(TINY_ARTIFACT), exit=EXIT, max_wait_ms=1)) as (port, server, _), \
            ThreadPoolExecutor(1) as pool:
        fut = pool.submit(load, port, reqs, 8)
        assert entered.wait(30)
        time.sleep(0.2)  # the other requests are queued behind the running batch
        server.should_exit = True
        time.sleep(0.3)
        assert not fut.done()  # still waiting for the batch, not cut off
        gate.set()
        got = fut.result(60)
    assert [s for s, _ in got] == [200] * 8


def test_request_log_has_no_texts_unless_asked(caplog: pytest.LogCaptureFixture) -> None:
    secret = "my private sentence"
    for log_texts in (False, True):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="nanotrt.serve"), \
                serving(ServeConfig(str(TINY_ARTIFACT), exit=EXIT, log_texts=log_texts)) as (port, _, _):
            assert call(port, "POST", "/predict", {"texts": [secret]})[0] == 200
        lines = [r.getMessage() for r in caplog.records if r.name == "nanotrt.serve"]
        assert any("predict 200 1 text(s)" in m for m in lines), lines
        assert any(secret in m for m in lines) == log_texts, lines


def test_cli_serve_sigterm_exits_cleanly(tmp_path: Any) -> None:
    """The real command: serves, answers, and on SIGTERM stops with status 0 after closing the runner."""
    import signal

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    p = subprocess.Popen([sys.executable, "-m", "nanotrt", "serve", str(TINY_ARTIFACT), "--port", str(port),
                          "--exit", EXIT], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = call(port, "POST", "/predict", {"texts": ["a good film"]})
                break
            except OSError:
                assert p.poll() is None and time.monotonic() < deadline, "server did not come up"
                time.sleep(0.2)
        assert status == 200 and body["predictions"][0]["label"] in ("negative", "positive")
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err
    assert "runner closed" in err and "Traceback" not in err and "a good film" not in err


@pytest.mark.parametrize(("blocked", "args", "extra"), [("fastapi", [], "serve"), ("ray", ["--ray"], "ray")])
def test_serve_without_the_extra_is_one_line(blocked: str, args: list[str], extra: str, tmp_path: Any) -> None:
    boot = (
        "import sys, importlib.util\n"
        "_real = importlib.util.find_spec\n"
        f"importlib.util.find_spec = lambda n, *a: None if n.split('.')[0] == {blocked!r} else _real(n, *a)\n"
        "from nanotrt.cli import main\n"
        f"sys.argv = ['nanotrt', 'serve', {str(TINY_ARTIFACT)!r}, *{args!r}]\n"
        "main()\n"
    )
    p = subprocess.run([sys.executable, "-c", boot], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    what = "`nanotrt serve --ray`" if args else "`nanotrt serve`"
    assert p.stderr.strip() == (f"error: {what} needs the '{extra}' extra ({blocked} is not installed): "
                                f"pip install 'nanotrt[{extra}]'")


def test_bad_settings_are_one_line_errors() -> None:
    p = subprocess.run([sys.executable, "-m", "nanotrt", "serve", str(TINY_ARTIFACT), "--max-batch-size", "0"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip() == "error: --max-batch-size must be >= 1 (1 = batching off)"


def test_server_loads_no_offline_stack() -> None:
    """The serving process stays a device process: no torch (`batched` would import it when installed), no
    transformers, no pipeline."""
    code = (
        "import sys\n"
        "from nanotrt.serve import ServeConfig, create_app\n"
        f"create_app(ServeConfig({str(TINY_ARTIFACT)!r}).service())\n"
        "heavy = ('torch', 'transformers', 'onnx', 'polygraphy', 'matplotlib', 'scipy')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "             or m.startswith(('nanotrt.pipeline', 'nanotrt.calibration'))))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"
