"""`nanotrt serve --ray` and the Ray Data recipe on a local Ray (2 CPUs, 127.0.0.1 only): two replicas
answer 1,000 mixed requests from 16 clients with Runner.predict's predictions; a replica killed mid-run
loses no request once clients retry what Ray reports failed (Ray restarts the replica, it does not retry
the requests that were on it); map_batches with one Runner per actor equals Runner.predict.

Slow (Ray starts in ~10-20 s and replicas load their Runners): run with `pytest -m slow`."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_ARTIFACT
from test_serve import EXIT, check_same_as_runner, mixed_requests

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

from nanotrt.runtime.runner import Runner  # noqa: E402

from nanotrt.serve import ServeConfig  # noqa: E402
from nanotrt.serve_ray import APP_NAME, classify_file, deployment  # noqa: E402

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"NANOTRT_ORT_THREAD_POOL": "session"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def two_replicas(local_ray: None) -> Iterator[int]:
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = deployment(ServeConfig(str(TINY_ARTIFACT), exit=EXIT, max_batch_size=8, max_wait_ms=5), replicas=2,
                     num_cpus=0.5)
    serve.run(app, name=APP_NAME, route_prefix="/")
    yield port
    serve.shutdown()


class Retrying:
    """A client that retries on a broken connection or a 5xx, as Ray's docs advise (predictions are
    idempotent); counts the retries."""

    def __init__(self, port: int):
        self.port, self.retries, self.lock = port, 0, threading.Lock()
        self.failures: Counter[str] = Counter()  # what the failed tries got: an HTTP status or an exception

    def post(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        for _ in range(20):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                c.request("POST", "/predict", body=json.dumps(body), headers={"Content-Type": "application/json"})
                r = c.getresponse()
                status, raw = r.status, r.read()
                c.close()
                if status < 500:
                    return status, json.loads(raw)
                failure = f"HTTP {status}"
            except (OSError, http.client.HTTPException) as e:
                failure = type(e).__name__
            with self.lock:
                self.retries += 1
                self.failures[failure] += 1
            time.sleep(0.2)
        raise AssertionError(f"no answer after 20 tries: {body}")

    def load(self, reqs: list[dict[str, Any]], clients: int = 16) -> list[tuple[int, dict[str, Any]]]:
        out: list[Any] = [None] * len(reqs)

        def client(k: int) -> None:
            for i in range(k, len(reqs), clients):
                out[i] = self.post(reqs[i])

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        return out


def test_two_replicas_answer_1000_requests_like_runner_predict(two_replicas: int) -> None:
    reqs = mixed_requests(1000)
    client = Retrying(two_replicas)
    got = client.load(reqs)
    check_same_as_runner(reqs, got)
    assert client.retries == 0


def test_replica_killed_mid_run_loses_no_request(two_replicas: int) -> None:
    reqs = mixed_requests(600)
    client = Retrying(two_replicas)
    names = _replica_actors()
    assert len(names) == 2, names
    victim = ray.get_actor(names[0], namespace="serve")
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(client.load, reqs)
        time.sleep(2.0)
        assert not fut.done()
        ray.kill(victim, no_restart=False)
        got = fut.result(600)
    check_same_as_runner(reqs, got)  # every request answered once, same predictions
    print(f"replica {names[0]} killed mid-run: {client.retries} request(s) failed "
          f"({dict(client.failures)}) and were retried by the client")
    deadline = time.monotonic() + 120
    while names[0] in _replica_actors() or len(_replica_actors()) < 2:  # Ray replaced the dead replica
        assert time.monotonic() < deadline, _replica_actors()
        time.sleep(0.5)


def _replica_actors() -> list[str]:
    """Names of the live replica actors (Ray's own listing; the state API would need the dashboard)."""
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::") and "nanotrt" in a["name"]]


def test_ray_data_recipe_equals_runner_predict(local_ray: None, tmp_path: Path) -> None:
    texts = [f"line {i}: " + " ".join(["good", "bad", "film", "rain"][(i * j) % 4] for j in range(1 + i % 30))
             for i in range(120)]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(texts) + "\n")
    rows = classify_file(path, str(TINY_ARTIFACT), actors=2, batch_size=16, exit=EXIT).take_all()
    with Runner.from_artifact(TINY_ARTIFACT, exit=EXIT) as r:
        ref = r.predict(texts, batch_size=16).predictions
    assert [row["text"] for row in rows] == texts
    assert [(row["label"], int(row["exit_layer"])) for row in rows] == [(p.label, p.exit_layer) for p in ref]
    assert [float(row["score"]) for row in rows] == pytest.approx([p.score for p in ref], abs=1e-5)
