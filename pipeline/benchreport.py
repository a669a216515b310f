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
    if "whole" not in m.graphs or not m.data.get("checkpoint"):
        raise NanotrtError(f"artifact '{art}' lacks the one-graph baseline or checkpoint: export it with "
                           "`nanotrt export CKPT -o ART --whole`")
    exit = exit or DEFAULT_EXIT[m.task_type]
    int8 = "ort-int8" in m.variants
    fp32 = "ort-fp32" if "ort-fp32" in m.variants else "fp32"  # the built (optimized) graphs when present
    report: dict[str, Any] = {"task": t.name, "artifact": str(art), "exit": exit, "budget": budget,
                              "batch_size": batch_size, "layers": m.num_layers, "machine": machine_info(),
                              "date": time.strftime("%Y-%m-%d %H:%M"), "results": {}}
    for name in tasks:
        base: dict[str, Any] = {"artifact": str(art), "task": name, "data_dir": data_dir, "limit": limit,
                                "threads": threads}
        rows = [
            RowSpec("1 torch eager, full", "torch-full", **base),
            RowSpec(f"2 torch eager, {exit}", "torch-exit", exit=exit, **base),
            RowSpec("3 ORT one graph", "ort-whole", **base),
            RowSpec("4 nanotrt full, all resident", "runner", variant=fp32, **base),
            RowSpec(f"5 nanotrt fp32 {exit} @{budget}", "runner", exit=exit, budget=budget, variant=fp32, **base),
        ]
        if int8:
            rows.append(RowSpec(f"5 nanotrt int8 {exit} @{budget}", "runner", exit=exit, budget=budget,
                                variant="ort-int8", **base))
        if budget == "all":  # also show the memory side: the same exit, streamed under a 2-layer budget
            rows.append(RowSpec(f"6 nanotrt {'int8' if int8 else 'fp32'} {exit} @2layers", "runner", exit=exit,
                                budget="2layers", variant="ort-int8" if int8 else fp32, **base))
        if batch_size > 1:
            rows += [
                RowSpec(f"B torch eager, full, batch {batch_size}", "torch-full", batch_size=batch_size, **base),
                RowSpec(f"B nanotrt full, batch {batch_size}", "runner", batch_size=batch_size, variant=fp32, **base),
                RowSpec(f"B nanotrt fp32 {exit}, batch {batch_size}", "runner", exit=exit, batch_size=batch_size,
                        budget=budget, variant=fp32, **base),
            ]
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
        ref = results[0]
        for r in results:
            r["wall_speedup"] = r["throughput"] / ref["throughput"] if not r["row"].startswith("B") else (
                r["throughput"] / results[-3]["throughput"])
        for pts in sweeps.values():
            for p in pts:
                p["wall_speedup"] = p["throughput"] / ref["throughput"]
        report["results"][name] = {"metric": get_task(name).main_metric, "rows": results, "sweeps": sweeps}
    if out:
        write_report(report, Path(out))
    return report


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    for name, res in report["results"].items():
        table = Table(title=f"{name} dev · exit {report['exit']} · budget {report['budget']}")
        for col in ("row", res["metric"], "avg exit", "layer x", "wall x", "p50 ms", "p95 ms", "ex/s",
                    "peak RSS", "engines", "load s"):
            table.add_column(col, justify="left" if col == "row" else "right")
        for r in res["rows"]:
            table.add_row(r["row"], f"{100 * r['metric']:.2f}", f"{r['avg_exit_layer']:.2f}",
                          f"{r['layer_speedup']:.2f}", f"{r['wall_speedup']:.2f}", f"{r['p50_ms']:.2f}",
                          f"{r['p95_ms']:.2f}", f"{r['throughput']:.1f}", _fmt_bytes(r["peak_rss_bytes"]),
                          _fmt_bytes(r.get("engine_peak_bytes")), f"{r.get('load_s', 0):.2f}")
        table_console.print(table)


def to_markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    lines = [f"# nanotrt bench: {report['task']}", "",
             f"Exit policy `{report['exit']}`, memory budget `{report['budget']}`, {report['layers']} layers, "
             f"batch size 1 unless the row says otherwise. {report['date']}.", "",
             f"Machine: {mi['cpu']}, {mi['cores']} cores, Python {mi['python']}; "
             + ", ".join(f"{k} {v}" for k, v in mi["libraries"].items()), ""]
    for name, res in report["results"].items():
        rows = res["rows"]
        full, fp32, int8 = rows[0], rows[4], rows[5] if len(rows) > 5 and "int8" in rows[5]["row"] else None
        i8_metric = "-" if int8 is None else f"{100 * int8['metric']:.2f}"
        i8_speed = "-" if int8 is None else f"{int8['wall_speedup']:.2f}x"
        lines += [f"## {name} ({res['metric']})", "",
                  "| task | metric full | with exit (fp32) | with exit (int8) | layer speedup | wall-clock speedup |",
                  "|---|---|---|---|---|---|",
                  f"| {name} | {100 * full['metric']:.2f} | {100 * fp32['metric']:.2f} | {i8_metric} | "
                  f"{fp32['layer_speedup']:.2f}x | {fp32['wall_speedup']:.2f}x (int8 {i8_speed}) |",
                  "", "| row | metric | avg exit layer | layer speedup | wall speedup vs row 1 | p50 ms | p95 ms | "
                  "ex/s | peak RSS | peak engines | load s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['row']} | {100 * r['metric']:.2f} | {r['avg_exit_layer']:.2f} | "
                         f"{r['layer_speedup']:.2f} | {r['wall_speedup']:.2f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
                         f"{r['throughput']:.1f} | {_fmt_bytes(r['peak_rss_bytes'])} | "
                         f"{_fmt_bytes(r.get('engine_peak_bytes'))} | {r.get('load_s', 0):.2f} |")
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
