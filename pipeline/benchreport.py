"""Orchestrates `nanotrt bench`: prepares the embedded default (train -> export -> build, cached), runs the
rows of ``pipeline.bench`` side by side, sweeps the exit policy, and writes JSON + Markdown + PNG."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nanotrt.pipeline.bench import RowSpec, run_child
from nanotrt.pipeline.build import WHOLE_INT8
from nanotrt.pipeline.glue import get_task, label_names, read_split, task_file
from nanotrt.runtime import variants as registry
from nanotrt.runtime.artifact import Manifest
from nanotrt.runtime.backend import check_threads
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import atomic_file, write_json
from nanotrt.runtime.profile import machine
from nanotrt.runtime.progress import console, progress, table_console

# Large train sets are subsampled for the embedded default so first use stays practical on 2 cores
# (SST-2: 16k of 67k sentences, one epoch, ~16 min here); small ones use the training defaults.
DEFAULT_TRAIN: dict[str, dict[str, Any]] = {t: {"limit": 16000, "epochs": 1.0} for t in ("sst2", "qqp", "mnli", "qnli")}
# Train rows kept out of training: `calibrate-exit` (and `plan`) choose the default exit on them, never on dev.
DEFAULT_HOLDOUT = 1000
DEFAULT_EXIT = {"classification": "patience=3", "regression": "patience=2,delta=0.1"}


def default_exit(task_type: str, layers: int) -> str:
    """The built-in bench exit, with patience capped below the depth (a patience that can never fire is
    refused by the policy parser; tiny test models have 3 layers)."""
    spec = DEFAULT_EXIT[task_type]
    head, _, rest = spec.partition(",")
    patience = min(int(head.split("=")[1]), max(layers - 1, 1))
    return f"patience={patience}" + (f",{rest}" if rest else "")


def sweep_specs(task_type: str, n_layers: int) -> list[str]:
    """Exit settings swept, plus fixed depth 1..N-1: the smaller model early exit has to beat."""
    depth = [f"depth={d}" for d in range(1, n_layers)]
    pat = [f"patience={p}" for p in range(1, max(2, n_layers - 1))]
    if task_type == "regression":
        return [f"{p},delta=0.1" for p in pat] + depth
    return pat + [f"entropy={t}" for t in (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)] + depth


# The demo artifact has every ONNX Runtime variant `nanotrt build --int8 --dynamic --fused --swap` makes.
DEMO_VARIANTS = tuple(s.name for s in registry.build_targets("onnxruntime", False, True, True, True, True))


def prepare_default(task: str, data_dir: str | None = None, root: Path | None = None) -> Path:
    """The demo model trained with off-ramps on ``task``, exported (with the one-graph baseline) and
    built to INT8 (static, dynamic, and the whole graph's dynamic INT8 baseline) and fused layer+ramp
    variants, cached and reused."""
    from nanotrt.pipeline.demo import cache_dir, demo_model_dir

    t = get_task(task)
    name = "mnli" if t.name == "mnli-mm" else t.name
    root = root or cache_dir() / f"minilm-{name}"
    art = root / "artifact"
    m = Manifest.load(art) if current(art) else None  # one made by an older nanotrt is re-exported (not re-trained)
    if m and m.labels != label_names(m.task, m.labels):  # cached before label names: the file's "0"/"1"
        m.data["labels"] = label_names(m.task, m.labels)
        m.save()
    if m and set(DEMO_VARIANTS) <= set(m.variants) and WHOLE_INT8 in m.graphs:
        ensure_plans(art, name, data_dir)
        return art
    task_file(t, "train", data_dir)  # clear error before minutes of work
    from nanotrt.pipeline.build import build
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.train import TrainConfig, train

    if m is None or "whole" not in m.graphs:
        ckpt = root / "checkpoint"
        if not (ckpt / "nanotrt.json").is_file():
            console.print(f"[bold]first use:[/] training the demo model with off-ramps on {name} (cached in {root})")
            rows = len(read_split(get_task(name), "train", data_dir))  # a small task keeps most rows for training
            train(demo_model_dir(), ckpt, TrainConfig(task=name, data_dir=data_dir, holdout=min(DEFAULT_HOLDOUT, rows // 8),
                                                      **DEFAULT_TRAIN.get(name, {})))
        export_model(ckpt, art, whole=True)
    # Idempotent: builds only what is missing (an artifact cached by an older nanotrt gains the INT8 baseline).
    build(art, int8=True, dynamic=True, fused=True, swap=True, calib_task=name, data_dir=data_dir)
    ensure_plans(art, name, data_dir)
    return art


# The plans the bench runs, as (folder beside the artifact or None for the artifact itself, make_plan
# arguments): the default plans per precision, the no-exit plan, the plan for a 2-layer budget. The extra
# ones live in copies of the artifact (one plan per source variant and artifact; onnx refuses hard-linked
# external data).
BENCH_PLANS: list[tuple[str | None, dict[str, Any]]] = [
    (None, {"precision": "fp32"}), (None, {"precision": "int8"}), (None, {"precision": "int8", "dynamic": True}),
    ("noexit", {"precision": "fp32", "exits": False}), ("noexit", {"precision": "int8", "dynamic": True, "exits": False}),
    ("2layers", {"precision": "int8", "memory_budget": "2layers"}),
]


def current(art: Path) -> bool:
    """Whether ``art`` holds a manifest of this nanotrt's format version (an older cache is remade)."""
    import json

    from nanotrt.runtime.artifact import FORMAT_VERSION

    try:
        return json.loads((art / "manifest.json").read_text()).get("format_version") == FORMAT_VERSION
    except (OSError, ValueError, AttributeError):
        return False


def plan_copy(art: Path, which: str | None) -> Path:
    return art if which is None else art.parent / f"artifact-{which}"


def ensure_plans(art: Path, task: str, data_dir: str | None, max_loss: float = 0.5) -> None:
    """The calibrated default exit and the bench's plans, made once (all from held-out train rows)."""
    import shutil

    from nanotrt.pipeline.calibrate_exit import calibrate_exit
    from nanotrt.pipeline.plan import make_plan, plan_source

    if "default_exit" not in Manifest.load(art).data:
        calibrate_exit(art, task, max_loss=max_loss, data_dir=data_dir)
    for which, kwargs in BENCH_PLANS:
        target = plan_copy(art, which)
        if not current(target):
            shutil.rmtree(target, ignore_errors=True)
            tmp = target.with_name(target.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(art, tmp)
            tmp.rename(target)
        m = Manifest.load(target)
        spec = registry.plan_of(plan_source(m, kwargs["precision"], "onnxruntime", kwargs.get("dynamic", False)))
        assert spec is not None  # every plan source has its plan kind (runtime/variants.py)
        rec = m.data["variants"].get(spec.name, {}).get("plan", {})
        if rec.get("exits") != kwargs.get("exits", True) or rec.get("memory_budget") != kwargs.get("memory_budget", "all"):
            make_plan(target, max_loss=max_loss, task=task, data_dir=data_dir, **kwargs)


def per_layer_variant(m: Manifest, precision: str) -> str | None:
    """The best variant that walks layer by layer (what ran before plans)."""
    return next((v for v in m.variant_choices(precision) if registry.get(v).kind != "plan"), None)


def bench_rows(exit: str | None, budget: str, batch_size: int, m: Manifest, base: dict[str, Any]) -> list[RowSpec]:
    """The rows of one bench run. ``exit`` None: runner rows run their variant's own rule ("default": a plan's
    rule, re-chosen on its live ramps, else the calibrated default_exit) and the best variant at their precision
    (a plan when the artifact has one), as `nanotrt predict` does; named rows show what the plan replaced."""
    rule, art = exit or "default", Path(base["artifact"])
    ref = exit or m.data.get("default_exit") or default_exit(m.task_type, m.num_layers)
    int8 = bool(m.variant_choices("int8"))
    dyn = next((v for v in ("ort-int8-dynamic-plan", "ort-int8-dynamic") if v in m.variants), None)
    other = {w: {**base, "artifact": str(plan_copy(art, w))} for w in ("noexit", "2layers")}
    rows = [
        RowSpec("1 torch eager, full", "torch-full", key="torch-full", **base),
        RowSpec(f"2 torch eager, {ref}", "torch-exit", key="torch-exit", exit=ref, **base),
        RowSpec("3 ORT one graph", "ort-whole", key="ort-whole", **base),
    ]
    if int8:  # the INT8 baseline: what a user gets from ORT's quantize_dynamic on the whole graph
        rows.append(RowSpec("3 ORT one graph, dynamic INT8", "ort-whole", key="ort-whole-int8", graph=WHOLE_INT8, **base))
    rows += [RowSpec("4 nanotrt full, per layer", "runner", key="full", variant=per_layer_variant(m, "fp32"), **base),
             RowSpec("4 nanotrt full, no-exit plan", "runner", key="plan-noexit", exit=rule, **other["noexit"]),
             RowSpec(f"5 nanotrt fp32 per layer, {ref}", "runner", key="exit-fp32-per-layer", exit=ref,
                     variant=per_layer_variant(m, "fp32"), budget=budget, **base),
             RowSpec(f"5 nanotrt fp32 {rule} @{budget}", "runner", key="exit-fp32", exit=rule, budget=budget, **base)]
    if int8:
        rows += [RowSpec(f"5 nanotrt int8 {rule} @{budget}", "runner", key="exit-int8", exit=rule, budget=budget,
                         precision="int8", **base),
                 RowSpec("4 nanotrt int8 dynamic, no-exit plan", "runner", key="plan-noexit-int8-dynamic", exit=rule,
                         variant=dyn, **other["noexit"])]
    if dyn:  # the same quantization method as the INT8 one-graph baseline
        rows.append(RowSpec(f"5 nanotrt int8 dynamic {rule} @{budget}", "runner", key="exit-int8-dynamic", exit=rule,
                            budget=budget, variant=dyn, **base))
    if budget == "all":  # the memory side: the same exit under a 2-layer budget (a plan made for it, if any)
        prec = "int8" if int8 else "fp32"
        rows += [RowSpec(f"6 nanotrt {prec} {rule} @2layers, plan for 2 layers", "runner", key="stream", exit=rule,
                         budget="2layers", precision=prec, **other["2layers"]),
                 RowSpec(f"6 nanotrt {prec} {rule} @2layers, per layer", "runner", key="stream-per-layer", exit=rule,
                         budget="2layers", precision=prec, **base)]
    if batch_size > 1:
        b = {"batch_size": batch_size, **base}
        rows += [RowSpec(f"B torch eager, full, batch {batch_size}", "torch-full", key="b-torch-full", **b),
                 RowSpec(f"B ORT one graph, batch {batch_size}", "ort-whole", key="b-ort-whole", **b),
                 RowSpec(f"B nanotrt full, per layer, batch {batch_size}", "runner", key="b-full",
                         variant=per_layer_variant(m, "fp32"), **b),
                 RowSpec(f"B nanotrt fp32 {rule}, batch {batch_size}", "runner", key="b-exit-fp32", exit=rule,
                         budget=budget, **b)]
        if int8:
            rows.insert(-2, RowSpec(f"B ORT one graph, dynamic INT8, batch {batch_size}", "ort-whole",
                                    key="b-ort-whole-int8", graph=WHOLE_INT8, **b))
        if dyn:
            rows.append(RowSpec(f"B nanotrt int8 dynamic {rule}, batch {batch_size}", "runner", key="b-exit-int8-dynamic",
                                exit=rule, budget=budget, variant=dyn, **b))
    return rows


def runtime_rows(exit: str | None, batch_size: int, int8: bool, best_fp32: str, base: dict[str, Any]) -> list[RowSpec]:
    """Issue 11's rows: the per-layer split without the fused product when that is the best per-layer variant,
    and the 2-layer streaming exit over the whole split in block mode (layer-major) next to all-resident."""
    rows, rule = [], exit or "default"
    spec = registry.get(best_fp32)
    if spec.kind == "fused":
        rows.append(RowSpec("4 nanotrt full, unfused, all resident", "runner", key="full-unfused",
                            variant=spec.source, **base))
    prec, bs = "int8" if int8 else "fp32", max(batch_size, 8)
    rows += [RowSpec(f"7 nanotrt {prec} {rule} @2layers, block mode, batch {bs}", "runner", key="stream-block",
                     exit=rule, budget="2layers", precision=prec, mode="block", batch_size=bs, **base),
             RowSpec(f"7 nanotrt {prec} {rule} @all, batch {bs}", "runner", key="block-all", exit=rule,
                     precision=prec, mode="block", batch_size=bs, **base)]
    return rows


def skip_reason(spec: RowSpec, m: Manifest) -> str | None:
    """None when the artifact can run ``spec``; else the command that makes it able to."""
    if spec.kind.startswith("torch") and not m.data.get("checkpoint"):
        return "export with the PyTorch checkpoint kept: `nanotrt export CKPT -o ART --torch-reference`"
    if spec.kind == "ort-whole" and "whole" not in m.graphs:
        return "export the one-graph baseline too: `nanotrt export CKPT -o ART --whole`"
    if spec.kind == "ort-whole" and spec.graph not in m.graphs:
        return "build the INT8 one-graph baseline: `nanotrt build ART --int8 --calib-task TASK`"
    if spec.kind == "runner" and Path(spec.artifact) != m.root and not (Path(spec.artifact) / "manifest.json").is_file():
        return f"make the plan this row runs: `nanotrt plan` on a copy of the artifact ({Path(spec.artifact).name})"
    if spec.kind == "runner" and spec.variant is not None and spec.variant not in Manifest.load(spec.artifact).variants:
        return f"build the {spec.variant} variant: `{registry.get(spec.variant).command('ART')}`"
    return None


def row(results: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    return next((r for r in results if r.get("key") == key), None)


def add_ratios(results: list[dict[str, Any]], sweeps: dict[str, list[dict[str, Any]]]) -> None:
    """``wall_speedup``: throughput against PyTorch eager at full depth at the same batch size.
    ``vs_ort``: against the ORT one-graph row of the same precision (FP32, or dynamic INT8) and the same batch
    size; block-mode rows (a whole split per call) against batch 1."""
    # Without the checkpoint (no eager rows) speedups are against the first row measured.
    eager = row(results, "torch-full") or results[0]
    eager_b = row(results, "b-torch-full") or next((r for r in results if r["key"].startswith("b-")), eager)
    ort = {(r["precision"], r.get("batch_size", 1)): r for r in results if "ort-whole" in r["key"]}
    for r in [*results, *(p for pts in sweeps.values() for p in pts)]:
        batch = 1 if r.get("mode") == "block" else r.get("batch_size", 1)
        r["wall_speedup"] = r["throughput"] / (eager_b if batch > 1 else eager)["throughput"]
        base = ort.get((r.get("precision", "fp32"), batch))
        r["vs_ort"] = r["throughput"] / base["throughput"] if base else None


def _fmt_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def run_bench(task: str, artifact: Path | None = None, exit: str | None = None, budget: str = "all",
              batch_size: int = 1, sweep: bool = False, out: Path | None = None, limit: int | None = None,
              data_dir: str | None = None, threads: int | None = None) -> dict[str, Any]:
    check_threads(threads)  # before any row: every row (eager torch too) runs with it
    t = get_task(task)
    tasks = [t.name, "mnli-mm"] if t.name == "mnli" else [t.name]
    for name in tasks:
        task_file(get_task(name), "dev", data_dir)
    art = Path(artifact) if artifact else prepare_default(t.name, data_dir)
    m = Manifest.load(art)
    if len(m.labels) != t.num_labels:
        raise NanotrtError(f"artifact '{art}' has {len(m.labels)} labels but {t.name} has {t.num_labels}: "
                           "use an artifact trained for this task")
    # Unless --exit, each runner row runs its variant's own rule: a plan's (chosen on held-out train rows),
    # else the calibrated default_exit: the dev metric here is then an honest one. Rows name what ran.
    exit_source = "--exit" if exit else ("plans and the calibrated default_exit" if m.data.get("default_exit")
                                         else "none: the artifact has no calibrated default_exit (nanotrt calibrate-exit)")
    int8s = m.variant_choices("int8")  # best first (the runner's rule), e.g. ort-int8, ort-int8-dynamic
    if int8s and "whole" in m.graphs and WHOLE_INT8 not in m.graphs:
        raise NanotrtError(f"artifact '{art}' lacks the INT8 one-graph baseline: run `nanotrt build {art} --int8 "
                           f"--calib-task {t.name}` (builds only what is missing)")
    report: dict[str, Any] = {"task": t.name, "artifact": str(art), "exit": exit or "default", "exit_source": exit_source,
                              "exit_calibration": m.data.get("exit_calibration"), "budget": budget,
                              "batch_size": batch_size, "layers": m.num_layers, "machine": machine(),
                              "variants": {"fp32": m.best_variant("fp32"), "int8": int8s[0] if int8s else None},
                              "date": time.strftime("%Y-%m-%d %H:%M"), "results": {}}
    for name in tasks:
        base: dict[str, Any] = {"artifact": str(art), "task": name, "data_dir": data_dir, "limit": limit,
                                "threads": threads}
        rows = bench_rows(exit, budget, batch_size, m, base)
        if budget == "all":  # before the batched rows
            at = next((i for i, r in enumerate(rows) if r.key.startswith("b-")), len(rows))
            rows[at:at] = runtime_rows(exit, batch_size, bool(int8s), per_layer_variant(m, "fp32") or "fp32", base)
        skipped = [{"row": r.name, "enable": why} for r in rows if (why := skip_reason(r, m)) is not None]
        rows = [r for r in rows if skip_reason(r, m) is None]
        results: list[dict[str, Any]] = []
        with progress() as bar:
            job = bar.add_task(f"bench {name}", total=len(rows) + (2 if sweep else 0), info="")
            for spec in rows:
                bar.update(job, info=spec.name)
                res = run_child(spec)
                res["row"], res["key"], res["batch_size"] = spec.name, spec.key, spec.batch_size
                res.setdefault("exit", spec.exit if spec.kind == "torch-exit" else "none")
                results.append(res)
                bar.advance(job)
            sweeps: dict[str, list[dict[str, Any]]] = {}
            if sweep:
                specs = sweep_specs(m.task_type, m.num_layers)
                for precision in ["fp32", *(["int8"] if int8s else [])]:
                    variant = per_layer_variant(m, precision) or report["variants"][precision]
                    bar.update(job, info=f"sweep {variant}")
                    sweeps[variant] = run_child(RowSpec(f"sweep {variant}", "runner", precision=precision, variant=variant,
                                                        budget=budget, sweep=specs, **base))
                    bar.advance(job)
        add_ratios(results, sweeps)
        task_metrics = list(get_task(name).metrics)
        report["results"][name] = {"metric": task_metrics[0], "metrics": task_metrics, "rows": results,
                                   "sweeps": sweeps, "skipped": skipped}
    if out:
        write_report(report, Path(out))
    return report


def _metrics(r: dict[str, Any], names: list[str]) -> list[str]:
    return [f"{100 * r['metrics'][k]:.2f}" for k in names]


def _x(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def print_table(report: dict[str, Any]) -> None:
    from rich.table import Table

    for name, res in report["results"].items():
        names = res["metrics"]
        table = Table(title=f"{name} dev · exit {report['exit']} · budget {report['budget']}",
                      caption=_main_note(name, names))
        for col in ("row", "variant", "exit", *names, "avg exit", "layer x", "wall x", "vs ORT", "p50 ms", "p95 ms",
                    "ex/s", "peak RSS", "engines", "load s"):
            table.add_column(col, justify="left" if col in ("row", "variant", "exit") else "right")
        for r in res["rows"]:
            table.add_row(r["row"], r.get("variant", "-"), r.get("exit", "-"), *_metrics(r, names), f"{r['avg_exit_layer']:.2f}",
                          f"{r['layer_speedup']:.2f}", f"{r['wall_speedup']:.2f}", _x(r.get("vs_ort")),
                          f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['throughput']:.1f}",
                          _fmt_bytes(r["peak_rss_bytes"]), _fmt_bytes(r.get("engine_peak_bytes")),
                          f"{r.get('load_s', 0):.2f}")
        table_console.print(table)
        if calibration_line(report):
            table_console.print(calibration_line(report))
        for sk in res.get("skipped", []):
            table_console.print(f"skipped: {sk['row']} -- {sk['enable']}")


def calibration_line(report: dict[str, Any]) -> str:
    """How the calibrated default was chosen: point loss, its upper bound and the rows they rest on."""
    cal = report.get("exit_calibration") or {}
    if report.get("exit_source") != "calibrated default_exit" or "bound" not in cal:
        return ""
    unit = "% of rows disagreeing with full depth" if cal.get("criterion") == "agreement" else "points"
    return (f"Calibrated on {cal['rows']} held-out rows: loss {cal['loss']:.2f} {unit}, upper bound "
            f"{cal['bound']:.2f} at confidence {cal['confidence']:g} (--max-loss {cal['max_loss']:g}). {cal['note']}.")


def _main_note(task: str, names: list[str]) -> str:
    if len(names) == 1:
        return f"metric: {names[0]}"
    return f"exit-vs-full comparisons use {names[0]}, GLUE's first-listed metric for {task}"


def _summary_lines(name: str, res: dict[str, Any]) -> list[str]:
    """One line per task: both metrics where GLUE has two, speed against eager and against the ORT one
    graph at the same precision (FP32; dynamic INT8)."""
    rows, names = res["rows"], res["metrics"]
    full, fp32, int8 = row(rows, "torch-full") or rows[0], row(rows, "exit-fp32"), row(rows, "exit-int8")
    if fp32 is None:
        return []

    def pair(a: Any, b: Any, fmt: Any) -> str:
        return f"{fmt(a)} / {fmt(b)}" if int8 is not None else fmt(a)

    both = " / ".join(names)
    return [
        f"| task | {both}: full depth | {both}: with exit, fp32 | {both}: with exit, int8 | layer speedup | "
        "wall-clock speedup vs eager, fp32 / int8 | vs ORT one graph at the same precision, fp32 / int8 |",
        "|---|---|---|---|---|---|---|",
        f"| {name} | {' / '.join(_metrics(full, names))} | {' / '.join(_metrics(fp32, names))} | "
        f"{' / '.join(_metrics(int8, names)) if int8 else '-'} | {fp32['layer_speedup']:.2f}x | "
        f"{pair(fp32['wall_speedup'], int8 and int8['wall_speedup'], _x)} | "
        f"{pair(fp32.get('vs_ort'), int8 and int8.get('vs_ort'), _x)} |",
    ]


def _plan_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The plans the rows ran: segments (layers, * = live ramp), predicted vs measured latency at batch 1."""
    out = ["", "Plans (`nanotrt plan`, chosen on held-out train rows; segments of layers, * = live ramp):", "",
           "| row | segments | live ramps | exit | predicted ms/example | measured p50 ms | planned for |",
           "|---|---|---|---|---|---|---|"]
    seen = [r for r in rows if r.get("plan")]
    for r in seen:
        p = r["plan"]
        measured = f"{r['p50_ms']:.2f}" if r.get("batch_size", 1) == 1 and r.get("mode") != "block" else "-"
        out.append(f"| {r['row']} | {' '.join(p['segments'])} | {p['live_ramps']} | `{r.get('exit')}` | "
                   f"{p['predicted_ms']:.2f} | {measured} | {p['planned_for']} |")
    return out if seen else []


def to_markdown(report: dict[str, Any]) -> str:
    mi = report["machine"]
    variants = report.get("variants", {})
    lines = [f"# nanotrt bench: {report['task']}", "",
             f"Exit policy `{report['exit']}` ({report.get('exit_source', '--exit')}), memory budget `{report['budget']}`, {report['layers']} layers, "
             f"batch size 1 unless the row says otherwise. {report['date']}.", "",
             *([calibration_line(report), ""] if calibration_line(report) else []),
             "Runner rows run the artifact's best variant at their precision, as `nanotrt predict` does "
             + f"(fp32: `{variants.get('fp32')}`, int8: `{variants.get('int8')}`). "
             "\"vs ORT one graph\": throughput against the whole model as one ONNX Runtime graph at the same "
             "precision (FP32; INT8 rows against the whole graph through ORT's `quantize_dynamic`, per-channel).",
             "", f"Machine: {mi['cpu']}, {mi['cores']} cores, Python {mi['python']}; "
             + ", ".join(f"{k} {v}" for k, v in mi["libraries"].items()), ""]
    for name, res in report["results"].items():
        names = res["metrics"]
        lines += [f"## {name} ({', '.join(names)})", "", _main_note(name, names) + ".", "",
                  *_summary_lines(name, res), "",
                  "| row | variant | exit | " + " | ".join(names) + " | avg exit layer | layer speedup | wall speedup vs "
                  "eager | vs ORT one graph | p50 ms | p95 ms | ex/s | peak RSS | peak engines | peak activations | load s |",
                  "|---" * (14 + len(names)) + "|"]
        for r in res["rows"]:
            lines.append(f"| {r['row']} | {r.get('variant', '-')} | `{r.get('exit', '-')}` | {' | '.join(_metrics(r, names))} | "
                         f"{r['avg_exit_layer']:.2f} | {r['layer_speedup']:.2f} | {r['wall_speedup']:.2f} | "
                         f"{_x(r.get('vs_ort'))} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['throughput']:.1f} | "
                         f"{_fmt_bytes(r['peak_rss_bytes'])} | {_fmt_bytes(r.get('engine_peak_bytes'))} | "
                         f"{_fmt_bytes(r.get('activation_peak_bytes'))} | {r.get('load_s', 0):.2f} |")
        if res.get("skipped"):
            lines += ["", "Skipped (the artifact lacks what they need):", ""]
            lines += [f"- {sk['row']}: {sk['enable']}" for sk in res["skipped"]]
        lines += _plan_lines(res["rows"])
        lines += ["", "Rows 7 walk the whole split in one `predict(mode=\"block\")` call (layer-major under the "
                  "budget); their p50/p95 are the mean time per example."]
        for variant, pts in res["sweeps"].items():
            lines += ["", f"Sweep ({variant}):", "", "| exit | " + " | ".join(names)
                      + " | avg exit | wall speedup | vs ORT one graph |", "|---" * (4 + len(names)) + "|"]
            lines += [f"| {p['exit']} | {' | '.join(_metrics(p, names))} | {p['avg_exit_layer']:.2f} | "
                      f"{p['wall_speedup']:.2f} | {_x(p.get('vs_ort'))} |" for p in pts]
        lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, res in report["results"].items():
        full = row(res["rows"], "torch-full") or res["rows"][0]
        ax.axhline(100 * full["metric"], ls="--", lw=0.8, color="gray")
        for variant, pts in res["sweeps"].items():
            for fam in ("patience", "entropy", "depth"):
                sel = sorted((p for p in pts if p["exit"].startswith(fam)), key=lambda p: p["wall_speedup"])
                if sel:
                    ax.plot([p["wall_speedup"] for p in sel], [100 * p["metric"] for p in sel],
                            marker="s" if fam == "depth" else "o", ls=":" if fam == "depth" else "-",
                            label=f"{name} {variant} {'fixed depth' if fam == 'depth' else fam}")
    ax.set_xlabel("measured wall-clock speedup vs PyTorch eager full depth (batch 1)")
    ax.set_ylabel(f"dev {next(iter(report['results'].values()))['metric']} (x100)")
    ax.set_title(f"nanotrt early exit: {report['task']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """JSON + Markdown (+ PNG when there is a sweep) into ``out``, each file written atomically; returns them."""
    stem = out / f"bench-{report['task']}"
    written = [stem.with_suffix(".json"), stem.with_suffix(".md")]
    write_json(written[0], report)
    with atomic_file(written[1]) as tmp:
        tmp.write_text(to_markdown(report))
    if any(res["sweeps"] for res in report["results"].values()):
        written.append(stem.with_suffix(".png"))
        with atomic_file(written[2]) as tmp:
            plot(report, tmp)
    console.print(f"report written to {', '.join(str(p) for p in written)}")
    return written
