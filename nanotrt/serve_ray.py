"""Ray: the `nanotrt serve` app on Ray Serve replicas, and the Ray Data recipe for a large file.

- ``deployment(config, replicas)``: the same FastAPI routes as `nanotrt serve` (nanotrt/serve.py), built on
  every replica around its own Runner; samples of concurrent requests are batched by Ray Serve's own
  ``@serve.batch`` and run in a worker thread, so each sample exits on its own as in ``Runner.predict``.
- ``Classifier``: a callable class for ``Dataset.map_batches`` (one Runner per actor), and
  ``classify_file`` that reads a text file (one text per line, TAB before an optional pair) and classifies
  it in parallel.

What Ray guarantees when a replica dies (Ray 2.x): the controller restarts it and routes new requests to
the live replicas; a request that was running on the dead replica fails (HTTP 500 from the proxy), Ray
does not retry it. Predictions are idempotent, so clients retry (tests/test_serve_ray.py kills a replica
mid-run and shows every request answered once retried, with the same predictions).

Optional extra `ray` (imported lazily; nothing here runs in a core install).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.runner import Runner
from nanotrt.serve import Outcome, Sample, ServeConfig, create_app, setup_logging

APP_NAME = "nanotrt"


def deployment(config: ServeConfig, replicas: int = 1, num_cpus: float = 1.0) -> Any:
    """A bound Ray Serve application: ``replicas`` copies, each with one Runner and ``num_cpus`` cores."""
    from ray import serve

    config.check()
    if replicas < 1:
        raise NanotrtError("--replicas must be >= 1")

    @serve.deployment(name="nanotrt", num_replicas=replicas, ray_actor_options={"num_cpus": num_cpus},
                      max_ongoing_requests=max(100, 4 * config.max_batch_size))
    @serve.ingress()
    class NanotrtReplica:
        def __init__(self, cfg: ServeConfig):
            setup_logging()
            self.service = cfg.service()
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="nanotrt-predict")  # as nanotrt serve
            batching: Any = self.sample  # @serve.batch's handle: the settings come from the command line
            batching.set_max_batch_size(cfg.max_batch_size)
            batching.set_batch_wait_timeout_s(cfg.max_wait_ms / 1000)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def sample(self, samples: list[Sample]) -> list[Outcome]:
            # in a thread: the replica's event loop keeps taking requests while the batch runs
            return await asyncio.get_running_loop().run_in_executor(self.executor, self.service.predict_batch, samples)

        async def samples(self, samples: list[Sample]) -> list[Outcome]:
            return list(await asyncio.gather(*(self.sample(s) for s in samples)))

        def __serve_build_asgi_app__(self) -> Any:
            return create_app(self.service, self.samples)

        def __del__(self) -> None:
            self.service.runner.close()

    bound: Any = NanotrtReplica  # a ray.serve Deployment once decorated
    return bound.bind(config)


def serve_on_ray(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1) -> None:
    """Start (or join, with RAY_ADDRESS) Ray, deploy, and block until Ctrl-C; then shut Serve down, which
    lets the replicas finish the requests they hold."""
    import ray
    from ray import serve

    app = deployment(config, replicas)
    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=True)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=True)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


# --- Ray Data recipe -----------------------------------------------------------------------------
class Classifier:
    """``Dataset.map_batches(Classifier, fn_constructor_kwargs={"artifact": ...}, concurrency=N)``: each actor
    builds one Runner; a batch with a ``text`` column (and optionally ``pair``) gets label, score, exit_layer
    columns; a row's result equals ``Runner.predict`` on its text."""

    def __init__(self, artifact: str, memory_budget: str = "all", exit: str | None = None,
                 precision: str = "fp32", batch_size: int = 32, threads: int | None = None):
        options: dict[str, Any] = {"threads": threads} if threads else {}
        self.runner = Runner.from_artifact(artifact, memory_budget=memory_budget, exit=exit, precision=precision,
                                           **options)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        pairs = [str(p) for p in batch["pair"]] if "pair" in batch else None
        res = self.runner.predict(texts, pairs, batch_size=self.batch_size)
        p = res.predictions
        return {**batch, "label": [x.label for x in p], "score": [x.score for x in p],
                "exit_layer": [x.exit_layer for x in p]}


def read_lines(path: str | Path) -> list[dict[str, str]]:
    """Rows of a text file: one text per line, TAB before an optional pair; empty lines skipped."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            text, _, pair = line.partition("\t")
            rows.append({"text": text, "pair": pair} if pair else {"text": text})
    if len({len(r) for r in rows}) > 1:
        raise NanotrtError(f"{path}: some lines have a TAB-separated pair and some do not: give every line a pair, "
                           "or none")
    return rows


def classify_file(path: str | Path, artifact: str, actors: int = 2, batch_size: int = 32, **runner: Any) -> Any:
    """The recipe: read ``path`` into a Ray Dataset, classify it with ``actors`` Runner actors, return the
    Dataset (``.write_json(dir)``, ``.to_pandas()``, ``.take_all()``), rows in the file's order."""
    import ray

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.from_items(read_lines(path))
    return ds.map_batches(Classifier, fn_constructor_kwargs={"artifact": str(artifact), "batch_size": batch_size,
                                                             **runner},
                          batch_size=batch_size, concurrency=actors, batch_format="numpy")
