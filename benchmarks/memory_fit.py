"""Which models fit in how much memory, at what latency (issue 15: the table the project was founded on).

    python benchmarks/memory_fit.py [--models bert-base,bert-large,...] [--examples 12] [--lock FILE]

Models: BERT-base, BERT-large, RoBERTa-base, ALBERT-base, DistilBERT-base as random-weight shapes with their
real tokenizers (../shared/data/tokenizers), and the demo MiniLM-L6 trained on CoLA (real weights: its rows
carry the CoLA dev metric; ``--models minilm-l6-sst2`` adds the SST-2 demo). Rows per model, each in its own child process so its peak RSS (VmHWM) is its own:
PyTorch eager FP32 · one ORT graph FP32 · one ORT graph dynamic INT8 · nanotrt all resident, FP32 and INT8 ·
nanotrt at budgets of 4, 2 and 1 layers, FP32 and INT8 · the swap variants (`nanotrt build --swap`: weights
mapped per swap) at 2 layers. Memory per row: VmHWM (peak RSS) and the sampled peak of RssAnon (anonymous memory,
what the kernel cannot reclaim) beside RssFile (file-backed pages: mapped weights, libraries), memstat.py. nanotrt's INT8 is the `ort-int8-dynamic` build (the
same ORT dynamic quantization as the one-graph INT8 row, no calibration data: a random-weight shape has no
meaningful calibration set). Latency is batch 1, p50 over ``--examples`` inputs after warm-up, at ~25
tokens (SST-2 dev sentences) and at 128 tokens.

Exports and builds are cached under the nanotrt cache dir (``$NANOTRT_CACHE``, else ~/.cache/nanotrt)
in ``memory-fit/<model>``; every run re-measures every row. ``--lock FILE`` takes an exclusive flock on FILE
around each model's export/build and around each model's rows (a machine shared with other benchmarks); do not also wrap the whole
command in ``flock`` on the same file. Writes memory_fit.{json,md,png} into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.runtime.profile import proc_status_bytes as rss_bytes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
TOKENIZERS = ROOT.parent / "shared" / "data" / "tokenizers"
CAPS = {"256 MB": 256e6, "512 MB": 512e6, "1 GB": 1e9, "2 GB": 2e9}  # decimal: stricter than MiB/GiB
WARMUP = 2
WHOLE_INT8_RECIPE = 2  # part of the one-graph INT8 cache key: bump when quantize_whole changes
ACCURACY_BATCH = 32
RUNNER_VARIANT = {"fp32": "ort-fp32", "int8": "ort-int8-dynamic"}
TARGETS = [  # issue 15: (model, row, cap in bytes)
    ("bert-base", "nanotrt FP32, 2 layers", 200e6),
    ("bert-base", "nanotrt INT8, 2 layers", 130e6),
    ("bert-large", "nanotrt INT8, 2 layers", 512e6),
]


# --------------------------------------------------------------------------------------------
# models: random-weight shapes and the demo model, each prepares (exports, builds) itself once
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandomShape:
    label: str
    family: str  # HF model_type
    tokenizer: str  # folder under ../shared/data/tokenizers
    config: dict[str, Any]
    accuracy: str | None = None  # no task: random weights

    def make_hf(self, out: Path) -> None:
        import torch
        from nanotrt.runtime.fsutil import atomic_dir
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        torch.manual_seed(0)
        cfg = AutoConfig.for_model(self.family, num_labels=2, **self.config)
        with atomic_dir(out) as tmp:
            AutoModelForSequenceClassification.from_config(cfg).save_pretrained(str(tmp))
            AutoTokenizer.from_pretrained(str(TOKENIZERS / self.tokenizer)).save_pretrained(str(tmp))

    def prepare(self, root: Path, data_dir: str | None) -> dict[str, Any]:
        from nanotrt.pipeline.export import export_model
        from nanotrt.runtime.artifact import Manifest

        hf, art = root / "hf", root / "artifact"
        if not (hf / "config.json").is_file():
            self.make_hf(hf)
        if not (art / "manifest.json").is_file() or "whole" not in Manifest.load(art).graphs:
            export_model(hf, art, whole=True, include_checkpoint=False)
        return {"artifact": str(art), "torch_loader": "hf", "torch_path": str(hf)}


@dataclass(frozen=True)
class DemoModel:
    label: str
    task: str
    accuracy: str | None = "task"

    def prepare(self, root: Path, data_dir: str | None) -> dict[str, Any]:
        """The demo artifact (trained, exported, built on first use by `nanotrt bench`), copied here so
        adding the dynamic INT8 variant never touches the copy other commands use."""
        from nanotrt.pipeline.benchreport import prepare_default
        from nanotrt.runtime.artifact import Manifest
        from nanotrt.runtime.fsutil import atomic_dir

        src = prepare_default(self.task, data_dir)
        stamp = Manifest.load(src).graphs["whole"]["sha256"]
        art = root / "artifact"
        if not (art / "manifest.json").is_file() or Manifest.load(art).graphs["whole"]["sha256"] != stamp:
            with atomic_dir(art) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True)
        ckpt = Manifest.load(art).data["checkpoint"]
        return {"artifact": str(art), "torch_loader": "nanotrt", "torch_path": str(art / ckpt), "task": self.task}


BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
MODELS: dict[str, RandomShape | DemoModel] = {
    "bert-base": RandomShape("BERT-base", "bert", "bert-base-uncased", dict(BERT_BASE, vocab_size=30522)),
    "bert-large": RandomShape("BERT-large", "bert", "bert-base-uncased",  # bert-large-uncased: same vocab
                              dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                   intermediate_size=4096, vocab_size=30522)),
    "roberta-base": RandomShape("RoBERTa-base", "roberta", "roberta-base",
                                dict(BERT_BASE, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                     pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)),
    "albert-base": RandomShape("ALBERT-base", "albert", "albert-base-v2",
                               dict(BERT_BASE, vocab_size=30000, embedding_size=128, num_hidden_groups=1,
                                    inner_group_num=1)),
    "distilbert-base": RandomShape("DistilBERT-base", "distilbert", "bert-base-uncased",  # same vocab
                                   dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072, vocab_size=30522)),
    "minilm-l6": DemoModel("MiniLM-L6 (demo, CoLA)", "cola"),
    "minilm-l6-sst2": DemoModel("MiniLM-L6 (demo, SST-2)", "sst2"),  # not by default: the same shape again
}
DEFAULT_MODELS = ["bert-base", "bert-large", "roberta-base", "albert-base", "distilbert-base", "minilm-l6"]


def quantize_whole(art: Path, out: Path, texts: list[str]) -> dict[str, Any]:
    """The one-graph INT8 baseline: ORT dynamic quantization of the whole graph (the same weight MatMuls
    nanotrt quantizes per layer), checked against the FP32 graph; cached by the FP32 graph's sha256."""
    from nanotrt.calibration.quantize import quantize_dynamic_int8, relative_error
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.fsutil import atomic_file, write_json
    from nanotrt.runtime.tokenize import Tokenizer

    m = Manifest.load(art)
    info_path = out.with_suffix(".json")
    sha = m.graphs["whole"]["sha256"]
    stamp = {"source_sha256": sha, "recipe": WHOLE_INT8_RECIPE}
    if out.is_file() and info_path.is_file():
        cached = json.loads(info_path.read_text())
        if {k: cached.get(k) for k in stamp} == stamp:
            return dict(cached)
    with atomic_file(out) as tmp:  # folds ALBERT's Identity-routed shared weights first (calibration.quantize)
        quantize_dynamic_int8(m.verify("whole"), tmp)
    tok = Tokenizer.from_manifest(m)
    batches = [tok(texts[i:i + 4]) for i in range(0, len(texts), 4)]
    info = {**stamp, "bytes": out.stat().st_size,
            "rel_error_vs_fp32": relative_error(m.verify("whole"), out, batches)}
    write_json(info_path, info)
    return info


def prepare(name: str, root: Path, data_dir: str | None) -> dict[str, Any]:
    """Export / build / quantize what ``name``'s rows need (each step a no-op when cached)."""
    from nanotrt.pipeline.build import build
    from nanotrt.pipeline.glue import read_split
    from nanotrt.runtime.artifact import Manifest

    model = MODELS[name]
    info = {"model": name, "label": model.label, **model.prepare(root, data_dir)}
    art = Path(info["artifact"])
    build(art, dynamic=True, swap=True)  # ort-fp32 (optimized), ort-int8-dynamic, their swap variants; cached
    sample = read_split("sst2", "dev", data_dir, limit=8).texts
    q = quantize_whole(art, root / "whole-int8.onnx", sample)
    m = Manifest.load(art)
    cfg = m.data["config"]
    return {**info, "whole_int8": str(root / "whole-int8.onnx"), "whole_int8_rel_error": q["rel_error_vs_fp32"],
            "weights_bytes": int(m.graphs["whole"]["bytes"]), "whole_int8_bytes": q["bytes"],
            "layers": m.num_layers, "hidden": m.data["hidden_size"], "vocab": int(cfg["vocab_size"]),
            "family": m.family, "accuracy_task": info.get("task")}


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    name: str
    kind: str  # torch | ort | runner
    precision: str  # fp32 | int8
    budget: str | None = None  # runner only
    variant: str | None = None  # runner only: default RUNNER_VARIANT[precision]


ROWS = [Row("PyTorch eager FP32", "torch", "fp32"),
        Row("ORT one graph FP32", "ort", "fp32"),
        Row("ORT one graph INT8 (dynamic)", "ort", "int8")]
for _budget, _text in (("all", "all resident"), ("4layers", "4 layers"), ("2layers", "2 layers"), ("1layer", "1 layer")):
    ROWS += [Row(f"nanotrt FP32, {_text}", "runner", "fp32", _budget), Row(f"nanotrt INT8, {_text}", "runner", "int8", _budget)]
ROWS += [Row("nanotrt FP32 swap, 2 layers", "runner", "fp32", "2layers", "ort-fp32-swap"),
         Row("nanotrt INT8 swap, 2 layers", "runner", "int8", "2layers", "ort-int8-dynamic-swap")]


# --------------------------------------------------------------------------------------------
# child side: one row, one process. Each loader returns infer(texts) -> logits, held() -> bytes dict,
# and the tokenizer it uses.
# --------------------------------------------------------------------------------------------

Infer = Callable[[list[str]], np.ndarray]


def rss_breakdown(top: int = 6) -> dict[str, Any]:
    """Resident bytes now: anonymous vs file-backed (memory maps), and the largest mappings by name."""
    import re

    per: dict[str, int] = {}
    name = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            parts = line.split()
            name = Path(parts[5]).name if len(parts) > 5 else "[anon]"
        elif line.startswith("Rss:"):
            per[name] = per.get(name, 0) + int(line.split()[1]) * 1024
    return {"anon": rss_bytes("RssAnon"), "file": rss_bytes("RssFile"),
            "top": sorted(per.items(), key=lambda kv: -kv[1])[:top]}


def _tokenizer(artifact: str) -> Any:
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.tokenize import Tokenizer

    m = Manifest.load(artifact)
    return Tokenizer.from_manifest(m)


def _hf_eager(path: str) -> tuple[Any, Callable[[dict[str, Any]], Any]]:
    """A plain HF classifier, the way the founding study ran it."""
    import inspect

    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in inspect.signature(model.forward).parameters]
    return model, lambda enc: model(**{k: enc[k] for k in keys}).logits


def _nanotrt_eager(path: str) -> tuple[Any, Callable[[dict[str, Any]], Any]]:
    """A nanotrt checkpoint (the demo model) at full depth through its final ramp, as `nanotrt bench` row 1."""
    from nanotrt.pipeline.model import load_model

    model = load_model(path).eval()

    def forward(enc: dict[str, Any]) -> Any:
        h = model.embed(enc["input_ids"], enc["token_type_ids"])
        for i in range(model.num_layers):
            h = model.layer(i, h, enc["attention_mask"])
        return model.ramps[-1](h, enc["attention_mask"])

    return model, forward


EAGER = {"hf": _hf_eager, "nanotrt": _nanotrt_eager}


def _torch_row(spec: dict[str, Any]) -> tuple[Infer, Callable[[], dict[str, Any]], Any]:
    import torch

    tok = _tokenizer(spec["artifact"])
    model, forward = EAGER[spec["torch_loader"]](spec["torch_path"])
    params = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    @torch.inference_mode()
    def infer(texts: list[str]) -> np.ndarray:
        enc = {k: torch.from_numpy(v) for k, v in tok(texts).items()}
        return np.asarray(forward(enc).float().numpy())

    return infer, lambda: {"weights": params, "activations": None}, tok


def _ort_row(spec: dict[str, Any]) -> tuple[Infer, Callable[[], dict[str, Any]], Any]:
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import session_options
    from nanotrt.runtime.artifact import Manifest

    m = Manifest.load(spec["artifact"])
    path = m.verify("whole") if spec["precision"] == "fp32" else Path(spec["whole_int8"])
    tok = _tokenizer(spec["artifact"])
    # ORT's defaults (each row is its own process: no shared pool there), what a user gets
    sess = ort.InferenceSession(str(path), session_options(ort), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    size = int(m.graphs["whole"]["bytes"]) if spec["precision"] == "fp32" else path.stat().st_size

    def infer(texts: list[str]) -> np.ndarray:
        enc = tok(texts)
        return np.asarray(sess.run(None, {k: enc[k] for k in names})[0])

    return infer, lambda: {"weights": size, "activations": None}, tok


def held_from_stats(cache: dict[str, Any]) -> dict[str, Any]:
    """Engine bytes the runner held at its peak, plus activation bytes (and their joint peak, what the budget
    bounds) where the runtime reports them."""
    act = cache.get("peak_activation_bytes")
    return {"engines": int(cache["peak_resident_bytes"]), "activations": None if act is None else int(act),
            "total": cache.get("peak_total_bytes"), "loads": cache.get("loads"), "load_s": cache.get("load_s"),
            "wait_s": cache.get("wait_s")}


def _runner_row(spec: dict[str, Any]) -> tuple[Infer, Callable[[], dict[str, Any]], Any]:
    from nanotrt.runtime.runner import Runner

    runner = Runner.from_artifact(spec["artifact"], memory_budget=spec["budget"], exit="none",
                                  variant=spec.get("variant") or RUNNER_VARIANT[spec["precision"]])
    last: dict[str, Any] = {}

    def infer(texts: list[str]) -> np.ndarray:
        res = runner.predict(texts, batch_size=len(texts))
        last["cache"] = res.stats.cache
        return res.logits

    return infer, lambda: {**held_from_stats(last["cache"]), "budget_bytes": runner.budget}, runner.tokenizer


LOADERS = {"torch": _torch_row, "ort": _ort_row, "runner": _runner_row}


def workloads(sentences: list[str], n: int) -> dict[str, list[str]]:
    """~25 tokens: SST-2 dev sentences as they are; 128 tokens: three of them repeated, truncated at 128."""
    long = [" ".join((t + " ") * 8 for t in sentences[i:i + 3]) for i in range(0, 3 * n, 3)]
    return {"short": sentences[:n], "long": long[:n]}


def time_workload(infer: Infer, texts: list[str], tok: Any) -> dict[str, Any]:
    for t in texts[:WARMUP]:
        infer([t])
    lat = []
    for t in texts[WARMUP:]:
        s = time.perf_counter()
        infer([t])
        lat.append(1000 * (time.perf_counter() - s))
    return {"p50_ms": float(np.median(lat)), "mean_ms": float(np.mean(lat)), "examples": len(lat),
            "tokens": float(np.mean([int(tok([t])["attention_mask"].sum()) for t in texts[WARMUP:]]))}


def accuracy(infer: Infer, task_name: str, data_dir: str | None, limit: int | None) -> dict[str, Any]:
    from nanotrt.pipeline.glue import compute_metrics, get_task, predictions_from_logits, read_split

    task = get_task(task_name)
    split = read_split(task, "dev", data_dir, limit=limit)
    logits = np.concatenate([infer(split.texts[i:i + ACCURACY_BATCH]) for i in range(0, len(split), ACCURACY_BATCH)])
    preds = predictions_from_logits(task, logits)
    metrics = compute_metrics(task, split.labels, preds)
    if not task.is_regression:
        metrics.setdefault("accuracy", float(np.mean(preds == split.labels)))
    return {"task": task.name, "metric": task.main_metric, "value": metrics[task.main_metric], "metrics": metrics,
            "examples": len(split)}


IMPORTS = {"torch": ("torch", "transformers", "onnxruntime"), "ort": ("onnxruntime",),
           "runner": ("onnxruntime", "nanotrt.runtime.runner")}


def measure_row(spec: dict[str, Any], sentences: list[str]) -> dict[str, Any]:
    """Import, load, time both workloads at batch 1 (peak RSS = up to here), then the accuracy pass if any."""
    import importlib

    from memstat import Peaks

    for mod in IMPORTS[spec["kind"]]:
        importlib.import_module(mod)
    out: dict[str, Any] = {"rss_imports": rss_bytes(), "latency": {}}
    with Peaks() as mem:
        infer, held, tok = LOADERS[spec["kind"]](spec)  # the row's own tokenizer: a second one would add to RSS
        out["rss_loaded"] = rss_bytes()
        for name, texts in workloads(sentences, spec["examples"] + WARMUP).items():
            out["latency"][name] = time_workload(infer, texts, tok)
            out[f"peak_rss_after_{name}"] = rss_bytes("VmHWM")
    out.update(peak_rss=rss_bytes("VmHWM"), peak_anon=mem.anon, peak_file=mem.file, rss_end=rss_bytes(),
               rss_end_breakdown=rss_breakdown(), held=held())
    if spec.get("task"):
        out["accuracy"] = accuracy(infer, spec["task"], spec.get("data_dir"), spec.get("accuracy_limit"))
        out["peak_rss_with_accuracy_pass"] = rss_bytes("VmHWM")
    out["torch_imported"] = "torch" in sys.modules
    return out


def child_main(spec: dict[str, Any]) -> None:
    from nanotrt.pipeline.glue import read_split

    sentences = read_split("sst2", "dev", spec.get("data_dir"), limit=3 * (spec["examples"] + WARMUP)).texts
    print(json.dumps(measure_row(spec, sentences)))


# --------------------------------------------------------------------------------------------
# parent side
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def cpu_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    try:
        p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                           timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if p.returncode != 0:  # e.g. a budget below the largest graph, or killed for memory
        lines = p.stderr.strip().splitlines() or [f"exit code {p.returncode}"]
        return {"error": lines[-1][:300]}
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------------------------
# report (pure functions of the rows)
# --------------------------------------------------------------------------------------------

def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f} MB"


def fits(r: dict[str, Any]) -> dict[str, bool]:
    ok = "error" not in r
    return {cap: ok and r["peak_rss"] <= limit for cap, limit in CAPS.items()}


def ok_rows(rows: list[dict[str, Any]], model: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["model"] == model and "error" not in r]


def latency(r: dict[str, Any], workload: str = "long") -> float:
    return float(r["latency"][workload]["p50_ms"])


def headline(models: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    """One line per cap: the largest model (FP32 weight bytes) with any row under the cap, its fastest such
    row, and what the one-graph baselines and eager need."""
    order = sorted(models, key=lambda n: -models[n]["weights_bytes"])
    lines = []
    for cap, limit in CAPS.items():
        hit = next(((n, [r for r in ok_rows(rows, n) if r["peak_rss"] <= limit]) for n in order
                    if any(r["peak_rss"] <= limit for r in ok_rows(rows, n))), None)
        if hit is None:
            low = min((r for r in rows if "error" not in r), key=lambda r: r["peak_rss"], default=None)
            lines.append(f"**in {cap}**: nothing fits" + (
                f"; the lowest peak is {models[low['model']]['label']}, {low['row']}: {mb(low['peak_rss'])}" if low else ""))
            continue
        name, fitting = hit
        best = min(fitting, key=latency)
        by_row = {r["row"]: r for r in ok_rows(rows, name)}
        base = ", ".join(f"{label} {mb(by_row[row]['peak_rss'])}" for label, row in (
            ("one ORT graph FP32", "ORT one graph FP32"), ("one ORT graph INT8", "ORT one graph INT8 (dynamic)"),
            ("PyTorch eager", "PyTorch eager FP32")) if row in by_row)
        line = (f"**in {cap}**: {models[name]['label']} ({mb(models[name]['weights_bytes'])} of FP32 weights) runs as "
                f"{best['row']}: {latency(best):.0f} ms per 128-token sample, {latency(best, 'short'):.1f} ms at "
                f"~{best['latency']['short']['tokens']:.0f} tokens, peak RSS {mb(best['peak_rss'])}."
                + (f" Peak RSS of the baselines: {base}." if base else ""))
        bigger = order[:order.index(name)]
        if bigger:
            worst = bigger[0]
            low = min(ok_rows(rows, worst), key=lambda r: r["peak_rss"], default=None)
            if low:
                line += f" ({models[worst]['label']} needs at least {mb(low['peak_rss'])}: {low['row']}.)"
        lines.append(line)
    return lines


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for model, row, limit in TARGETS:
        r = next((x for x in rows if x["model"] == model and x["row"] == row), None)
        peak = None if r is None or "error" in r else r["peak_rss"]
        out.append({"model": model, "row": row, "target_bytes": limit, "peak_rss": peak,
                    "met": peak is not None and peak <= limit})
    return out


def held_text(r: dict[str, Any]) -> str:
    h = r["held"]
    if "engines" in h:
        if h["activations"] is None:
            return f"{mb(h['engines'])} engines (activations not reported)"
        total = f", {mb(h['total'])} together" if h.get("total") is not None else ""
        return f"{mb(h['engines'])} engines + {mb(h['activations'])} activations{total}"
    return f"{mb(h['weights'])} weights"


def accuracy_text(r: dict[str, Any]) -> str:
    a = r.get("accuracy")
    if not a:
        return "random weights"
    text = f"{a['task']} dev {a['metric']} {100 * a['value']:.2f}"
    if a["metric"] != "accuracy" and "accuracy" in a["metrics"]:
        text += f", accuracy {100 * a['metrics']['accuracy']:.1f} %"
    return text


def model_table(info: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"### {info['label']}", "",
             f"{info['layers']} layers x {info['hidden']}, vocab {info['vocab']}, {mb(info['weights_bytes'])} of FP32 "
             f"weights as one graph ({mb(info['whole_int8_bytes'])} dynamic INT8, relative error of its logits vs FP32 "
             f"{info['whole_int8_rel_error']:.3f}).", "",
             "| row | peak RSS (VmHWM) | peak RssAnon / RssFile | after imports / load | held at peak | ms ~25 tok | "
             "ms 128 tok | " + " | ".join(CAPS) + " | accuracy |", "|---|---|---|---|---|---|---|" + "---|" * len(CAPS) + "---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | failed: {r['error']} |" + " |" * (6 + len(CAPS)))
            continue
        marks = " | ".join("yes" if ok else "no" for ok in fits(r).values())
        lines.append(f"| {r['row']} | {mb(r['peak_rss'])} | {mb(r.get('peak_anon'))} / {mb(r.get('peak_file'))} | "
                     f"{mb(r['rss_imports'])} / {mb(r['rss_loaded'])} | {held_text(r)} | "
                     f"{latency(r, 'short'):.1f} | {latency(r):.1f} | {marks} | {accuracy_text(r)} |")
    return lines + [""]


def composition(rows: list[dict[str, Any]]) -> list[str]:
    """Where one model's RSS goes: imports, load, peak, and what is resident at the end (file-backed pages are
    memory maps: ONNX external data, the word-embedding table)."""
    lines = ["| row | after imports | after load | peak | at end: file-backed / anonymous | largest mappings at end |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            continue
        b = r["rss_end_breakdown"]
        top = ", ".join(f"{n} {v / 1e6:.0f}" for n, v in b["top"][:4])
        lines.append(f"| {r['row']} | {mb(r['rss_imports'])} | {mb(r['rss_loaded'])} | {mb(r['peak_rss'])} | "
                     f"{mb(b['file'])} / {mb(b['anon'])} | {top} (MB) |")
    return lines


def overview(models: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> list[str]:
    names = list(models)
    lines = ["| row | " + " | ".join(models[n]["label"] for n in names) + " |", "|---|" + "---|" * len(names)]
    for row in dict.fromkeys(r["row"] for r in rows):
        cells = []
        for n in names:
            r = next((x for x in rows if x["model"] == n and x["row"] == row), None)
            cells.append("-" if r is None else "failed" if "error" in r else
                         f"{r['peak_rss'] / 1e6:.0f} MB / {latency(r):.0f} ms")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


JETSON = (
    "**What a Jetson adds (not measured here).** These are process RSS numbers on an x86 CPU with ONNX Runtime. "
    "A Jetson has one DRAM shared by the CPU and the GPU (unified memory): the board's 2 or 4 GB also holds the OS, "
    "any desktop, the CUDA context (driver state plus the CUDA, cuBLAS/cuDNN or TensorRT libraries it maps), and "
    "the GPU's own allocations (TensorRT engines, their activations and scratch), none of which this table "
    "contains. So on a Jetson a row's RSS here is a lower bound for its CPU side, not the device total, and the "
    "caps must be compared with what the board has left after the OS and the CUDA context, which depends on the "
    "JetPack version and has to be measured on the device (`tegrastats`). The founding study measured 3.2-3.4 GB "
    "of a 4 GB Jetson Nano in use while running ALBERT with PyTorch. We report no device number we did not measure."
)


def markdown(report: dict[str, Any]) -> str:
    models, rows = report["models"], report["rows"]
    mach = report["machine"]
    lines = ["# Which models fit in how much memory, at what latency", "",
             f"`{report['command']}` on {mach['cpu']}, {mach['cores']} cores ({report['date']}; machine shared with "
             "other jobs, rows measured one at a time). Every row is its own process; **peak RSS** is that "
             "process's VmHWM over loading plus batch-1 inference at both input lengths (so it includes Python, "
             "numpy, ONNX Runtime and, for the eager rows, torch and transformers); beside it the peaks of RssAnon "
             "(anonymous memory: what the kernel cannot reclaim, what a budget protects) and RssFile (clean file-backed "
             "pages: mapped weights and libraries, dropped under pressure), sampled every 2 ms. Latency is per sample at batch 1, "
             f"p50 over {report['examples']} inputs after {WARMUP} warm-up, tokenization included: ~25 tokens "
             "(SST-2 dev sentences) and 128 tokens. **Fits** = peak RSS at or under the cap (decimal MB/GB, stricter "
             "than MiB/GiB). nanotrt runs at full depth (no early exit), so every row does the same work; its INT8 "
             "rows are the `ort-int8-dynamic` build and its FP32 rows the `ort-fp32` build (offline-optimized). "
             "Budgets of N layers are room for N of the largest layer graphs of that precision. *After imports* is "
             "the RSS once the row's libraries are imported, *after load* once its model, session or runner exists "
             "(nanotrt loads engines on first use, so for its rows that is the tokenizer and runtime only); *held at "
             "peak* is what the runtime accounts for (engines, plus activations where it reports them) or the "
             "weights of the baselines.", "",
             "## The largest model per memory cap", ""]
    lines += [f"- {h}" for h in headline(models, rows)] + ["", "## Targets (issue 15)", "",
                                                         "| model | row | target | peak RSS | met |", "|---|---|---|---|---|"]
    for t in targets(rows):
        lines.append(f"| {models.get(t['model'], {}).get('label', t['model'])} | {t['row']} | <= {mb(t['target_bytes'])} | "
                     f"{mb(t['peak_rss'])} | {'yes' if t['met'] else 'no'} |")
    lines += ["", "## Peak RSS / latency at 128 tokens, all rows", ""] + overview(models, rows)
    lines += ["", "![peak RSS vs latency](memory_fit.png)", ""]
    ref = next((n for n in ("bert-base", *models) if n in models), None)
    if ref:
        lines += [f"## Where the RSS goes ({models[ref]['label']})", ""]
        lines += composition([r for r in rows if r["model"] == ref]) + [""]
    lines += ["## Per model", ""]
    for name, info in models.items():
        lines += model_table(info, [r for r in rows if r["model"] == name])
    lines += ["## Notes", "", JETSON, ""]
    return "\n".join(lines)


MARKERS = {("torch", "fp32"): "X", ("ort", "fp32"): "s", ("ort", "int8"): "D", ("runner", "fp32"): "o",
           ("runner", "int8"): "^"}
KIND_LABELS = {("torch", "fp32"): "PyTorch eager FP32", ("ort", "fp32"): "ORT one graph FP32",
               ("ort", "int8"): "ORT one graph INT8", ("runner", "fp32"): "nanotrt FP32 (all / 4 / 2 / 1 layers)",
               ("runner", "int8"): "nanotrt INT8 (all / 4 / 2 / 1 layers)"}


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    models, rows = report["models"], [r for r in report["rows"] if "error" not in r]
    colors = {n: plt.get_cmap("tab10")(i) for i, n in enumerate(models)}
    fig, ax = plt.subplots(figsize=(11, 7))
    for r in rows:
        key = (r["kind"], r["precision"])
        ax.scatter(latency(r), r["peak_rss"] / 1e6, marker=MARKERS[key], s=60, color=colors[r["model"]],
                   edgecolor="black", linewidth=0.4, zorder=3)
        if r["kind"] == "runner":
            ax.annotate(r["budget"].replace("layers", "").replace("layer", ""), (latency(r), r["peak_rss"] / 1e6),
                        textcoords="offset points", xytext=(4, 3), fontsize=7)
    for cap, limit in CAPS.items():
        ax.axhline(limit / 1e6, color="gray", linestyle="--", linewidth=0.8)
        ax.text(1.0, limit / 1e6, f" {cap}", transform=ax.get_yaxis_transform(), va="center", fontsize=8, color="gray")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(plain)
    ax.tick_params(which="minor", labelsize=7)
    ax.set_xlabel("latency per sample, batch 1, 128 tokens (ms, log)")
    ax.set_ylabel("peak RSS (MB, log)")
    ax.set_title("Peak RSS vs latency: each point one row in its own process; dashed: memory caps")
    ax.grid(True, which="both", alpha=0.2)
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[n], label=models[n]["label"]) for n in models]
    kinds = [Line2D([], [], marker=MARKERS[k], linestyle="", color="white", markeredgecolor="black", label=v)
             for k, v in KIND_LABELS.items()]
    first = ax.legend(handles=handles, loc="upper left", fontsize=8, title="model")
    ax.add_artist(first)
    ax.legend(handles=kinds, loc="lower right", fontsize=8, title="row (label: layers budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def measure(prepared: dict[str, dict[str, Any]], rows: list[Row], args: argparse.Namespace) -> list[dict[str, Any]]:
    from nanotrt.runtime.progress import progress

    results = []
    with progress() as bar:
        job = bar.add_task("memory fit", total=len(prepared) * len(rows), info="")
        for name, info in prepared.items():
            with cpu_lock(args.lock):  # one model's rows together: fewer waits on a contended lock
                results += measure_model(name, info, rows, args, bar, job)
    return results


def measure_model(name: str, info: dict[str, Any], rows: list[Row], args: argparse.Namespace, bar: Any,
                  job: Any) -> list[dict[str, Any]]:
    from nanotrt.runtime.progress import console

    results = []
    for row in rows:
        bar.update(job, info=f"{info['label']}: {row.name}")
        spec = {**asdict(row), "artifact": info["artifact"], "whole_int8": info["whole_int8"],
                "torch_loader": info["torch_loader"], "torch_path": info["torch_path"],
                "task": info["accuracy_task"], "examples": args.examples, "data_dir": args.data_dir,
                "accuracy_limit": args.accuracy_limit}
        r = {"model": name, "row": row.name, **asdict(row), **run_child(spec, args.timeout)}
        results.append(r)
        msg = r["error"] if "error" in r else f"peak RSS {mb(r['peak_rss']):>8}  {latency(r, 'short'):7.1f} / {latency(r):7.1f} ms"
        console.print(f"{info['label']:<24} {row.name:<30} {msg}", soft_wrap=True)
        bar.advance(job)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help=f"comma-separated, of: {', '.join(MODELS)}")
    ap.add_argument("--rows", default=None, help="only rows whose name contains one of these comma-separated words")
    ap.add_argument("--examples", type=int, default=12, help="timed inputs per length and row (after warm-up)")
    ap.add_argument("--accuracy-limit", type=int, default=None, help="dev examples for the accuracy column")
    ap.add_argument("--data-dir", default=None, help="GLUE dir (default: $NANOTRT_GLUE_DIR or ../shared/data/glue)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--lock", type=Path, default=None, help="flock this file around each model's export/build and rows")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per row")
    ap.add_argument("--prepare-only", action="store_true", help="export and build what the rows need, measure nothing")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child_main(json.loads(a.child))
        return
    from nanotrt.pipeline.demo import cache_dir
    from nanotrt.runtime.errors import NanotrtError
    from nanotrt.runtime.fsutil import atomic_file, write_json
    from nanotrt.runtime.profile import machine
    from nanotrt.runtime.progress import console

    names = [n.strip() for n in a.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    rows = [r for r in ROWS if a.rows is None or any(w.strip().lower() in r.name.lower() for w in a.rows.split(","))]
    try:
        if unknown:
            raise NanotrtError(f"unknown model(s) {', '.join(unknown)}: use {', '.join(MODELS)}")
        if not rows:
            raise NanotrtError(f"--rows '{a.rows}' matches no row: rows are {', '.join(r.name for r in ROWS)}")
        prepared = {}
        for i, n in enumerate(names, 1):
            console.print(f"[bold]prepare {i}/{len(names)}: {MODELS[n].label}[/] (cached in {cache_dir() / 'memory-fit' / n})")
            with cpu_lock(a.lock):
                t0 = time.perf_counter()
                prepared[n] = prepare(n, cache_dir() / "memory-fit" / n, a.data_dir)
                console.print(f"{MODELS[n].label}: ready in {time.perf_counter() - t0:.0f} s")
    except NanotrtError as e:
        console.print(f"[red]error:[/] {e}", soft_wrap=True)
        raise SystemExit(2) from None
    if a.prepare_only:
        return
    command = "python benchmarks/memory_fit.py" + "".join(
        f" --{k.replace('_', '-')} {v}" for k, v in (("models", a.models), ("rows", a.rows), ("examples", a.examples),
                                                      ("accuracy_limit", a.accuracy_limit))
        if v is not None and v != ap.get_default(k))
    report = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
              "examples": a.examples, "warmup": WARMUP, "caps": CAPS, "models": prepared,
              "rows": measure(prepared, rows, a)}
    report["headline"] = headline(report["models"], report["rows"])
    report["targets"] = targets(report["rows"])
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "memory_fit.json", report)
    with atomic_file(a.out / "memory_fit.md") as tmp:
        tmp.write_text(markdown(report))
    with atomic_file(a.out / "memory_fit.png") as tmp:
        chart(report, tmp)
    for line in report["headline"]:
        console.print(line, soft_wrap=True)
    console.print(f"wrote {a.out / 'memory_fit.md'} (+ .json, .png)")


if __name__ == "__main__":
    main()
