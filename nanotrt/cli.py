"""The `nanotrt` command line: thin typer commands over the library.

Errors the user can fix (NanotrtError) print as one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from nanotrt.extras import extra_for_module, missing_message, require
from nanotrt.predict_io import Counts, Row, arg_rows, check_finite, file_rows, json_line, plain_line
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import DISK_FULL

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Per-layer engines, memory-budget streaming and early exit for BERT-family classifiers.")


def _out(msg: str) -> None:
    typer.echo(msg)


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(help="local HF model dir or nanotrt checkpoint")],
    out: Annotated[Path, typer.Option("-o", "--out", help="artifact dir to write")],
    max_length: Annotated[int, typer.Option(help="tokenizer truncation length stored in the artifact")] = 128,
    pooling: Annotated[str | None, typer.Option(help="ramp pooling for a plain HF model: cls or mean")] = None,
    num_labels: Annotated[int | None, typer.Option(help="labels for a plain HF model (1 = regression)")] = None,
    torch_reference: Annotated[bool, typer.Option(help="keep the PyTorch checkpoint for the torch backend")] = True,
    whole: Annotated[bool, typer.Option(help="also export the whole model as one graph (bench baseline)")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace -o even if it is a folder with files that is not "
                                                        "an artifact (never without: nothing of yours is deleted)")] = False,
) -> None:
    """Cut a model into embeddings / layer / ramp ONNX graphs plus manifest.json."""
    require("export", "`nanotrt export`")
    from nanotrt.pipeline.export import export_model, is_artifact
    from nanotrt.pipeline.model import load_model
    from nanotrt.runtime.fsutil import check_output_dir

    check_output_dir(out, is_artifact, force, "nanotrt artifact", keep=(model_dir,))  # before loading the model
    model = load_model(model_dir, num_labels=num_labels, pooling=pooling)
    export_model(model_dir, out, max_length=max_length, model=model, include_checkpoint=torch_reference, whole=whole,
                 force=force)


@app.command()
def train(
    task: Annotated[str, typer.Option(help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli")],
    model: Annotated[Path, typer.Option(help="local HF model dir (or nanotrt checkpoint)")],
    out: Annotated[Path, typer.Option("-o", "--out", help="checkpoint dir to write")],
    method: Annotated[str, typer.Option(help="pabee (joint, weighted) or deebert (two-stage)")] = "pabee",
    epochs: Annotated[float, typer.Option()] = 3.0,
    batch_size: Annotated[int, typer.Option()] = 32,
    lr: Annotated[float, typer.Option(help="peak learning rate (linear warm-up and decay)")] = 1e-4,
    warmup: Annotated[float, typer.Option(help="warm-up fraction of steps")] = 0.1,
    max_length: Annotated[int, typer.Option()] = 128,
    seed: Annotated[int, typer.Option()] = 42,
    limit: Annotated[int | None, typer.Option(help="use only the first N train examples")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="use only the first N dev examples")] = None,
    grad_accum: Annotated[int, typer.Option(help="gradient accumulation steps")] = 1,
    pooling: Annotated[str | None, typer.Option(help="ramp pooling: cls or mean (default: the model's own)")] = None,
    data_dir: Annotated[str | None, typer.Option(help="GLUE dir (default $NANOTRT_GLUE_DIR or ../shared/data/glue)")] = None,
    distill: Annotated[bool, typer.Option("--distill", help="ramps also learn the final ramp's softened predictions")] = False,
    distill_temperature: Annotated[float, typer.Option(help="softmax temperature of --distill")] = 2.0,
    distill_weight: Annotated[float, typer.Option(help="weight of the distillation term, 0..1")] = 0.5,
    compute_penalty: Annotated[float | None, typer.Option(help="train halting heads; cost per full depth (e.g. 0.03-0.3); enables --exit learned=P")] = None,
    holdout: Annotated[int, typer.Option(help="train rows kept out of training for `nanotrt calibrate-exit`")] = 0,
    device: Annotated[str, typer.Option(help="auto (cuda if available) | cpu | cuda")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="replace -o even if it is a folder with files that is not "
                                                        "a nanotrt checkpoint")] = False,
) -> None:
    """Train off-ramps on a GLUE task; prints and saves the dev metric of every ramp."""
    require("train", "`nanotrt train`")
    from nanotrt.runtime.fsutil import check_output_dir

    check_output_dir(out, lambda d: (d / "nanotrt.json").is_file(), force, "nanotrt checkpoint", keep=(model,))
    from nanotrt.pipeline.train import TrainConfig, print_ramp_table
    from nanotrt.pipeline.train import train as run_train

    cfg = TrainConfig(task=task, method=method, epochs=epochs, batch_size=batch_size, lr=lr, warmup=warmup,
                      max_length=max_length, seed=seed, limit=limit, eval_limit=eval_limit,
                      grad_accum=grad_accum, pooling=pooling, data_dir=data_dir, distill=distill,
                      distill_temperature=distill_temperature, distill_weight=distill_weight,
                      compute_penalty=compute_penalty, holdout=holdout, device=device)
    print_ramp_table(run_train(model, out, cfg))


@app.command()
def build(
    artifact: Annotated[Path, typer.Argument(help="artifact dir from `nanotrt export`")],
    backend: Annotated[str, typer.Option(help="onnxruntime | tensorrt")] = "onnxruntime",
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 variant")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 (explicit QDQ) variant, calibrated on task data")] = False,
    calib_task: Annotated[str | None, typer.Option(help="GLUE task whose train split calibrates INT8")] = None,
    calib_size: Annotated[int, typer.Option(help="calibration sentences")] = 512,
    calib_method: Annotated[str, typer.Option(help="minmax | entropy | percentile")] = "minmax",
    int8_tolerance: Annotated[float, typer.Option(help="max relative error of an INT8 graph before it falls back (ORT: FP32; TensorRT: FP16, then FP32)")] = 0.10,
    dynamic: Annotated[bool, typer.Option(help="ORT dynamic INT8 (no calibration data needed)")] = False,
    data_dir: Annotated[str | None, typer.Option(help="GLUE dir")] = None,
    workspace_mb: Annotated[int, typer.Option(help="TensorRT builder workspace limit (MiB)")] = 1024,
    min_shape: Annotated[str, typer.Option(help="TensorRT profile min BATCHxSEQ")] = "1x1",
    opt_shape: Annotated[str | None, typer.Option(help="TensorRT profile opt BATCHxSEQ (default 1x128 within the max)")] = None,
    max_shape: Annotated[str | None, typer.Option(help="TensorRT profile max BATCHxSEQ (default 32 x the tokenizer's max length)")] = None,
    version_compatible: Annotated[bool, typer.Option(help="TensorRT version-compatible plans (run on newer TensorRT of the same major)")] = False,
    exclude_lean_runtime: Annotated[bool, typer.Option(help="with --version-compatible: leave the lean runtime out of the plans (build and device then need $NANOTRT_TRT_LEAN_RUNTIME = path of libnvinfer_lean.so)")] = False,
    fused: Annotated[bool, typer.Option("--fused", help="also ort-*-fused: layer i and its ramp as one graph")] = False,
    swap: Annotated[bool, typer.Option("--swap", help="also ort-*-swap: one session per layer structure, weights mapped per swap")] = False,
) -> None:
    """Add optimized / FP16 / INT8 engines for a backend to an artifact (atomic, idempotent)."""
    require("export", "`nanotrt build`")  # onnx for graph surgery and quantization
    from nanotrt.pipeline.build import build as run_build

    trt_options = None
    if backend == "tensorrt":
        from nanotrt.pipeline.trt_build import BuildOptions, parse_shape

        trt_options = BuildOptions(parse_shape(min_shape), parse_shape(opt_shape) if opt_shape else None,
                                   parse_shape(max_shape) if max_shape else None, workspace_mb,
                                   version_compatible, exclude_lean_runtime).to_json()
    run_build(artifact, backend=backend, fp16=fp16, int8=int8, calib_task=calib_task, calib_size=calib_size,
              calib_method=calib_method, data_dir=data_dir, int8_tolerance=int8_tolerance, dynamic=dynamic,
              trt_options=trt_options, fused=fused, swap=swap)


@app.command()
def bench(
    task: Annotated[str, typer.Option(help="GLUE task (mnli runs matched and mismatched)")],
    artifact: Annotated[Path | None, typer.Argument(help="artifact dir; default: the demo model trained on TASK")] = None,
    exit: Annotated[str | None, typer.Option("--exit", help="exit policy (default: the artifact's calibrated default_exit, else patience=3; regression patience=2,delta=0.1)")] = None,
    memory_budget: Annotated[str, typer.Option(help="budget of the early-exit rows (a 2-layer row is added at 'all')")] = "all",
    batch_size: Annotated[int, typer.Option(help="also measure batched throughput with per-sample exit")] = 1,
    sweep: Annotated[bool, typer.Option("--sweep", help="sweep exit thresholds; draws the curve")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="dir for JSON + Markdown + PNG")] = None,
    limit: Annotated[int | None, typer.Option(help="first N dev examples only")] = None,
    threads: Annotated[int | None, typer.Option(help="intra-op threads for every row")] = None,
    data_dir: Annotated[str | None, typer.Option(help="GLUE dir")] = None,
) -> None:
    """Accuracy / speed / memory table: early exit vs PyTorch eager and one-graph ORT, on the same inputs."""
    require("bench", "`nanotrt bench`")
    _check_threads(threads)
    from nanotrt.pipeline.benchreport import print_table, run_bench

    report = run_bench(task, artifact, exit=exit, budget=memory_budget, batch_size=batch_size, sweep=sweep,
                       out=out, limit=limit, data_dir=data_dir, threads=threads)
    print_table(report)


def _offline_backend(backend: str) -> None:
    """The offline backends (the PyTorch reference) register when nanotrt.pipeline is imported."""
    from nanotrt.runtime.backend import OFFLINE_BACKENDS

    if backend in OFFLINE_BACKENDS:
        require("export", f"--backend {backend}")
        import nanotrt.pipeline  # noqa: F401 - registers it


def _open_input(file: Path) -> tuple[IO[bytes], str]:
    if str(file) == "-":
        return sys.stdin.buffer, "stdin"
    try:
        if file.is_dir():
            raise IsADirectoryError(21, "Is a directory")
        return open(file, "rb"), str(file)  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        raise NanotrtError(f"input file '{file}' does not exist") from None
    except OSError as e:
        raise NanotrtError(f"cannot read input file '{file}' ({e.strerror}): give a readable text file") from None


def _chunks(rows: Iterator[Row], first: int, most: int) -> Iterator[list[Row]]:
    """Rows in growing chunks: the first result prints at once, later chunks are long enough for block mode
    to amortize engine loads (runner.MAX_BLOCK)."""
    size, chunk = first, []
    try:
        for row in rows:
            chunk.append(row)
            if len(chunk) >= size:
                yield chunk
                chunk, size = [], min(2 * size, most)
    except NanotrtError:  # a bad line: the lines read before it are classified and printed first
        if chunk:
            yield chunk
        raise
    if chunk:
        yield chunk


def _check_threads(threads: int | None) -> None:
    most = 4 * (os.cpu_count() or 1)
    if threads is not None and not 1 <= threads <= most:
        raise NanotrtError(f"--threads {threads} is out of range: use 1..{most} (4 per core at most)")


@app.command()
def predict(
    artifact: Annotated[Path, typer.Argument(help="artifact dir from `nanotrt export`")],
    texts: Annotated[list[str] | None, typer.Argument(help="text(s) to classify")] = None,
    pair: Annotated[str | None, typer.Option(help="second sentence of a pair")] = None,
    file: Annotated[Path | None, typer.Option("-f", "--file", help="one text per line (TAB before a pair); - = stdin; empty lines skipped; streamed")] = None,
    encoding: Annotated[str, typer.Option(help="encoding of -f (undecodable bytes are an error naming the line)")] = "utf-8",
    backend: Annotated[str, typer.Option(help="onnxruntime | tensorrt | torch")] = "onnxruntime",
    memory_budget: Annotated[str, typer.Option(help="memory budget for engines + activations: all, 300MB, 2GB, 2layers (room for 2 of the largest graphs)")] = "all",
    exit: Annotated[str | None, typer.Option("--exit", help="none, patience=3, entropy=0.3, maxprob=0.9, depth=4, learned=0.5, patience=2,maxprob=0.9, patience=3,deadline=8ms (default: the artifact's calibrated default_exit, else none)")] = None,
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8: runs the best variant the artifact has at "
                                                "this precision (built before exported)")] = "fp32",
    variant: Annotated[str | None, typer.Option(help="manifest variant to run, e.g. fp32 or ort-int8 "
                                                     "(overrides --precision)")] = None,
    prefetch: Annotated[bool, typer.Option(help="load the next layer on a background thread")] = True,
    batch_size: Annotated[int, typer.Option(help="samples per batch (each exits on its own)")] = 8,
    mode: Annotated[str, typer.Option(help="auto | latency | block (layer-major over many inputs)")] = "auto",
    block_size: Annotated[int | None, typer.Option(help="block mode: examples per block (default: what the budget allows)")] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime: threads of the shared intra-op pool")] = None,
    max_chars: Annotated[int | None, typer.Option(help="input bound: characters of each text (and pair) kept before "
                                                       "tokenizing; default 32 per token of the artifact's max length")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per input")] = False,
    stats: Annotated[bool, typer.Option(help="print run statistics (of the whole input)")] = False,
) -> None:
    """Classify text with the streaming runner (no torch import on the onnxruntime path).

    Results print as they are computed, in input order. Exit status: 0 when every input was classified; 2 on
    the first bad input or error (one `error:` line naming the line; the results of the lines before it have
    been printed, nothing after it); 1 when the output pipe closes; 130 on Ctrl-C.
    """
    from nanotrt.runtime.runner import MAX_BLOCK, Runner

    _check_threads(threads)
    if max_chars is not None and max_chars < 1:
        raise NanotrtError(f"--max-chars {max_chars} keeps nothing: use a positive number of characters")
    if file is not None and texts:
        raise NanotrtError("give TEXT arguments or -f FILE, not both")
    counts = Counts()
    stream, name = _open_input(file) if file is not None else (None, "")
    _offline_backend(backend)
    options = {"threads": threads} if threads is not None and backend == "onnxruntime" else {}
    with Runner.from_artifact(artifact, backend=backend, memory_budget=memory_budget, exit=exit,
                              variant=variant, prefetch=prefetch, precision=precision, **options) as runner:
        if max_chars is not None:
            runner.tokenizer.max_chars = max_chars
        limit = runner.tokenizer.max_chars
        rows = file_rows(stream, name, encoding, limit, counts) if stream is not None else arg_rows(texts or [], pair)
        totals = _stream(runner, rows, batch_size, mode, block_size, as_json, MAX_BLOCK)
    if counts.skipped:
        typer.echo(f"note: skipped {counts.skipped} empty line(s) in {name}", err=True)
    if runner.tokenizer.truncated:  # one line, however many: the model sees only the first max_length tokens
        typer.echo(f"warning: {runner.tokenizer.truncated} of {totals['samples']} input(s) longer than "
                   f"{runner.tokenizer.max_length} tokens were truncated", err=True)
    if stats:
        typer.echo(json.dumps({"variant": totals.get("variant"), "exit": runner.policy.spec,
                               "exit_source": runner.exit_source, "plan": runner.describe_plan(),
                               "ms_per_example": 1000 * totals["wall_s"] / max(totals["samples"], 1), **totals,
                               "budget": runner.describe_budget()}, indent=1, allow_nan=False), err=True)


def _stream(runner: Any, rows: Iterator[Row], batch_size: int, mode: str, block_size: int | None, as_json: bool,
            most: int) -> dict[str, Any]:
    """Classify ``rows`` chunk by chunk, printing each chunk's results before reading on; returns totals."""
    regression = runner.manifest.task_type == "regression"
    totals: dict[str, Any] = {"samples": 0, "layers": 0, "wall_s": 0.0, "compute_s": 0.0, "blocks": 0}
    first = max(1, min(batch_size, most))
    for chunk in _chunks(rows, first, max(first, block_size or most)):
        res = runner.predict([r.text for r in chunk], None if chunk[0].pair is None else [r.pair for r in chunk],
                             batch_size=batch_size, mode=mode, block_size=block_size)
        lines = []
        for row, p in zip(chunk, res.predictions, strict=True):
            check_finite(row, p)
            lines.append(json_line(row, p) if as_json else plain_line(row, p, runner.labels, runner.n, regression))
        _out("\n".join(lines))
        sys.stdout.flush()
        s = res.stats
        totals.update(variant=s.variant, mode=s.mode, max_block=max(totals.get("max_block", 0), s.max_block), **s.cache)
        totals["samples"] += s.samples
        totals["layers"] += s.layers_executed
        totals["wall_s"] += s.wall_s
        totals["compute_s"] += s.compute_s
        totals["blocks"] += s.blocks
        totals["layer_time_s"] = [a + b for a, b in zip(totals.get("layer_time_s", [0.0] * len(s.layer_time_s)),
                                                        s.layer_time_s, strict=True)]
    totals["avg_exit_layer"] = totals.pop("layers") / max(totals["samples"], 1)
    return totals


@app.command()
def profile(
    artifact: Annotated[Path, typer.Argument(help="artifact dir")],
    backend: Annotated[str, typer.Option(help="onnxruntime | tensorrt")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8 (built variants)")] = "fp32",
    variant: Annotated[str | None, typer.Option(help="manifest variant (overrides --precision)")] = None,
    memory_budget: Annotated[str, typer.Option(help="budget the profile is for: a step costs load + run when it swaps")] = "all",
    batches: Annotated[str, typer.Option(help="batch sizes of the grid")] = "1,4,16",
    seqs: Annotated[str, typer.Option(help="sequence lengths of the grid")] = "16,32,64,128",
    repeats: Annotated[int, typer.Option(help="timed runs per graph and shape")] = 10,
    threads: Annotated[int | None, typer.Option(help="intra-op threads")] = None,
) -> None:
    """Measure per-layer and per-ramp latency on this device; writes profile-VARIANT.json by the manifest."""
    from nanotrt.runtime.profile import run_profile

    _check_threads(threads)
    from nanotrt.runtime.progress import progress

    _offline_backend(backend)
    with progress() as bar:
        job = bar.add_task("profile", total=None, info="")
        path, doc = run_profile(artifact, backend, precision, variant, memory_budget, batches, seqs, repeats,
                                threads, tick=lambda name: bar.update(job, advance=1, info=name))
    from nanotrt.runtime.profile import DeviceProfile

    prof, seq = DeviceProfile(doc), doc["grid"]["seq"][-1]
    step = [round(1000 * prof.step_seconds(g["start"], 1, seq, "p50_ms"), 2) for g in prof.groups()]
    _out(f"wrote {path} ({doc['machine']['cpu']}); p50 ms per step between exit points at batch 1 x {seq}: {step}")


@app.command()
def serve(
    artifact: Annotated[Path, typer.Argument(help="artifact dir")],
    host: Annotated[str, typer.Option(help="address to listen on (127.0.0.1: this machine only)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    max_batch_size: Annotated[int, typer.Option(help="samples per dynamic batch (1 = batching off)")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="longest a sample waits for others to join its batch")] = 5.0,
    backend: Annotated[str, typer.Option(help="onnxruntime | tensorrt")] = "onnxruntime",
    memory_budget: Annotated[str, typer.Option(help="memory budget for engines + activations: all, 300MB, 2layers")] = "all",
    exit: Annotated[str | None, typer.Option("--exit", help="exit rule (default: the artifact's calibrated default_exit)")] = None,
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8 (best variant at this precision)")] = "fp32",
    variant: Annotated[str | None, typer.Option(help="manifest variant (overrides --precision)")] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime: threads of the shared intra-op pool")] = None,
    max_texts: Annotated[int, typer.Option(help="texts per request (more: 413)")] = 64,
    max_chars: Annotated[int, typer.Option(help="characters per text (more: 413)")] = 20_000,
    log_texts: Annotated[bool, typer.Option("--log-texts", help="put the texts in the request log (off: counts and exits only)")] = False,
    ray: Annotated[bool, typer.Option("--ray", help="deploy on Ray Serve (local Ray, or RAY_ADDRESS)")] = False,
    replicas: Annotated[int, typer.Option(help="--ray: replicas, one Runner each")] = 1,
) -> None:
    """HTTP JSON API (POST /predict, GET /health, /docs) with dynamic batching into per-sample exits."""
    require("ray" if ray else "serve", "`nanotrt serve --ray`" if ray else "`nanotrt serve`")
    from nanotrt.serve import Limits, ServeConfig

    cfg = ServeConfig(str(artifact.resolve()), backend, memory_budget, exit, precision, variant, threads, max_batch_size,
                      max_wait_ms, Limits(max_texts=max_texts, max_chars=max_chars), log_texts)
    if ray:
        from nanotrt.serve_ray import serve_on_ray

        serve_on_ray(cfg, host=host, port=port, replicas=replicas)
    else:
        from nanotrt.serve import serve_http

        serve_http(cfg, host=host, port=port)


@app.command("calibrate-exit")
def calibrate_exit(
    artifact: Annotated[Path, typer.Argument(help="artifact dir")],
    task: Annotated[str | None, typer.Option(help="GLUE task (default: the artifact's)")] = None,
    max_loss: Annotated[float, typer.Option(help="metric points below full depth allowed (with --agreement: % of rows that may disagree with full depth)")] = 0.5,
    confidence: Annotated[float, typer.Option(help="the loss's upper confidence bound must be within --max-loss at this confidence")] = 0.9,
    agreement: Annotated[bool, typer.Option("--agreement", help="bound disagreement with the full-depth prediction (needs no labels)")] = False,
    texts: Annotated[Path | None, typer.Option(help="unlabelled in-domain text, one example a line (pairs: tab-separated); implies --agreement")] = None,
    policy: Annotated[str | None, typer.Option(help="only these families: patience,entropy,maxprob,learned,pcee,depth")] = None,
    precision: Annotated[str, typer.Option(help="fp32 | int8 ... (the variant the default is for)")] = "fp32",
    data_dir: Annotated[str | None, typer.Option(help="GLUE dir")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the choice, leave the manifest alone")] = False,
) -> None:
    """Pick the most aggressive exit setting whose loss bound is within --max-loss on held-out train rows
    (never dev); store it as default_exit."""
    from nanotrt.pipeline.calibrate_exit import FAMILIES
    from nanotrt.pipeline.calibrate_exit import calibrate_exit as run_calibrate

    fams = tuple(f.strip() for f in policy.split(",")) if policy else FAMILIES
    rec = run_calibrate(artifact, task, max_loss, fams, precision, data_dir, write=not dry_run,
                        confidence=confidence, agreement=agreement, texts=texts)
    c, h = rec["chosen"], rec["holdout"]
    where = "held-out train rows" if texts is None else f"unlabelled rows of {texts}"
    full = f"full depth {100 * rec['full_depth']:.2f} {rec['metric']}; " if rec["full_depth"] is not None else ""
    unit = "% of rows disagreeing with full depth" if rec["criterion"] == "agreement" else "points"
    _out(f"{rec['task']} ({rec['rows']} {where}{', SEEN in training' if h['seen_in_training'] else ''}): {full}"
         f"default_exit {c['spec']} at {c['avg_exit']:.2f} layers: loss {c['loss']:.2f} {unit}, "
         f"{rec['confidence']:g} upper bound {c['bound']:.2f} (max {rec['max_loss']:g}){' (dry run)' if dry_run else ''}")
    _out(rec["note"])


@app.command()
def plan(
    artifact: Annotated[Path, typer.Argument(help="artifact dir")],
    max_loss: Annotated[float, typer.Option(help="metric points below full depth allowed (on held-out TRAIN rows)")] = 0.5,
    memory_budget: Annotated[str | None, typer.Option(help="all | bytes | Nlayers: every segment fits with its activations")] = None,
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8")] = "fp32",
    backend: Annotated[str, typer.Option(help="onnxruntime | tensorrt")] = "onnxruntime",
    dynamic: Annotated[bool, typer.Option("--dynamic", help="int8: plan the ORT dynamic INT8 variant")] = False,
    task: Annotated[str | None, typer.Option(help="GLUE task (default: the artifact's)")] = None,
    data_dir: Annotated[str | None, typer.Option(help="GLUE dir")] = None,
    confidence: Annotated[float, typer.Option(help="confidence of the loss bound a rule must pass (as calibrate-exit)")] = 0.9,
    no_exit: Annotated[bool, typer.Option("--no-exit", help="no early exit: the fewest segments the budget allows")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the plan, build nothing")] = False,
) -> None:
    """Choose engine boundaries and live ramps for this device, task and budget; build them as a variant."""
    from nanotrt.extras import require

    require("train", "`nanotrt plan`")
    from nanotrt.pipeline.plan import describe, make_plan

    rec = make_plan(artifact, max_loss, memory_budget, precision, backend, dynamic, task, data_dir, write=not dry_run,
                    exits=not no_exit, confidence=confidence)
    _out(describe(rec) + (" (dry run)" if dry_run else ""))


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option("-o", "--out", help="artifact dir (default: cache)")] = None,
) -> None:
    """Export the embedded MiniLM-L6 demo model (mean-pooled ramps, untrained) and stream a few predictions."""
    require("demo", "`nanotrt demo`")
    from nanotrt.pipeline.demo import cache_dir, demo_model_dir
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.model import load_model
    from nanotrt.runtime.runner import Runner

    art = out or cache_dir() / "demo-minilm-untrained"
    if not (art / "manifest.json").is_file():
        src = demo_model_dir()
        export_model(src, art, model=load_model(src, num_labels=2, pooling="mean"))
    texts = ["The movie was a delight from start to finish.", "Colorless green ideas sleep furiously.",
             "This is not a sentence that"]
    with Runner.from_artifact(art, memory_budget="2layers", exit="patience=2") as runner:
        res = runner.predict(texts)
    for t, p in zip(texts, res.predictions, strict=True):
        _out(f"{p.label}\tp={p.score:.3f}\texit@{p.exit_layer}/{runner.n}\t{t}")
    s = res.stats
    _out(f"budget {runner.describe_budget()}: {s.cache['loads']} loads, peak engines "
         f"{s.cache['peak_resident_bytes'] / 1e6:.1f} MB, avg exit layer {s.avg_exit_layer:.2f}")


def _click_exceptions() -> Any:
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")  # typer >= 0.2x vendors click
    except ImportError:  # older typer: click itself
        return importlib.import_module("click.exceptions")


def _interrupted(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def main() -> None:
    ce = _click_exceptions()
    try:
        # Not standalone: click's usage errors come here and print as one line like every other error.
        rv = app(standalone_mode=False)
    except ce.NoArgsIsHelpError as e:  # bare `nanotrt` / `nanotrt CMD`: show the help
        e.show()
        raise SystemExit(2) from None
    except ce.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
        typer.echo(f"error: {e.format_message()}{hint}", err=True)
        raise SystemExit(2) from None
    except ce.ClickException as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        raise SystemExit(e.exit_code) from None
    except typer.Abort:  # EOF on a prompt
        raise SystemExit(1) from None
    except BrokenPipeError:  # `nanotrt predict ... | head`: the reader left; not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush stays quiet
        raise SystemExit(1) from None
    except NanotrtError as e:  # the library keeps the cause (`from e`); the user gets one line
        typer.echo(f"error: {' '.join(str(e).splitlines())}", err=True)
        raise SystemExit(2) from None
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        typer.echo(f"error: no space left on the device ({e.filename or 'while writing'}): free some space and run "
                   "again; outputs are written to temporary files first, so nothing was half-written", err=True)
        raise SystemExit(2) from None
    except ImportError as e:
        if _interrupted(e):  # Ctrl-C during an import: onnxruntime re-raises it as "initialization failed"
            typer.echo("interrupted", err=True)
            raise SystemExit(130) from None
        # an optional dependency reached past a command's upfront check
        extra = extra_for_module(e.name or "") if isinstance(e, ModuleNotFoundError) else None
        if extra is None:
            raise
        typer.echo(f"error: {missing_message('this command', e.name or '', extra)}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    raise SystemExit(rv if isinstance(rv, int) else 0)
