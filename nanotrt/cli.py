"""The `nanotrt` command line: thin typer commands over the library.

Errors the user can fix (NanotrtError) print as one line and exit with status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from nanotrt.extras import extra_for_module, missing_message, require
from nanotrt.runtime.errors import NanotrtError

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
) -> None:
    """Cut a model into embeddings / layer / ramp ONNX graphs plus manifest.json."""
    require("export", "`nanotrt export`")
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.model import load_model

    model = load_model(model_dir, num_labels=num_labels, pooling=pooling)
    export_model(model_dir, out, max_length=max_length, model=model, include_checkpoint=torch_reference, whole=whole)


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
) -> None:
    """Train off-ramps on a GLUE task; prints and saves the dev metric of every ramp."""
    require("train", "`nanotrt train`")
    from nanotrt.pipeline.train import TrainConfig, print_ramp_table
    from nanotrt.pipeline.train import train as run_train

    cfg = TrainConfig(task=task, method=method, epochs=epochs, batch_size=batch_size, lr=lr, warmup=warmup,
                      max_length=max_length, seed=seed, limit=limit, eval_limit=eval_limit,
                      grad_accum=grad_accum, pooling=pooling, data_dir=data_dir)
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
    int8_tolerance: Annotated[float, typer.Option(help="max relative error of a graph before it stays FP32")] = 0.10,
    dynamic: Annotated[bool, typer.Option(help="also build ORT dynamic INT8 (for comparison)")] = False,
    data_dir: Annotated[str | None, typer.Option(help="GLUE dir")] = None,
    workspace_mb: Annotated[int, typer.Option(help="TensorRT builder workspace limit")] = 1024,
    min_shape: Annotated[str, typer.Option(help="TensorRT profile min batch x seq")] = "1x1",
    opt_shape: Annotated[str, typer.Option(help="TensorRT profile opt batch x seq")] = "1x128",
    max_shape: Annotated[str, typer.Option(help="TensorRT profile max batch x seq")] = "32x512",
    version_compatible: Annotated[bool, typer.Option(help="TensorRT version-compatible plans (lean runtime)")] = False,
    exclude_lean_runtime: Annotated[bool, typer.Option(help="do not embed the lean runtime in the plans")] = False,
    legacy_calib_cache: Annotated[bool, typer.Option(help="also write a TensorRT 8.x calibration cache")] = False,
    fused: Annotated[bool, typer.Option("--fused", help="also ort-*-fused: layer i and its ramp as one graph")] = False,
) -> None:
    """Add optimized / FP16 / INT8 engines for a backend to an artifact (atomic, idempotent)."""
    require("export", "`nanotrt build`")  # onnx for graph surgery and quantization
    from nanotrt.pipeline.build import build as run_build

    trt_options = None
    if backend == "tensorrt":
        from nanotrt.engines.tensorrt import ProfileShapes

        def shape(text: str) -> tuple[int, int]:
            try:
                b, s = (int(x) for x in text.lower().split("x"))
            except ValueError:
                raise NanotrtError(f"cannot read shape '{text}': use BATCHxSEQ, e.g. 8x128") from None
            return b, s

        trt_options = {"profile": ProfileShapes(shape(min_shape), shape(opt_shape), shape(max_shape)),
                       "workspace_mb": workspace_mb, "version_compatible": version_compatible,
                       "exclude_lean_runtime": exclude_lean_runtime, "legacy_calib_cache": legacy_calib_cache}
    run_build(artifact, backend=backend, fp16=fp16, int8=int8, calib_task=calib_task, calib_size=calib_size,
              calib_method=calib_method, data_dir=data_dir, int8_tolerance=int8_tolerance, dynamic=dynamic,
              trt_options=trt_options, fused=fused)


@app.command()
def bench(
    task: Annotated[str, typer.Option(help="GLUE task (mnli runs matched and mismatched)")],
    artifact: Annotated[Path | None, typer.Argument(help="artifact dir; default: the demo model trained on TASK")] = None,
    exit: Annotated[str | None, typer.Option("--exit", help="exit policy (default patience=3; regression patience=2,delta=0.1)")] = None,
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
    from nanotrt.pipeline.benchreport import print_table, run_bench

    report = run_bench(task, artifact, exit=exit, budget=memory_budget, batch_size=batch_size, sweep=sweep,
                       out=out, limit=limit, data_dir=data_dir, threads=threads)
    print_table(report)


def _read_inputs(texts: list[str], pair: str | None, file: Path | None) -> tuple[list[str], list[str] | None]:
    if file is not None:
        src = sys.stdin if str(file) == "-" else None
        if src is None and not file.is_file():
            raise NanotrtError(f"input file '{file}' does not exist")
        lines = (src.read() if src else file.read_text()).splitlines()
        rows = [line.split("\t", 1) for line in lines if line.strip()]
        if any(len(r) == 2 for r in rows):
            return [r[0] for r in rows], [r[1] if len(r) == 2 else "" for r in rows]
        return [r[0] for r in rows], None
    if not texts:
        raise NanotrtError("no input: give TEXT arguments, or -f FILE (one text per line, TAB before a pair; - for stdin)")
    if pair is not None and len(texts) != 1:
        raise NanotrtError("--pair goes with exactly one TEXT; for many pairs use -f with TAB-separated lines")
    return texts, ([pair] if pair is not None else None)


@app.command()
def predict(
    artifact: Annotated[Path, typer.Argument(help="artifact dir from `nanotrt export`")],
    texts: Annotated[list[str] | None, typer.Argument(help="text(s) to classify")] = None,
    pair: Annotated[str | None, typer.Option(help="second sentence of a pair")] = None,
    file: Annotated[Path | None, typer.Option("-f", "--file", help="one text per line (TAB before a pair); - = stdin")] = None,
    backend: Annotated[str, typer.Option(help="onnxruntime | tensorrt | torch")] = "onnxruntime",
    memory_budget: Annotated[str, typer.Option(help="memory budget for engines + activations: all, 300MB, 2GB, 2layers (room for 2 of the largest graphs)")] = "all",
    exit: Annotated[str, typer.Option("--exit", help="none, patience=3, entropy=0.3, maxprob=0.9, depth=4")] = "none",
    precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8 (built variants)")] = "fp32",
    variant: Annotated[str | None, typer.Option(help="manifest variant to run (overrides --precision)")] = None,
    prefetch: Annotated[bool, typer.Option(help="load the next layer on a background thread")] = True,
    batch_size: Annotated[int, typer.Option(help="samples per batch (each exits on its own)")] = 8,
    mode: Annotated[str, typer.Option(help="auto | latency | block (layer-major over many inputs)")] = "auto",
    block_size: Annotated[int | None, typer.Option(help="block mode: examples per block (default: what the budget allows)")] = None,
    threads: Annotated[int | None, typer.Option(help="onnxruntime: threads of the shared intra-op pool")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per input")] = False,
    stats: Annotated[bool, typer.Option(help="print run statistics")] = False,
) -> None:
    """Classify text with the streaming runner (no torch import on the onnxruntime path)."""
    from nanotrt.runtime.runner import Runner

    items, pairs = _read_inputs(texts or [], pair, file)
    options = {"threads": threads} if threads and backend == "onnxruntime" else {}
    with Runner.from_artifact(artifact, backend=backend, memory_budget=memory_budget, exit=exit,
                              variant=variant, prefetch=prefetch, precision=precision, **options) as runner:
        res = runner.predict(items, pairs, batch_size=batch_size, mode=mode, block_size=block_size)
    regression = runner.manifest.task_type == "regression"
    for text, p in zip(items, res.predictions, strict=True):
        if as_json:
            _out(json.dumps({"text": text, "label": p.label, "score": p.score, "probs": p.probs,
                             "exit_layer": p.exit_layer, "ramp_preds": p.ramp_preds}))
        elif regression:
            _out(f"{p.score:.4f}\texit@{p.exit_layer}\tramps={[round(x, 3) for x in p.ramp_preds]}\t{text}")
        else:
            probs = " ".join(f"{lab}={q:.3f}" for lab, q in zip(runner.labels, p.probs, strict=True))
            ramps = ",".join(runner.labels[int(k)] for k in p.ramp_preds)
            _out(f"{p.label}\t{probs}\texit@{p.exit_layer}/{runner.n}\tramps=[{ramps}]\t{text}")
    if stats:
        s = res.stats
        typer.echo(json.dumps({"samples": s.samples, "avg_exit_layer": s.avg_exit_layer, "wall_s": s.wall_s,
                               "compute_s": s.compute_s, "layer_time_s": s.layer_time_s, "mode": s.mode,
                               "blocks": s.blocks, "max_block": s.max_block,
                               "budget": runner.describe_budget(), **s.cache}, indent=1), err=True)


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


def main() -> None:
    try:
        app()
    except NanotrtError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(2) from None
    except ModuleNotFoundError as e:  # an optional dependency reached past a command's upfront check
        extra = extra_for_module(e.name or "")
        if extra is None:
            raise
        typer.echo(f"error: {missing_message('this command', e.name or '', extra)}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
