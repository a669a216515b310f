"""`nanotrt serve`: the Runner behind an HTTP JSON API, requests batched dynamically into
``Runner.predict`` so every sample of a batch still exits on its own.

Stack (chosen by measurement, benchmarks/results/serving.md): FastAPI on uvicorn in ONE process, with the
dynamic batcher of the `batched` library (an asyncio queue that hands up to ``max_batch_size`` samples,
waiting at most ``max_wait_ms``, to one call running in a worker thread). LitServe, measured on the same
artifact, runs the model in a separate inference process next to its API process: it served about 2x the
load at p95 <= 50 ms on 2 cores, but with +246 MB peak RSS over the Runner alone (this stack: +8 MB with
batching off), far over a 2-4 GB device's +60 MB target. On a cluster the same routes run under Ray Serve
with its own ``@serve.batch`` instead (nanotrt/serve_ray.py).

The Runner serializes its calls (a lock), so one Runner per process; one process per replica.

Device side: imports the runtime and the web stack only (no pipeline, no torch); the web stack is the
optional `serve` extra, imported lazily by ``create_app`` / ``serve_http``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.runner import Runner

log = logging.getLogger("nanotrt.serve")


@dataclass(frozen=True)
class Limits:
    """What one request may carry; past it the request is refused with 413 before any work."""

    max_texts: int = 64  # texts per request (a larger job: `nanotrt predict -f`, or the Ray Data recipe)
    max_chars: int = 20_000  # characters per text or pair (the model reads only max_length tokens of it)
    max_body: int = 4 << 20  # bytes of the JSON body


class BadRequest(NanotrtError):
    """A request the server refuses: HTTP ``status`` with the one-line ``str(self)``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Sample:
    text: str
    pair: str | None = None


Outcome = dict[str, Any] | BadRequest  # one sample's prediction, or why it was refused
Batcher = Callable[[list[Sample]], Awaitable[list[Outcome]]]  # samples of one request -> their outcomes


# --- requests ----------------------------------------------------------------------------------
def _strings(value: Any, key: str, limits: Limits) -> list[str]:
    if not isinstance(value, list) or not value:
        raise BadRequest(f'"{key}" must be a non-empty list of strings, e.g. {{"texts": ["a good film"]}}')
    if len(value) > limits.max_texts:
        raise BadRequest(f'"{key}" has {len(value)} items; this server takes at most {limits.max_texts} per request '
                         "(--max-texts): split the request", 413)
    for i, t in enumerate(value):
        if not isinstance(t, str):
            raise BadRequest(f"{key}[{i}] is a {type(t).__name__}, not a string: pass text")
        if not t.strip():
            raise BadRequest(f"{key}[{i}] is empty (or only whitespace): there is nothing to classify; "
                             "drop it or give it some text")
        if len(t) > limits.max_chars:
            raise BadRequest(f"{key}[{i}] has {len(t)} characters; this server takes at most {limits.max_chars} "
                             "(--max-chars; the model reads only its first tokens anyway): shorten it", 413)
    return value


def parse_request(body: bytes, limits: Limits) -> list[Sample]:
    """``{"texts": [...], "pairs": [...]?}`` -> samples; every problem is one BadRequest line."""
    if len(body) > limits.max_body:
        raise BadRequest(f"request body has {len(body)} bytes; this server takes at most {limits.max_body}: "
                         "send fewer or shorter texts", 413)
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"request body is not valid JSON ({e}): send "
                         '{"texts": ["..."], "pairs": ["..."]} with pairs optional') from None
    if not isinstance(doc, dict):
        raise BadRequest(f'request body is a JSON {type(doc).__name__}, not an object: send {{"texts": ["..."]}}')
    unknown = sorted(set(doc) - {"texts", "pairs"})
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(unknown)}: a request has \"texts\" and optional \"pairs\"")
    texts = _strings(doc.get("texts"), "texts", limits)
    if doc.get("pairs") is None:
        return [Sample(t) for t in texts]
    pairs = _strings(doc["pairs"], "pairs", limits)
    if len(pairs) != len(texts):
        raise BadRequest(f"got {len(texts)} texts but {len(pairs)} pairs: give one pair per text")
    return [Sample(t, p) for t, p in zip(texts, pairs, strict=True)]


# --- the model side ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ServeConfig:
    """Everything a server process (or a Ray replica) needs to build its own Runner; plain data, so it
    pickles to Ray workers."""

    artifact: str
    backend: str = "onnxruntime"
    memory_budget: str = "all"
    exit: str | None = None
    precision: str = "fp32"
    variant: str | None = None
    threads: int | None = None
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    limits: Limits = Limits()
    log_texts: bool = False

    def check(self) -> None:
        if self.max_batch_size < 1:
            raise NanotrtError("--max-batch-size must be >= 1 (1 = batching off)")
        if self.max_wait_ms < 0:
            raise NanotrtError("--max-wait-ms must be >= 0")
        if min(self.limits.max_texts, self.limits.max_chars, self.limits.max_body) < 1:
            raise NanotrtError("--max-texts and --max-chars must be >= 1")

    def service(self) -> Service:
        self.check()
        options: dict[str, Any] = {"threads": self.threads} if self.threads and self.backend == "onnxruntime" else {}
        runner = Runner.from_artifact(self.artifact, backend=self.backend, memory_budget=self.memory_budget,
                                      exit=self.exit, variant=self.variant, precision=self.precision, **options)
        return Service(runner, self)


class Service:
    """One Runner and what the routes need from it; stack-independent (FastAPI and Ray Serve share it)."""

    def __init__(self, runner: Runner, config: ServeConfig):
        config.check()
        self.runner, self.config, self.artifact = runner, config, config.artifact
        self.max_batch_size, self.max_wait_ms = config.max_batch_size, config.max_wait_ms
        self.limits, self.log_texts = config.limits, config.log_texts

    def predict_batch(self, samples: Sequence[Sample]) -> list[Outcome]:
        """One dynamic batch (samples of many requests) -> one outcome per sample, in order. Samples with and
        without a pair go to ``Runner.predict`` separately (a call takes pairs for all texts or none)."""
        out: list[Outcome | None] = [None] * len(samples)
        for paired in (False, True):
            idx = [i for i, s in enumerate(samples) if (s.pair is not None) == paired]
            if idx:
                for i, o in zip(idx, self._predict([samples[i] for i in idx]), strict=True):
                    out[i] = o
        return [o for o in out if o is not None]

    def _predict(self, samples: list[Sample]) -> list[Outcome]:
        texts = [s.text for s in samples]
        pairs = [s.pair for s in samples if s.pair is not None] if samples[0].pair is not None else None
        try:
            res = self.runner.predict(texts, pairs, batch_size=self.max_batch_size)
        except NanotrtError as e:
            if len(samples) > 1:  # one sample the budget cannot hold must not fail the others of the batch
                return [o for s in samples for o in self._predict([s])]
            return [BadRequest(str(e), 422)]
        return [dataclasses.asdict(p) for p in res.predictions]

    def health(self) -> dict[str, Any]:
        r = self.runner
        return {"status": "ok", "artifact": self.artifact, "variant": r.variant, "backend": r.backend.name,
                "memory_budget": r.describe_budget(), "streaming": r.streaming, "exit": r.policy.spec,
                "exit_source": r.exit_source,
                "labels": list(r.labels), "layers": r.n, "max_length": r.tokenizer.max_length,
                "max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait_ms,
                "limits": dataclasses.asdict(self.limits)}

    def respond(self, samples: list[Sample], outcomes: list[Outcome], t0: float) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of one request; logs one line, without the texts unless asked."""
        bad = next((o for o in outcomes if isinstance(o, BadRequest)), None)
        ms = 1000 * (time.perf_counter() - t0)
        if bad is not None:
            i = outcomes.index(bad)
            body: dict[str, Any] = {"error": f"texts[{i}]: {bad}" if len(samples) > 1 else str(bad)}
            status = bad.status
        else:
            body = {"predictions": outcomes, "variant": self.runner.variant}
            status = 200
        exits = [o["exit_layer"] for o in outcomes if isinstance(o, dict)]
        texts = f" texts={[s.text for s in samples]!r}" if self.log_texts else ""
        log.info("predict %d %d text(s) %.1f ms exits=%s%s", status, len(samples), ms, exits, texts)
        return status, body


def error_body(e: BadRequest) -> dict[str, str]:
    return {"error": str(e)}


# --- HTTP (FastAPI + uvicorn + batched) ---------------------------------------------------------
def make_batcher(service: Service) -> Batcher:
    """The serving stack's batching: `batched`'s asyncio processor collects samples across requests and runs
    ``predict_batch`` on them in a worker thread (the event loop keeps accepting meanwhile). Batching off
    (max_batch_size 1): each request goes straight to the Runner, whose lock serializes them."""
    import asyncio

    if service.max_batch_size == 1:
        async def direct(samples: list[Sample]) -> list[Outcome]:
            return await asyncio.to_thread(service.predict_batch, samples)
        return direct
    processor: Any = _batched().AsyncBatchProcessor(service.predict_batch, batch_size=service.max_batch_size,
                                                    timeout_ms=service.max_wait_ms)

    async def batched(samples: list[Sample]) -> list[Outcome]:
        return list(await processor(samples))
    return batched


def _batched() -> Any:
    """``batched.aio`` without torch: its tensor helpers import torch whenever it is installed (about 200 MB
    of RSS, measured), only to recognise tensors; samples here are strings. Hidden for the import only."""
    import importlib

    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
    try:
        return importlib.import_module("batched.aio")
    finally:
        if hide:
            del sys.modules["torch"]


def create_app(service: Service, batcher: Batcher | None = None) -> Any:
    """The FastAPI app: POST /predict, GET /health, OpenAPI docs at /docs. ``batcher``: how samples reach
    the Runner (default: `batched`; Ray Serve passes its ``@serve.batch`` method)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def one_predict_thread(app: Any) -> AsyncIterator[None]:
        # The batcher runs Runner.predict through the loop's default executor (asyncio.to_thread). The Runner
        # serializes its calls anyway, so one thread instead of min(32, cores + 4). With the default executor the
        # batching server measured +87 MB peak RSS over batching off (serving.md); suspected cause: batch
        # buffers spread over per-thread malloc arenas. Not yet re-measured with this single thread.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(1, thread_name_prefix="nanotrt-predict"))
        yield

    app = FastAPI(title="nanotrt", description="BERT-family classifier with per-sample early exit",
                  version="1", lifespan=one_predict_thread if batcher is None else None)
    run = batcher or make_batcher(service)
    doc_request = {"type": "object", "required": ["texts"], "additionalProperties": False, "properties": {
        "texts": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": service.limits.max_texts},
        "pairs": {"type": "array", "items": {"type": "string"}, "description": "second sentences, one per text"}}}

    async def predict(request: Request) -> JSONResponse:
        """Classify texts (with optional pairs): label, probabilities, exit layer and ramp predictions per
        text, and the variant that ran; equal to `Runner.predict` on the same texts."""
        t0 = time.perf_counter()
        try:
            samples = parse_request(await _read_body(request, service.limits.max_body), service.limits)
        except BadRequest as e:
            log.info("predict %d refused: %s", e.status, e)
            return JSONResponse(error_body(e), status_code=e.status)
        status, body = service.respond(samples, await run(samples), t0)
        return JSONResponse(body, status_code=status)

    # FastAPI reads the parameter's type to pass the raw Request; this module's postponed annotations
    # would leave it a string naming a class imported here, not at module level.
    predict.__annotations__ = {"request": Request, "return": JSONResponse}
    app.post("/predict", openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": doc_request}}}},
        responses={400: {"description": "bad request: one-line 'error'"},
                   413: {"description": "request over the server's limits"},
                   422: {"description": "a text the memory budget cannot hold"}})(predict)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # a bug or an engine failure: the client gets one line; Starlette re-raises it after this response,
        # so uvicorn writes the traceback to the server log
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        log.error("predict 500: %s: %s", type(exc).__name__, first)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}: {first}): see the server log"},
                            status_code=500)

    app.add_exception_handler(Exception, internal)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Artifact, variant, backend, memory budget, exit rule and batching settings of this server."""
        return service.health()

    return app


async def _read_body(request: Any, limit: int) -> bytes:
    """The body, refused at ``limit`` bytes before it is all read (Content-Length or a chunked stream)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"request body has {declared} bytes; this server takes at most {limit}: "
                         "send fewer or shorter texts", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"request body is over {limit} bytes: send fewer or shorter texts", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def serve_http(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, graceful_s: int = 30) -> None:
    """Serve until SIGINT/SIGTERM; then stop accepting, finish the requests in flight (at most
    ``graceful_s``), and close the Runner."""
    import uvicorn

    service = config.service()
    setup_logging()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, access_log=False,
                                           timeout_graceful_shutdown=graceful_s, log_config=None))
    log.info("serving %s on http://%s:%d %s", config.artifact, host, port, json.dumps(service.health()))
    # uvicorn re-raises the signal it stopped on once it has shut down; SIGTERM's default action would then
    # kill the process before the runner closes. Ctrl-C keeps Python's handler (KeyboardInterrupt: "interrupted").
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        service.runner.close()
        log.info("stopped; runner closed")


def setup_logging() -> None:
    """One stderr handler for the request log and uvicorn's own lines (uvicorn's dict config is skipped)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
