"""Collect the per-ramp dev tables that `nanotrt train` saves (ramp_metrics.json) into benchmarks/results.

    python benchmarks/train_report.py CKPT_DIR [CKPT_DIR ...]   ->  results/train_<task>.{json,md}
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from nanotrt.runtime.fsutil import write_json
    from nanotrt.runtime.profile import machine

    out = ROOT / "benchmarks" / "results"
    args = sys.argv[1:]
    note = ""
    if "--note" in args:  # e.g. that other jobs shared the 2 cores during training
        i = args.index("--note")
        note, args = args[i + 1], args[:i] + args[i + 2:]
    for ckpt in map(Path, args):
        rep = json.loads((ckpt / "ramp_metrics.json").read_text())
        rep["machine"] = machine()
        task, cfg = rep["task"], rep["config"]
        write_json(out / f"train_{task}.json", rep)
        keys = [rep["metric"], *(k for k in rep["ramps"][0] if k not in ("layer", rep["metric"]))]
        cmd = (f"nanotrt train --task {task} --model <MiniLM-L6 dir> -o ckpt --method {cfg['method']}"
               + (f" --limit {cfg['limit']}" if cfg["limit"] else "") + (f" --epochs {cfg['epochs']:g}"))
        lines = [f"# Off-ramp training: {task} ({cfg['method']})", "",
                 f"`{cmd}` — {rep['train_examples']} train examples, {cfg['epochs']:g} epochs, batch "
                 f"{cfg['batch_size']}, lr {cfg['lr']:g}, seed {cfg['seed']}; dev: {rep['dev_examples']} examples.",
                 f"Training took **{rep['train_seconds'] / 60:.1f} min** on {rep['machine']['cpu']} "
                 f"({rep['machine']['cores']} cores). Loss {rep['loss_first']:.3f} -> {rep['loss_last']:.3f}.",
                 *([f"Note: {note}"] if note else []), "",
                 *([f"{keys[0]} is GLUE's main metric for {task} (listed first)."] if len(keys) > 1 else []),
                 "| ramp (layer) | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {r['layer']} | " + " | ".join(f"{100 * r[k]:.2f}" for k in keys) + " |" for r in rep["ramps"]]
        (out / f"train_{task}.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
