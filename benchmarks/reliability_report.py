"""Collects the reliability evidence into benchmarks/results/reliability.{json,md}: the bad-input table
(run now, through the CLI), the fault-injection trials (from a `pytest -m slow tests/test_faults.py` log),
the concurrency / property / reproducibility tests (run now) and the soak report (benchmarks/soak.py).

    NANOTRT_FAULT_TRIALS=12 NANOTRT_FAULT_LOG=/tmp/faults.jsonl flock /tmp/nanotrt-cpu.lock python -m pytest -m slow tests/test_faults.py
    flock /tmp/nanotrt-cpu.lock python benchmarks/soak.py
    flock /tmp/nanotrt-cpu.lock python benchmarks/int8_repro.py
    flock /tmp/nanotrt-cpu.lock python benchmarks/predict_bounds.py --seconds 45
    flock /tmp/nanotrt-cpu.lock python -m pytest -q --junitxml=/tmp/full.xml
    python benchmarks/reliability_report.py --faults /tmp/faults.jsonl --junit /tmp/full.xml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
GROUPS = [  # case-id prefix -> where the bad input enters
    (("artifact-", "manifest-", "variant-", "precision-", "graph-", "word-", "tokenizer-"), "predict: artifact on disk"),
    (("contain-",), "predict: artifact naming files outside itself (sentinel FIFO never opened)"),
    (("wrong-",), "predict: artifact well-formed but wrong"),
    (("no-input", "empty-", "whitespace-", "pair-", "text-", "file-", "stdin-"), "predict: texts, -f files, stdin"),
    (("budget-", "batch-", "unknown-", "missing-", "backend-", "exit-", "threads-", "max-chars-"),
     "CLI arguments, budgets, exit policies"),
    (("export-over", "train-over"), "export, train: output folders (users' files never replaced)"),
    (("model-", "export-", "checkpoint-"), "export: model dirs, weights, tokenizers"),
    (("train-", "glue-"), "train: GLUE files and settings"),
    (("build-",), "build"),
    (("bench-",), "bench"),
]
TESTS = ["tests/test_reliability.py", "tests/test_concurrency.py", "tests/test_residency_props.py",
         "tests/test_repro.py", "tests/test_faults.py"]


def group_of(case_id: str) -> str:
    return next(g for prefixes, g in GROUPS if case_id.startswith(prefixes))


def run_tests(xml: Path) -> dict[str, str]:
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}", *TESTS],
                   cwd=ROOT, capture_output=True, text=True, timeout=3600)
    return read_junit(xml)


def read_junit(xml: Path) -> dict[str, str]:
    outcome = {}
    mine = tuple(Path(t).stem for t in TESTS)
    for tc in ET.parse(xml).getroot().iter("testcase"):
        if not tc.get("classname", "").split(".")[-1].startswith(mine):
            continue
        name = tc.get("name", "")
        kinds = {child.tag for child in tc}
        skipped = tc.find("skipped")
        if "failure" in kinds or "error" in kinds:
            outcome[name] = "failed"
        elif skipped is not None:
            outcome[name] = "xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"
        else:
            outcome[name] = "passed"
    return outcome


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_reliability import CASES

    ap = argparse.ArgumentParser()
    ap.add_argument("--faults", type=Path, help="JSON lines written by the slow fault tests (NANOTRT_FAULT_LOG)")
    ap.add_argument("--junit", type=Path, help="read test outcomes from this pytest --junitxml file instead of running")
    ap.add_argument("--int8", type=Path, default=OUT / "int8_repro.json", help="benchmarks/int8_repro.py output")
    args = ap.parse_args()
    outcome = read_junit(args.junit) if args.junit else run_tests(Path("/tmp/nanotrt-reliability-junit.xml"))
    cases = [{"id": c.id, "group": group_of(c.id), "expect": c.needle, "xfail": c.xfail,
              "result": outcome.get(f"test_bad_input_gives_one_clean_line[{c.id}]", "missing")} for c in CASES]
    faults = [json.loads(x) for x in args.faults.read_text().splitlines()] if args.faults else []
    soak = json.loads((OUT / "soak.json").read_text())
    others = {k: v for k, v in outcome.items() if not k.startswith("test_bad_input_gives_one_clean_line")}
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "bad_inputs": cases,
              "bad_input_results": dict(Counter(c["result"] for c in cases)),
              "fault_trials": faults, "other_tests": others,
              "soak": {k: v for k, v in soak.items() if k != "samples"},
              "soak_rss_mb": [s["rss_mb"] for s in soak["samples"]],
              "int8_repro": json.loads(args.int8.read_text()) if args.int8.is_file() else None,
              "bounds": json.loads((OUT / "predict_bounds.json").read_text())
              if (OUT / "predict_bounds.json").is_file() else None}
    from nanotrt.runtime.fsutil import atomic_file, write_json

    write_json(OUT / "reliability.json", report)
    with atomic_file(OUT / "reliability.md") as tmp:
        tmp.write_text(render(report))


def _fault_test(name: str) -> bool:
    return any(w in name for w in ("disk_full", "damaged", "swept", "import_is_not"))


def render(r: dict) -> str:  # type: ignore[type-arg]
    by_group = Counter(c["group"] for c in r["bad_inputs"])
    lines = [f"# Reliability report ({r['date']}, shared 2-core machine)", "",
             "## Bad input: one `error:` line, exit 2, no traceback", "",
             "Every case runs the real CLI in its own process (`tests/test_reliability.py`, table `CASES`); "
             f"results now: {', '.join(f'{v} {k}' for k, v in sorted(r['bad_input_results'].items()))} "
             f"of {len(r['bad_inputs'])} cases.", "",
             "| where it enters | cases |", "|---|---|"]
    lines += [f"| {g} | {n} |" for _, g in GROUPS for gg, n in by_group.items() if gg == g]
    lines += ["", "<details><summary>every case</summary>", "", "| case | the error line contains | result |",
              "|---|---|---|"]
    lines += [f"| {c['id']} | `{c['expect']}` | {c['result']}{' (' + c['xfail'] + ')' if c['xfail'] else ''} |"
              for c in r["bad_inputs"]]
    lines += ["", "</details>", "", "## Faults", "",
              "SIGINT / SIGKILL at uniformly random points (5 %..105 % of an uninterrupted run) of `nanotrt export`, "
              "`nanotrt build --int8` and `nanotrt train` on a tiny BERT, each against an output that already "
              "holds a previous version (`pytest -m slow tests/test_faults.py`). After each trial the output "
              "must be the previous version or a complete new one (manifest valid, every graph matching its "
              "sha256; checkpoint loadable); build switches variants in one at a time, so *earlier variants "
              "only* (ort-fp32 built, ort-int8 not yet) is also a complete state.", "",
              "The points are spread over the measured wall time of an uninterrupted run, which includes 2-3 s of "
              "interpreter start-up and imports (torch) here, and runs under the trial were slower than the "
              "measurement on the shared machine, so most trials stop a run before its final rename (*previous "
              "kept*); SIGINT exits 130 (or 0 when the run finished first) and leaves no temp files; SIGKILL's "
              "temp dir is swept by the next write of the same output. One finding fixed on the way: Ctrl-C while "
              "onnxruntime imports surfaced as a traceback (`ImportError: initialization failed`).", "",
              "| command | signal | trials | previous kept | new complete | earlier variants only | mixed | run s |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {f['command']} | {f['signal']} | {f['trials']} | {f['previous']} | {f['new']} | "
              f"{f.get('earlier_variants_only', 0)} | {f['mixed']} | {f['run_s']} |" for f in r["fault_trials"]]
    o = r["other_tests"]
    lines += ["", "Disk full (injected `OSError(ENOSPC)` in export, build, checkpoint and JSON writes), a graph "
              "deleted / truncated / bit-flipped / swapped while a runner streams: "
              + ", ".join(f"{k}: {v}" for k, v in o.items() if _fault_test(k)),
              "", "## Concurrency, invariants, reproducibility", ""]
    lines += [f"- `{k}`: {v}" for k, v in o.items() if not (_fault_test(k) or k.startswith("test_interrupt_"))]
    if r.get("int8_repro"):
        q = r["int8_repro"]
        lines += ["", "## INT8 reproducibility of the demo (`python benchmarks/int8_repro.py`)", "",
                  f"CPU integer features here: {', '.join(q['int8_cpu_flags'])}; ONNX Runtime "
                  f"{q['machine']['libraries'].get('onnxruntime')}.", "",
                  "The cached build is today's fresh `make demo` path on this machine (training, export, build from "
                  "scratch; the retrained checkpoint's per-ramp dev MCC equals `train_cola.json` to every digit). "
                  "Its INT8 row gives the committed 27.82: the committed number reproduces here, and rebuilding gives "
                  "byte-identical INT8 graphs with either calibration batch order (min/max calibration does not "
                  "depend on it; the percentile/entropy calibrators and the recorded error do). The 26.18 seen on "
                  "another fresh clone did not reproduce here; INT8 kernels differ by CPU (VNNI/AMX vs AVX2's "
                  "saturating u8s8 path) and ONNX Runtime / numpy are not pinned, so that is where to look.", "",
                  "| build | INT8 graphs identical to the cached build | max rel. error | kept FP32 | CoLA MCC (bench INT8 row) | avg exit layer |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {k} | {v['identical_to_cached']} ({v['files']} files) | {v['max_rel_error']} | "
                  f"{v['kept_fp32'] or 'none'} | {v['mcc_x100']} | {v['avg_exit_layer']} |" for k, v in q["runs"].items()]
    if r.get("bounds"):
        b = r["bounds"]
        lines += ["", f"## Input bounds (`benchmarks/predict_bounds.py`, {b['date']}, load average {b['loadavg']})", "",
                  f"Demo MiniLM-L6 artifact, `--memory-budget 2layers` = {b['budget_mb']} MB. Peak RSS (VmHWM) of "
                  "`nanotrt predict -f` on one line:", "", "| input | bytes | peak RSS MB | minus budget MB |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {v['bytes']:,} | {v['peak_rss_mb']} | {round(v['peak_rss_mb'] - b['budget_mb'], 1)} |"
                  for k, v in b["lines"].items()]
        st = b["stream"]
        rss = [x[2] for x in st["samples_t_lines_rss_mb"]]
        lines += ["", f"`predict -f` over {st['lines_in_file']:,} lines: first result {st['first_result_s']:.2f} s after the "
                  f"process started (one short `predict`, start to exit: {st.get('one_short_prediction_process_s')} s: "
                  "interpreter, imports, artifact checks), "
                  f"{st['lines_done']:,} lines printed in {st['elapsed_s']} s, RSS every second (MB): "
                  f"{', '.join(str(x) for x in rss)}. Details: `predict_bounds.md`."]
    s = r["soak"]
    lines += ["", "## Soak", "",
              f"`flock /tmp/nanotrt-cpu.lock python benchmarks/soak.py`: {s['predictions']} predictions "
              f"(batch 1, CoLA dev cycled) through one Runner on the demo MiniLM-L6 CoLA artifact ({s['variant']}), "
              f"budget {s['budget']} (2 layers), exit {s['exit']}. RSS every {s['every']} predictions (MB): "
              f"{', '.join(str(x) for x in r['soak_rss_mb'])}. After warm-up: range {s['rss_range_after_warmup_mb']} MB,"
              f" slope {s['rss_slope_mb_per_1000_after_warmup']} MB per 1,000 predictions; peak RSS "
              f"{s['peak_rss_mb']} MB; {s['wall_s']} s. Details: `soak.md`.", "",
              "## Commands", "", "```", *(x.strip() for x in (__doc__ or "").splitlines() if x.startswith("    ")),
              "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
