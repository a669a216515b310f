"""Device driver for nanotrt issue #12: trains off-ramp variants on CUDA, returns per-ramp logits.

Every config: train (train split minus a seeded holdout) -> per-ramp logits (+ exit probs) on the
held-out slice of TRAIN and on DEV -> OUT/TASK.npz (the reports' JSON inside, as ``report_json``), plus one
checkpoint back as fp16 safetensors chunks (the device call returns at most 8 files of 16 MiB).

The folder it runs from holds: dist/nanotrt-*.whl (pip wheel of this repo), glue/{CoLA,SST-2,STS-B}/
{train,dev}.tsv, minilm/ (the demo model dir with its weights as model_fp16.safetensors: the 64 MiB
carry limit; restored to fp32 on the device). Commands used for benchmarks/results/adaptive/:

    pip install --no-deps dist/*.whl && python3 adaptive_device_driver.py $OUT            # -> TASK.npz
    pip install --no-deps dist/*.whl && python3 adaptive_device_driver.py $OUT --call2    # -> TASK-call2.npz
    python benchmarks/adaptive_device_driver.py --restore DEVICE_OUT CKPT_DIR   # here: fp16 chunks -> ckpt
"""
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".")
SMOKE = "--smoke" in sys.argv
BUDGET_S = float(os.environ.get("DRIVER_BUDGET_S", "430"))
T0 = time.time()
LAMBDAS = (0.01, 0.03, 0.1, 0.3)
CALL2 = "--call2" in sys.argv
TASKS = {
    "cola": dict(epochs=3.0, holdout=1000),
    "sst2": dict(epochs=1.0, limit=16000, holdout=2000),
    "stsb": dict(epochs=3.0, holdout=700),
}


def configs(task):
    if CALL2:  # second call: halting heads at 10x lr, bias init -2, smaller lambdas
        return [(f"pen{lam:g}", {"compute_penalty": lam}) for lam in LAMBDAS]
    cs = [("joint", {}), ("distill", {"distill": True})]
    if task != "stsb":
        cs += [(f"pen{lam:g}", {"compute_penalty": lam}) for lam in LAMBDAS]
        cs += [("distill_pen0.2", {"distill": True, "compute_penalty": 0.2})]
    cs += [("joint_s43", {"seed": 43}), ("distill_s43", {"distill": True, "seed": 43})]
    return cs


def model_dir():
    """MiniLM weights travel as fp16 (carry limit); restore fp32 once."""
    src, dst = HERE / "minilm", Path("/tmp/minilm")
    if SMOKE:
        return Path(os.environ["SMOKE_MODEL"])
    if not (dst / "model.safetensors").is_file():
        import shutil

        from safetensors.numpy import load_file, save_file
        shutil.copytree(src, dst, dirs_exist_ok=True)
        (dst / "model_fp16.safetensors").unlink()
        w = load_file(str(src / "model_fp16.safetensors"))
        save_file({k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in w.items()}, str(dst / "model.safetensors"))
    return dst


def run_task(task):
    import torch
    from nanotrt.pipeline.calibrate_exit import holdout_indices, subset
    from nanotrt.pipeline.glue import get_task, read_split
    from nanotrt.pipeline.model import load_model
    from nanotrt.pipeline.train import Encoded, TrainConfig, ramp_outputs, train
    from transformers import AutoTokenizer

    torch.set_num_threads(4)
    torch.backends.cuda.matmul.allow_tf32 = True
    md = model_dir()
    t = get_task(task)
    opts = dict(TASKS[task])
    if SMOKE:
        opts.update(epochs=1.0, limit=64, holdout=40, eval_limit=48)
    data = str(HERE / "glue")
    tok = AutoTokenizer.from_pretrained(str(md), local_files_only=True)
    full = read_split(t, "train", data)
    held = subset(full, holdout_indices(len(full), opts["holdout"]))
    dev_split = read_split(t, "dev", data, limit=opts.get("eval_limit"))
    hold_enc, dev_enc = Encoded(tok, held, 128), Encoded(tok, dev_split, 128)
    arrays = {"holdout_labels": held.labels, "dev_labels": dev_split.labels}
    results = {}
    for name, kw in configs(task):
        if time.time() - T0 > BUDGET_S:
            results[name] = {"skipped": "time budget"}
            continue
        try:
            cfg = TrainConfig(task=task, data_dir=data, **{**opts, **kw})
            ck = Path(f"/tmp/ck/{task}/{name}")
            rep = train(md, ck, cfg)
            model = load_model(ck).to("cuda" if torch.cuda.is_available() else "cpu")
            for split, enc in (("holdout", hold_enc), ("dev", dev_enc)):
                lg, pr = ramp_outputs(model, enc, 256)
                arrays[f"{name}/{split}_logits"] = lg.astype(np.float32)
                if pr is not None:
                    arrays[f"{name}/{split}_exit_prob"] = pr.astype(np.float32)
            rep["done_at_s"] = round(time.time() - T0, 1)
            results[name] = rep
            print(f"[{task}] {name}: {rep['train_seconds']} s, ramps "
                  f"{[round(100 * r[t.main_metric], 1) for r in rep['ramps']]} at {rep['done_at_s']} s", flush=True)
        except Exception as e:  # noqa: BLE001 - keep the other configs going
            traceback.print_exc()
            results[name] = {"error": repr(e)}
        arrays["report_json"] = np.array(json.dumps(results))  # one file per task: the 8-file limit
        np.savez_compressed(OUT / f"{task}.npz", **arrays)
    return task


def send_checkpoint(task="cola", name="pen0.2"):
    """One checkpoint back as fp16 safetensors of <= 16.5 MB each (the word table split by rows)."""
    from safetensors.numpy import load_file, save_file

    ck = Path(f"/tmp/ck/{task}/{name}")
    if not (ck / "model.safetensors").is_file():
        return
    w = {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in load_file(str(ck / "model.safetensors")).items()}
    big = "encoder.embeddings.word_embeddings.weight"
    if big in w:
        table = w.pop(big)
        half = len(table) // 2
        w[big + ".part0"], w[big + ".part1"] = table[:half], table[half:]
    parts, cur, size = [], {}, 0
    for k in sorted(w, key=lambda k: -w[k].nbytes):
        if size + w[k].nbytes > 16.5e6 and cur:
            parts.append(cur)
            cur, size = {}, 0
        cur[k] = w[k]
        size += w[k].nbytes
    parts.append(cur)
    meta = {"task": task, "config": name, "files": str(len(parts)),
            "config_json": (ck / "config.json").read_text(), "nanotrt_json": (ck / "nanotrt.json").read_text()}
    for i, p in enumerate(parts):
        save_file(p, str(OUT / f"ckpt{i}.safetensors"), metadata=meta if i == 0 else None)


def restore(src: Path, dst: Path) -> None:
    """fp16 chunks from the device -> a float32 nanotrt checkpoint (tokenizer from the demo model)."""
    from nanotrt.pipeline.demo import demo_model_dir
    from nanotrt.pipeline.model import TOKENIZER_FILES
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    meta = safe_open(str(src / "ckpt0.safetensors"), "np").metadata()
    w = {}
    for i in range(int(meta["files"])):
        w.update(load_file(str(src / f"ckpt{i}.safetensors")))
    big = "encoder.embeddings.word_embeddings.weight"
    w[big] = np.concatenate([w.pop(big + ".part0"), w.pop(big + ".part1")])
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in w.items()}, str(dst / "model.safetensors"))
    (dst / "config.json").write_text(meta["config_json"])
    (dst / "nanotrt.json").write_text(meta["nanotrt_json"])
    import shutil
    for name in TOKENIZER_FILES:
        if (demo_model_dir() / name).is_file():
            shutil.copy2(demo_model_dir() / name, dst / name)


if __name__ == "__main__":
    if sys.argv[1] == "--restore":
        restore(Path(sys.argv[2]), Path(sys.argv[3]))
        raise SystemExit(0)
    OUT.mkdir(parents=True, exist_ok=True)
    import torch
    print("cuda:", torch.cuda.is_available(), torch.__version__, flush=True)
    model_dir()
    tasks = ["cola", "sst2"] if CALL2 else list(TASKS)
    import multiprocessing
    with ProcessPoolExecutor(len(tasks), mp_context=multiprocessing.get_context("spawn")) as ex:
        for f in [ex.submit(run_task, t) for t in tasks]:
            try:
                print("finished", f.result(), round(time.time() - T0, 1), flush=True)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
    send_checkpoint(name="pen0.1" if CALL2 else "pen0.2")
    print("total", round(time.time() - T0, 1), "s", flush=True)
