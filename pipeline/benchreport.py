"""Orchestrates `nanotrt bench`: prepares the embedded default (train -> export -> build, cached), runs the
rows of ``pipeline.bench`` side by side, sweeps the exit policy, and writes JSON + Markdown + PNG."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nanotrt.pipeline.bench import RowSpec, machine_info, run_child
from nanotrt.pipeline.glue import get_task, task_file
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import atomic_file, write_json
from nanotrt.runtime.progress import console, progress, table_console

# Large train sets are subsampled for the embedded default so first use stays practical on 2 cores
# (SST-2: 16k of 67k sentences, one epoch, ~16 min here); small ones use the training defaults.
DEFAULT_TRAIN: dict[str, dict[str, Any]] = {t: {"limit": 16000, "epochs": 1.0} for t in ("sst2", "qqp", "mnli", "qnli")}
DEFAULT_EXIT = {"classification": "patience=3", "regression": "patience=2,delta=0.1"}


def sweep_specs(task_type: str, n_layers: int) -> list[str]:
    pat = [f"patience={p}" for p in range(1, max(2, n_layers - 1))]
    if task_type == "regression":
        return [f"{p},delta=0.1" for p in pat]
    return pat + [f"entropy={t}" for t in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)]


def prepare_default(task: str, data_dir: str | None = None, root: Path | None = None) -> Path:
    """The demo model trained with off-ramps on ``task``, exported (with the one-graph baseline) and
    built to INT8, cached and reused."""
    from nanotrt.pipeline.demo import cache_dir, demo_model_dir

    t = get_task(task)
    name = "mnli" if t.name == "mnli-mm" else t.name
    root = root or cache_dir() / f"minilm-{name}"
    art = root / "artifact"
    if (art / "manifest.json").is_file() and "ort-int8" in Manifest.load(art).variants:
        return art
    task_file(t, "train", data_dir)  # clear error before minutes of work
    from nanotrt.pipeline.build import build
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.train import TrainConfig, train

    ckpt = root / "checkpoint"
    if not (ckpt / "nanotrt.json").is_file():
        console.print(f"[bold]first use:[/] training the demo model with off-ramps on {name} (cached in {root})")
        train(demo_model_dir(), ckpt, TrainConfig(task=name, data_dir=data_dir, **DEFAULT_TRAIN.get(name, {})))
    export_model(ckpt, art, whole=True)
    build(art, int8=True, calib_task=name, data_dir=data_dir)
    return art


def skip_reason(spec: RowSpec, m: Manifest) -> str | None:
    """None when the artifact can run ``spec``; else the command that makes it able to."""
    if spec.kind.startswith("torch") and not m.data.get("checkpoint"):
        return "export with the PyTorch checkpoint kept: `nanotrt export CKPT -o ART --torch-reference`"
    if spec.kind == "ort-whole" and "whole" not in m.graphs:
        return "export the one-graph baseline too: `nanotrt export CKPT -o ART --whole`"
    if spec.kind == "runner" and spec.variant not in m.variants:
        if spec.variant.endswith("-fused"):
            return "build the fused variant: `nanotrt build ART --fused`"
        return f"build the {spec.variant} variant: `nanotrt build ART --int8 --calib-task TASK`"
    return None


def _fmt_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def run_bench(task: str, artifact: Path | None = None, exit: str | None = None, budget: str = "all",
              batch_size: int = 1, sweep: bool = False, out: Path | None = None, limit: int | None = None,
              data_dir: str | None = None, threads: int | None = None) -> dict[str, Any]:
    t = get_task(task)
    tasks = [t.name, "mnli-mm"] if t.name == "mnli" else [t.name]
    for name in tasks:
        task_file(get_task(name), "dev", data_dir)
    art = Path(artifact) if artifact else prepare_default(t.name, data_dir)
    m = Manifest.load(art)
    if len(m.labels) != t.num_labels:
        raise NanotrtError(f"artifact '{art}' has {len(m.labels)} labels but {t.name} has {t.num_labels}: "
                           "use an artifact trained for this task")
    exit = exit or DEFAULT_EXIT[m.task_type]
    int8 = "ort-int8" in m.variants
    fp32 = "ort-fp32" if "ort-fp32" in m.variants else "fp32"  # the built (optimized) graphs when present
    report: dict[str, Any] = {"task": t.name, "artifact": str(art), "exit": exit, "budget": budget,
                              "batch_size": batch_size, "layers": m.num_layers, "machine": machine_info(),
                              "date": time.strftime("%Y-%m-%d %H:%M"), "results": {}}
    # Exit and streaming rows run the fused layer+ramp variants when built (one engine call per layer).
    f32, i8 = (f"{v}-fused" if f"{v}-fused" in m.variants else v for v in (fp32, "ort-int8"))
    stream = i8 if int8 else f32
    label = f"{'int8' if int8 else 'fp32'}{' fused' if stream.endswith('-fused') else ''}"
    for name in tasks:
        base: dict[str, Any] = {"artifact": str(art), "task": name, "data_dir": data_dir, "limit": limit,
                                "threads": threads}
        rows = [
            RowSpec("1 torch eager, full", "torch-full", **base),
            RowSpec(f"2 torch eager, {exit}", "torch-exit", exit=exit, **base),
            RowSpec("3 ORT one graph", "ort-whole", **base),
            RowSpec("4 nanotrt full, all resident", "runner", variant=fp32, **base),
            RowSpec("4 nanotrt full, fused, all resident", "runner", variant=f"{fp32}-fused", **base),
            RowSpec(f"5 nanotrt fp32 {exit} @{budget}{' (fused)' * (f32 != fp32)}", "runner", exit=exit, budget=budget,
                    variant=f32, **base),
            RowSpec(f"5 nanotrt int8 {exit} @{budget}{' (fused)' * (i8 != 'ort-int8')}", "runner", exit=exit,
                    budget=budget, variant=i8, **base),
        ]
        if budget == "all":  # also show the memory side: the same exit, streamed under a 2-layer budget
            rows += [RowSpec(f"6 nanotrt {label} {exit} @2layers", "runner", exit=exit,
                             budget="2layers", variant=stream, **base),
                     RowSpec(f"7 nanotrt {label} {exit} @2layers, block mode, batch "
                             f"{max(batch_size, 8)}", "runner", exit=exit, budget="2layers", variant=stream,
                             mode="block", batch_size=max(batch_size, 8), **base),
                     RowSpec(f"7 nanotrt {label} {exit} @all, batch {max(batch_size, 8)}",
                             "runner", exit=exit, variant=stream, mode="block", batch_size=max(batch_size, 8), **base)]
        if batch_size > 1:
            rows += [
                RowSpec(f"B torch eager, full, batch {batch_size}", "torch-full", batch_size=batch_size, **base),
                RowSpec(f"B nanotrt full, batch {batch_size}", "runner", batch_size=batch_size, variant=fp32, **base),
                RowSpec(f"B nanotrt fp32 {exit}, batch {batch_size}", "runner", exit=exit, batch_size=batch_size,
                        budget=budget, variant=fp32, **base),
            ]
        skipped = [{"row": r.name, "enable": why} for r in rows if (why := skip_reason(r, m)) is not None]
        rows = [r for r in rows if skip_reason(r, m) is None]
        results: list[dict[str, Any]] = []
        with progress() as bar:
            job = bar.add_task(f"bench {name}", total=len(rows) + (2 if sweep else 0), info="")
            for spec in rows:
                bar.update(job, info=spec.name)
                res = run_child(spec)
                res["row"] = spec.name
                results.append(res)
                bar.advance(job)
            sweeps: dict[str, list[dict[str, Any]]] = {}
            if sweep:
                specs = sweep_specs(m.task_type, m.num_layers)
                for variant in [fp32, *(["ort-int8"] if int8 else [])]:
                    bar.update(job, info=f"sweep {variant}")
                    sweeps[variant] = run_child(RowSpec(f"sweep {variant}", "runner", variant=variant,
                                                        budget=budget, sweep=specs, **base))
                    bar.advance(job)
        # Speedups against the first row measured (PyTorch eager when the checkpoint is there); batched
        # rows against the first batched row; every batch-1 row also against the one graph (the split cost).
        ref = results[0]
        batched = [r for r in results if r["row"].startswith("B")]
        whole = next((r for r in results if r["row"].startswith("3 ")), None)
        for r in results:
            r["wall_speedup"] = r["throughput"] / (batched[0] if r in batched else ref)["throughput"]
            if whole is not None and r not in batched:
                r["vs_one_graph"] = r["throughput"] / whole["throughput"]
        for pts in sweeps.values():
            for p in pts:
                p["wall_speedup"] = p["throughput"] / ref["throughput"]
        report["results"][name] = {"metric": get_task(name).main_metric, "rows": results, "sweeps": sweeps,
                                   "reference": ref["row"], "skipped": skipped}
    if out:
        write_report(report, Path(out))
    return report


def _row(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["row"].startswith(prefix)), None)


def _ratio(r: dict[str, Any], key: str) -> str:
    return f"{r[key]:.2f}" if key in r else "-"


COLUMNS = ("row", "metric", "avg exit", "layer x", "wall x", "vs one graph", "p50 ms", "p95 ms", "ex/s",
           "peak RSS", "engines", "activations", "load s")


def _cells(r: dict[str, Any]) -> list[str]:
    return [r["row"], f"{100 * r['metric']:.2f}", f"{r['avg_exit_layer']:.2f}", f"{r['layer_speedup']:.2f}",
            f"{r['wall_speedup']:.2f}", _ratio(r, "vs_one_graph"), f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}",
            f"{r['throughput']:.1f}", _fmt_bytes(r["peak_rss_bytes"]), _fmt_bytes(r.get("engine_peak_bytes")),
            _fmt_bytes(r.get("activation_peak_bytes")), f"{r.get('load_s', 0):.2f}"]


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    for name, res in report["results"].items():
        table = Table(title=f"{name} dev · exit {report['exit']} · budget {report['budget']} · "
                            f"wall x vs '{res.get('reference', '1 torch eager, full')}'")
        for col in COLUMNS:
            table.add_column(res["metric"] if col == "metric" else col, justify="left" if col == "row" else "right")
        for r in res["rows"]:
            table.add_row(*_cells(r))
        table_console.print(table)
        for sk in res.get("skipped", []):
            table_console.print(f"skipped: {sk['row']} -- {sk['enable']}")


def to_markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    lines = [f"# nanotrt bench: {report['task']}", "",
             f"Exit policy `{report['exit']}`, memory budget `{report['budget']}`, {report['layers']} layers, "
             f"batch size 1 unless the row says otherwise. {report['date']}.", "",
             f"Machine: {mi['cpu']}, {mi['cores']} cores, Python {mi['python']}; "
             + ", ".join(f"{k} {v}" for k, v in mi["libraries"].items()), ""]
    for name, res in report["results"].items():
        rows = res["rows"]
        full, fp32, int8 = rows[0], _row(rows, "5 nanotrt fp32"), _row(rows, "5 nanotrt int8")
        ref = res.get("reference", rows[0]["row"])
        lines += [f"## {name} ({res['metric']})", ""]
        if fp32 is not None:
            i8_metric = "-" if int8 is None else f"{100 * int8['metric']:.2f}"
            i8_speed = "-" if int8 is None else f"{int8['wall_speedup']:.2f}x"
            lines += ["| task | metric full | with exit (fp32) | with exit (int8) | layer speedup | wall-clock speedup |",
                      "|---|---|---|---|---|---|",
                      f"| {name} | {100 * full['metric']:.2f} | {100 * fp32['metric']:.2f} | {i8_metric} | "
                      f"{fp32['layer_speedup']:.2f}x | {fp32['wall_speedup']:.2f}x (int8 {i8_speed}) |", ""]
        lines += [f"Wall speedup vs row '{ref}'; 'vs one graph' is throughput over row 3 (for row 4: the cost of "
                  "cutting the model into per-layer engines). Block-mode rows (7) walk the whole split in one "
                  "predict call; their p50/p95 are the mean time per example.", "",
                  "| " + " | ".join(res["metric"] if c == "metric" else c for c in COLUMNS) + " |",
                  "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
        if res.get("skipped"):
            lines += ["", "Skipped (the artifact lacks what they need):", ""]
            lines += [f"- {sk['row']}: {sk['enable']}" for sk in res["skipped"]]
        for variant, pts in res["sweeps"].items():
            lines += ["", f"Sweep ({variant}): | exit | metric | avg exit | wall speedup |", "|---|---|---|---|"]
            lines += [f"| {p['exit']} | {100 * p['metric']:.2f} | {p['avg_exit_layer']:.2f} | {p['wall_speedup']:.2f} |"
                      for p in pts]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in report["results"].items():
        full = res["rows"][0]
        ax.axhline(100 * full["metric"], ls="--", lw=0.8, color="gray")
        for variant, pts in res["sweeps"].items():
            for fam in ("patience", "entropy"):
                sel = sorted((p for p in pts if p["exit"].startswith(fam)), key=lambda p: p["wall_speedup"])
                if sel:
                    ax.plot([p["wall_speedup"] for p in sel], [100 * p["metric"] for p in sel], marker="o",
                            label=f"{name} {variant} {fam}")
    ax.set_xlabel("measured wall-clock speedup vs PyTorch eager full depth (batch 1)")
    ax.set_ylabel(f"dev {next(iter(report['results'].values()))['metric']} (x100)")
    ax.set_title(f"nanotrt early exit: {report['task']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> None:
    """JSON + Markdown (+ PNG when there is a sweep) into ``out``, each file written atomically."""
    stem = out / f"bench-{report['task']}"
    write_json(stem.with_suffix(".json"), report)
    with atomic_file(stem.with_suffix(".md")) as tmp:
        tmp.write_text(to_markdown(report))
    if any(res["sweeps"] for res in report["results"].values()):
        with atomic_file(stem.with_suffix(".png")) as tmp:
            plot(report, tmp)
    console.print(f"report written to {stem}.{{json,md{',png' if report['results'] else ''}}}")
