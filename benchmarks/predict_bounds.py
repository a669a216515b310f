"""Input bounds of `nanotrt predict` (issue 22): peak RSS on single huge lines against the memory budget, and
`predict -f` streaming over 1M lines (RSS over time, time to the first printed result).

    flock /tmp/nanotrt-cpu.lock python benchmarks/predict_bounds.py [--seconds 60]

Artifact: the embedded MiniLM-L6 (an untrained export like `nanotrt demo`'s, cached), budget `2layers`. Each run is its
own process; peak RSS = VmHWM. Writes benchmarks/results/predict_bounds.{json,md} (reliability_report.py
folds them into reliability.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
PEAK = ("import sys; from nanotrt.cli import main; from nanotrt.runtime.profile import proc_status_bytes\n"
        "sys.argv = ['nanotrt', 'predict', *sys.argv[1:]]\n"
        "try: main()\nexcept SystemExit as e: rc = e.code\n"
        "print('PEAK', rc, proc_status_bytes('VmHWM'), file=sys.stderr)")


def artifact() -> Path:
    from nanotrt.pipeline.demo import cache_dir, demo_model_dir

    art = cache_dir() / "bounds-minilm-untrained"  # its own name: the format-2 export next to older caches
    if not (art / "manifest.json").is_file() or json.loads((art / "manifest.json").read_text())["format_version"] != 2:
        from nanotrt.pipeline.export import export_model
        from nanotrt.pipeline.model import load_model

        src = demo_model_dir()
        export_model(src, art, model=load_model(src, num_labels=2, pooling="mean"), force=True)
    return art


def peak(art: Path, line: bytes, tmp: Path) -> dict[str, object]:
    f = tmp / "line.txt"
    f.write_bytes(line)
    p = subprocess.run([sys.executable, "-c", PEAK, str(art), "-f", str(f), "--memory-budget", "2layers", "--stats"],
                       capture_output=True, text=True, timeout=600)
    rc, hwm = p.stderr.strip().splitlines()[-1].split()[1:]
    stats = json.loads(p.stderr[p.stderr.index("{"):p.stderr.rindex("}") + 1])
    return {"bytes": len(line), "rc": int(rc), "peak_rss_mb": round(int(hwm) / 2**20, 1),
            "peak_total_engine_activation_mb": round(stats["peak_total_bytes"] / 2**20, 1)}


def budget_bytes(art: Path) -> int:
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.runner import resolve_budget

    m = Manifest.load(art)
    return int(resolve_budget("2layers", m, m.best_variant()) or 0)


def stream(art: Path, n: int, seconds: float, tmp: Path) -> dict[str, object]:
    """`predict -f` over ``n`` lines (CoLA train sentences cycled): first result time, RSS every second."""
    from nanotrt.pipeline.glue import read_split

    sents = read_split("cola", "train", None).texts
    f = tmp / "lines.txt"
    with open(f, "w") as out:
        for i in range(n):
            out.write(sents[i % len(sents)] + "\n")
    t0 = time.perf_counter()  # one short prediction, whole process: interpreter, imports, artifact load
    subprocess.run([sys.executable, "-m", "nanotrt", "predict", str(art), "a short line", "--memory-budget", "2layers"],
                   check=True, capture_output=True, timeout=300)
    one = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "nanotrt", "predict", str(art), "-f", str(f), "--memory-budget",
                          "2layers"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None
    os.set_blocking(p.stdout.fileno(), False)
    first, lines, samples = None, 0, []
    next_sample = t0 + 1.0
    while p.poll() is None and time.perf_counter() - t0 < seconds:
        chunk = p.stdout.read() or b""
        if chunk and first is None:
            first = time.perf_counter() - t0
        lines += chunk.count(b"\n")
        if time.perf_counter() >= next_sample:
            rss = next(int(x.split()[1]) for x in Path(f"/proc/{p.pid}/status").read_text().splitlines()
                       if x.startswith("VmRSS"))
            samples.append([round(time.perf_counter() - t0, 1), lines, round(rss / 1024, 1)])
            next_sample += 1.0
        time.sleep(0.01)
    finished = p.poll() is not None
    lines += (p.stdout.read() or b"").count(b"\n") if finished else 0
    elapsed = round(time.perf_counter() - t0, 1)
    p.kill()
    p.wait()
    return {"lines_in_file": n, "file_mb": round(f.stat().st_size / 1e6, 1), "first_result_s": first,
            "one_short_prediction_process_s": round(one, 2),
            "finished": finished, "lines_done": lines, "seconds": seconds, "elapsed_s": elapsed, "samples_t_lines_rss_mb": samples}


def render(r: dict) -> str:  # type: ignore[type-arg]
    rows = "\n".join(f"| {k} | {v['bytes']:,} | {v['rc']} | {v['peak_rss_mb']} | {v['peak_total_engine_activation_mb']} | "
                     f"{round(v['peak_rss_mb'] - r['budget_mb'], 1)} |" for k, v in r["lines"].items())
    s = r["stream"]
    rss = [x[2] for x in s["samples_t_lines_rss_mb"]]
    warm = rss[len(rss) // 4:] or rss
    return f"""# `nanotrt predict` input bounds ({r['date']}, load average {r['loadavg']})

`flock /tmp/nanotrt-cpu.lock python benchmarks/predict_bounds.py --seconds {s['seconds']}`; artifact: embedded MiniLM-L6
(untrained export), `--memory-budget 2layers` = {r['budget_mb']} MB (engines + activations), each run its own process.

## One huge line

| input | bytes | exit | peak RSS MB | engines + activations peak MB | peak RSS - budget MB |
|---|---|---|---|---|---|
{rows}

Every line is cut to `max_chars` characters per side before tokenization (default 32 per token of max_length),
so the peak does not grow with the line: the documented constant (peak RSS minus budget) is the interpreter,
numpy, ONNX Runtime and the tokenizer plus at most 4 x max_chars bytes per side of the line being read.

## `predict -f` over {s['lines_in_file']:,} lines ({s['file_mb']} MB)

First result printed {s['first_result_s']:.2f} s after the process started (a whole `predict` of one short
text, start to exit, takes {s['one_short_prediction_process_s']} s here: interpreter, imports, artifact checks);
{s['lines_done']:,} lines printed in {s['elapsed_s']} s
({'all of them' if s['finished'] else 'stopped there, the time this measurement allows'}). RSS (MB) every second: {', '.join(str(x) for x in rss)}.
After the first quarter: {min(warm)}..{max(warm)} MB.
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--lines", type=int, default=1_000_000)
    args = ap.parse_args()
    art = artifact()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        inputs = {"short line": b"a short line\n", "33 KB pair line": b"word " * 3300 + b"\t" + b"other " * 2750 + b"\n",
                  "5 MB line": b"word " * 1_000_000 + b"\n",
                  "5 MB pair line": b"word " * 500_000 + b"\t" + b"other " * 420_000 + b"\n",
                  "15 MB line, no spaces": b"x" * (15 << 20) + b"\n"}
        report = {"date": time.strftime("%Y-%m-%d %H:%M"), "loadavg": [round(x, 2) for x in os.getloadavg()],
                  "budget_mb": round(budget_bytes(art) / 2**20, 1),
                  "lines": {k: peak(art, v, tmp) for k, v in inputs.items()},
                  "stream": stream(art, args.lines, args.seconds, tmp)}
    from nanotrt.runtime.fsutil import atomic_file, write_json

    write_json(OUT / "predict_bounds.json", report)
    with atomic_file(OUT / "predict_bounds.md") as t:
        t.write_text(render(report))
    print(render(report))


if __name__ == "__main__":
    main()
