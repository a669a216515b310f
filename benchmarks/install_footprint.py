"""Install footprint: size on disk of a core venv (`pip install .`, the device runtime) vs the full dev venv,
and the peak RSS of `nanotrt predict` from each on the demo MiniLM-L6 artifact.

    python benchmarks/install_footprint.py [--artifact ART] [--full-venv .venv]

Writes benchmarks/results/install_footprint.{json,md}. The core venv is made fresh in a temp dir (needs the
package index pip is configured with). ART defaults to the demo CoLA artifact that `nanotrt bench --task
cola` caches (~/.cache/nanotrt/minilm-cola/artifact).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TEXTS = ["the film is a triumph", "i hated every minute of it", "an ok movie , nothing more",
         "colorless green ideas sleep furiously", "what a waste of time and money"] * 20
# Runs the CLI in-process and reports the process's own peak RSS (VmHWM; ru_maxrss of a child survives
# execve and would report the parent's peak).
WRAP = """
import json, sys
from nanotrt.cli import main
try:
    main()
finally:
    status = open('/proc/self/status').read()
    hwm = next(int(l.split()[1]) * 1024 for l in status.splitlines() if l.startswith('VmHWM'))
    heavy = sorted(m for m in ('torch', 'transformers', 'onnx', 'polygraphy') if m in sys.modules)
    print('FOOTPRINT ' + json.dumps({'peak_rss_bytes': hwm, 'heavy_modules_loaded': heavy}), file=sys.stderr)
"""


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def predict_footprint(python: Path, artifact: Path, texts_file: Path, budget: str) -> dict[str, object]:
    argv = ["nanotrt", "predict", str(artifact), "-f", str(texts_file), "--memory-budget", budget, "--exit", "patience=3"]
    code = f"import sys; sys.argv = {argv!r}\n" + WRAP
    p = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                       timeout=600)
    line = next((x for x in p.stderr.splitlines() if x.startswith("FOOTPRINT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"predict failed in {python}: {p.stderr.strip().splitlines()[-1:]}")
    return {"budget": budget, **json.loads(line.removeprefix("FOOTPRINT "))}


def main() -> None:
    from nanotrt.pipeline.demo import cache_dir
    from nanotrt.runtime.fsutil import atomic_file, write_json
    from nanotrt.runtime.profile import machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, default=cache_dir() / "minilm-cola" / "artifact")
    ap.add_argument("--full-venv", type=Path, default=ROOT / ".venv")
    args = ap.parse_args()
    args.artifact = args.artifact.resolve()
    if not (args.artifact / "manifest.json").is_file():
        raise SystemExit(f"no artifact at {args.artifact}: run `nanotrt bench --task cola` once, or pass --artifact")
    with tempfile.TemporaryDirectory() as tmp:
        core = Path(tmp) / "core"
        subprocess.run([sys.executable, "-m", "venv", str(core)], check=True)
        subprocess.run([str(core / "bin" / "pip"), "install", "-q", str(ROOT)], check=True,
                       env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
        texts = Path(tmp) / "texts.txt"
        texts.write_text("\n".join(TEXTS) + "\n")
        venvs = {"core (`pip install .`)": core, "full (`.[dev,demo]`)": args.full_venv}
        rows = []
        for name, venv in venvs.items():
            freeze = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"], capture_output=True,
                                    text=True, check=True).stdout
            rows.append({"venv": name, "site_packages_bytes": dir_bytes(site_packages(venv)),
                         "packages": len(json.loads(freeze)),
                         "predict": [predict_footprint(venv / "bin" / "python", args.artifact, texts, b)
                                     for b in ("all", "2layers")]})
    report = {"machine": machine(), "artifact": str(args.artifact), "examples": len(TEXTS), "rows": rows,
              "command": "python benchmarks/install_footprint.py"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "install_footprint.json", report)
    with atomic_file(RESULTS / "install_footprint.md") as tmp_md:
        tmp_md.write_text(to_markdown(report))
    print(to_markdown(report))


def to_markdown(report: dict[str, object]) -> str:
    rows = report["rows"]
    assert isinstance(rows, list)
    out = ["# Install footprint", "", f"`{report['command']}` — `nanotrt predict -f` over {report['examples']} "
           f"sentences, exit patience=3, on `{report['artifact']}` (peak RSS = VmHWM of the predict process).", "",
           "| venv | site-packages | packages | predict peak RSS, budget all | predict peak RSS, 2 layers | heavy modules loaded |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        p = {x["budget"]: x for x in r["predict"]}
        out.append(f"| {r['venv']} | {r['site_packages_bytes'] / 1e6:.0f} MB | {r['packages']} | "
                   f"{p['all']['peak_rss_bytes'] / 1e6:.0f} MB | {p['2layers']['peak_rss_bytes'] / 1e6:.0f} MB | "
                   f"{', '.join(p['all']['heavy_modules_loaded']) or 'none'} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
