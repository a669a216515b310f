"""Serving: `nanotrt serve` (FastAPI + uvicorn + `batched`) with dynamic batching vs the same server with
batching off, next to LitServe (the candidate stack) with its own batching, on the demo CoLA artifact.

Open-loop load on 127.0.0.1: at each offered rate, single-sentence requests (CoLA dev) are sent on a
Poisson schedule for at most --seconds (and at most --cap requests); latency is measured from each
request's scheduled send time, so a server that falls behind shows it. A level whose achieved throughput is
under 70% of the offered rate ends the sweep for that server. Every answer is checked against
Runner.predict on the same sentence (label and exit layer). Peak RSS: VmHWM of the server process (summed
over its process tree for LitServe, which runs the model in a separate worker), next to the Runner's own
peak RSS doing the same predictions in a plain process.

The load generator shares the machine's 2 cores with the server (recorded with the load average).

    flock /tmp/nanotrt-cpu.lock python benchmarks/serving.py      # writes results/serving.{json,md,png}

Needs the `serve` and `bench` extras, plus aiohttp (load) and litserve (the candidate row; skipped when
not installed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path(__file__).parent / "results"
DEFAULT_ART = Path.home() / ".cache/nanotrt/minilm-cola/artifact"
RATES = (25, 50, 100, 150, 200, 300, 400, 600, 800)
P95_TARGET_MS = 50.0


def vm_hwm(pid: int) -> int:
    """Peak RSS (VmHWM) of a process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_hwm(pid: int) -> int:
    """Sum of the peak RSS of a process and its descendants (LitServe: API, inference worker, manager)."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += vm_hwm(p.pid)
        except (OSError, psutil.Error):
            pass
    return total


def tree_pss(pid: int) -> int:
    """Proportional set size of a process tree now: shared pages split between the processes sharing them."""
    import psutil

    total = 0
    for p in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (OSError, psutil.Error):
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the Runner alone ---------------------------------------------------------------------------
RUNNER_ALONE = """
import json, sys
from nanotrt.runtime.runner import Runner
from nanotrt.runtime.profile import proc_status_bytes
texts = json.loads(sys.stdin.read())
with Runner.from_artifact(sys.argv[1], exit=sys.argv[2]) as r:
    for bs in (1, 32):
        r.predict(texts, batch_size=bs)
    print(json.dumps({"peak_rss": proc_status_bytes("VmHWM"), "variant": r.variant, "exit": r.policy.spec}))
"""


def runner_alone(art: str, exit: str, texts: list[str]) -> dict[str, Any]:
    p = subprocess.run([sys.executable, "-c", RUNNER_ALONE, art, exit], input=json.dumps(texts), capture_output=True,
                       text=True, check=True)
    return dict(json.loads(p.stdout))


def reference(art: str, exit: str, texts: list[str]) -> dict[str, tuple[str, int]]:
    from nanotrt.runtime.runner import Runner

    with Runner.from_artifact(art, exit=exit) as r:
        res = r.predict(texts, batch_size=32)
    return {t: (p.label, p.exit_layer) for t, p in zip(texts, res.predictions, strict=True)}


# --- LitServe, the candidate --------------------------------------------------------------------
try:  # only for the candidate row; its inference worker is spawned, so the API class lives at module level
    import litserve as ls
except ImportError:
    ls = None

if ls is not None:
    class NanotrtLitAPI(ls.LitAPI):  # type: ignore[misc]
        """LitServe's own batching: requests batched (up to max_batch_size, waiting batch_timeout), all
        their texts in one Runner.predict in the inference worker process."""

        artifact, exit = "", "none"

        def setup(self, device: str) -> None:
            from nanotrt.runtime.runner import Runner

            self.runner = Runner.from_artifact(self.artifact, exit=self.exit)

        def decode_request(self, request: dict[str, Any]) -> list[str]:
            return list(request["texts"])

        def batch(self, inputs: list[list[str]]) -> list[list[str]]:
            return inputs

        def predict(self, batch: list[list[str]]) -> list[list[dict[str, Any]]]:
            preds = self.runner.predict([t for texts in batch for t in texts], batch_size=self.max_batch_size).predictions
            out, k = [], 0
            for texts in batch:
                out.append([{"label": p.label, "probs": p.probs, "exit_layer": p.exit_layer}
                            for p in preds[k:k + len(texts)]])
                k += len(texts)
            return out

        def unbatch(self, output: list[Any]) -> list[Any]:
            return output

        def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
            return {"predictions": output}

    # LitServe reads decode_request's annotation to type the endpoint; postponed annotations are strings
    NanotrtLitAPI.decode_request.__annotations__ = {}


def litserve_child(art: str, exit: str, port: int, max_batch_size: int, max_wait_ms: float) -> None:
    api = NanotrtLitAPI(max_batch_size=max_batch_size, batch_timeout=max_wait_ms / 1000, api_path="/predict")
    api.artifact, api.exit = art, exit
    ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60).run(port=port, host="127.0.0.1",
                                                                               log_level="warning", generate_client_file=False)


# --- servers ------------------------------------------------------------------------------------
SERVERS: dict[str, dict[str, Any]] = {
    "batching": {"name": "nanotrt serve, batching (32, 5 ms)", "kind": "nanotrt",
                 "args": ["--max-batch-size", "32", "--max-wait-ms", "5"]},
    "off": {"name": "nanotrt serve, batching off", "kind": "nanotrt", "args": ["--max-batch-size", "1"]},
    "litserve": {"name": "LitServe, its batching (32, 5 ms)", "kind": "litserve", "args": ["32", "5"]},
}


def start(kind: str, args: list[str], art: str, exit: str, port: int) -> subprocess.Popen[bytes]:
    if kind == "nanotrt":
        cmd = [sys.executable, "-m", "nanotrt", "serve", art, "--exit", exit, "--port", str(port), *args]
    else:
        cmd = [sys.executable, __file__, "--litserve-child", art, exit, str(port), *args]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


async def wait_up(port: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.post(f"http://127.0.0.1:{port}/predict", json={"texts": ["warm up"]}) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server on port {port} did not come up (exit {proc.poll()})")
            await asyncio.sleep(0.3)


async def level(port: int, texts: list[str], rate: float, seconds: float, cap: int,
                ref: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """One offered rate, open loop: Poisson arrivals, latency from the scheduled send time."""
    import aiohttp

    n = max(20, min(cap, int(rate * seconds)))
    rng = random.Random(rate)
    sched = np.cumsum([rng.expovariate(rate) for _ in range(n)])
    lat: list[float] = []
    bad = {"errors": 0, "mismatch": 0}
    conn = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60)) as s:
        t0 = time.perf_counter()

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, t0 + sched[i] - time.perf_counter()))
            text = texts[i % len(texts)]
            try:
                async with s.post(f"http://127.0.0.1:{port}/predict", json={"texts": [text]}) as r:
                    body = await r.json()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok, body = False, {}
            lat.append(time.perf_counter() - (t0 + sched[i]))
            if not ok:
                bad["errors"] += 1
            elif (body["predictions"][0]["label"], body["predictions"][0]["exit_layer"]) != ref[text]:
                bad["mismatch"] += 1

        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    # the Poisson schedule's own rate (n / its span) is what the server was offered; it kept up if it answered
    # at >= 90% of that rate (the tail latency shows in p95/p99)
    offered = n / float(sched[-1])
    return {"offered_rps": rate, "scheduled_rps": round(offered, 1), "requests": n, "achieved_rps": round(n / wall, 1),
            "kept_up": n / wall >= 0.9 * offered,
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), **bad}


async def sweep(spec: dict[str, Any], art: str, texts: list[str], args: argparse.Namespace,
                ref: dict[str, tuple[str, int]]) -> dict[str, Any]:
    name, port = spec["name"], free_port()
    proc = start(spec["kind"], spec["args"], art, args.exit, port)
    try:
        await wait_up(port, proc)
        await level(port, texts, 50, 1.0, 50, ref)  # warm-up
        levels = []
        for rate in args.rates:
            lv = await level(port, texts, rate, args.seconds, args.cap, ref)
            print(json.dumps({"server": name, **lv}), flush=True)
            levels.append(lv)
            if lv["achieved_rps"] < 0.7 * lv["scheduled_rps"] or lv["p95_ms"] > 2000:
                break
        peak = tree_hwm(proc.pid) if spec["kind"] == "litserve" else vm_hwm(proc.pid)
        pss, nproc = tree_pss(proc.pid), 1 + len(_children(proc.pid))
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    ok = [lv for lv in levels if lv["p95_ms"] <= P95_TARGET_MS and lv["kept_up"]]
    best = max((lv["achieved_rps"] for lv in ok), default=0.0)
    return {"server": name, "command": spec, "levels": levels, "peak_rss_mb": round(peak / 1e6, 1),
            "pss_end_mb": round(pss / 1e6, 1), "processes": nproc,
            "max_rps_at_p95_target": best}


# --- report -------------------------------------------------------------------------------------
def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    for res in results:
        x = [lv["offered_rps"] for lv in res["levels"]]
        line = a.plot(x, [lv["p95_ms"] for lv in res["levels"]], "o-", label=f"{res['server']} p95")[0]
        a.plot(x, [lv["p50_ms"] for lv in res["levels"]], "--", color=line.get_color(), alpha=0.6,
               label=f"{res['server']} p50")
        a.plot(x, [lv["p99_ms"] for lv in res["levels"]], ":", color=line.get_color(), alpha=0.6)
        b.plot(x, [lv["achieved_rps"] for lv in res["levels"]], "o-", color=line.get_color(), label=res["server"])
    a.axhline(P95_TARGET_MS, color="grey", lw=0.8)
    a.set(xlabel="offered load (requests/s)", ylabel="latency ms (p50 dashed, p95, p99 dotted)", yscale="log",
          title="latency vs offered load")
    top = max(lv["offered_rps"] for r in results for lv in r["levels"])
    b.plot([0, top], [0, top], color="grey", lw=0.8)
    b.set(xlabel="offered load (requests/s)", ylabel="achieved throughput (requests/s)", title="throughput")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rep: dict[str, Any]) -> str:
    lines = ["# Serving: dynamic batching vs batching off, nanotrt serve vs LitServe", "",
             f"`{rep['command']}` — artifact `{rep['artifact']}` (variant {rep['variant']}, exit {rep['exit']}), "
             f"single-sentence CoLA dev requests, open loop on 127.0.0.1, load generator on the same "
             f"{os.cpu_count()} cores; load average {rep['loadavg_before']} before, {rep['loadavg_after']} after.", "",
             f"Runner alone (same predictions, batch 1 and 32, plain process): peak RSS **{rep['runner_rss_mb']} MB**.",
             "", "| server | processes | max throughput at p95 ≤ 50 ms | peak RSS (summed over processes) | "
             "over the Runner's own | PSS at the end |", "|---|---|---|---|---|---|"]
    for r in rep["results"]:
        lines.append(f"| {r['server']} | {r['processes']} | {r['max_rps_at_p95_target']} req/s | {r['peak_rss_mb']} MB | "
                     f"+{round(r['peak_rss_mb'] - rep['runner_rss_mb'], 1)} MB | {r['pss_end_mb']} MB |")
    lines += ["", "Peak RSS sums each process's own peak (shared libraries count once per process); PSS splits "
              "shared pages between the processes that map them.", "",
              f"Throughput with batching on / off, each at the highest offered load it kept up with at p95 ≤ "
              f"{P95_TARGET_MS:g} ms: **{rep['batching_speedup'] or 'n/a'}x**.", ""]
    for r in rep["results"]:
        lines += [f"## {r['server']}", "", "| offered req/s (scheduled) | requests | achieved req/s | kept up | p50 ms "
                  "| p95 ms | p99 ms | errors | mismatches vs Runner.predict |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {lv['offered_rps']:g} ({lv['scheduled_rps']}) | {lv['requests']} | {lv['achieved_rps']} | "
                  f"{'yes' if lv['kept_up'] else 'no'} | {lv['p50_ms']} | {lv['p95_ms']} | {lv['p99_ms']} | {lv['errors']} "
                  f"| {lv['mismatch']} |" for lv in r["levels"]]
        lines.append("")
    lines += ["![latency and throughput vs offered load](serving.png)", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", default=str(DEFAULT_ART))
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=list(RATES))
    ap.add_argument("--seconds", type=float, default=5.0, help="longest a load level runs")
    ap.add_argument("--cap", type=int, default=2000, help="most requests of a load level")
    ap.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated, of {', '.join(SERVERS)}")
    ap.add_argument("--out", default=str(OUT / "serving"))
    ap.add_argument("--exit", default="patience=3", help="exit rule of every server and of the reference")
    ap.add_argument("--litserve-child", nargs=5, metavar=("ART", "EXIT", "PORT", "BATCH", "WAIT_MS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.litserve_child:
        art, exit, port, bs, wait = args.litserve_child
        return litserve_child(art, exit, int(port), int(bs), float(wait))

    from nanotrt.pipeline.glue import read_split
    from nanotrt.runtime.fsutil import atomic_file, write_json

    texts = read_split("cola", "dev").texts
    before = [round(x, 2) for x in os.getloadavg()]
    alone = runner_alone(args.artifact, args.exit, texts)
    ref = reference(args.artifact, args.exit, texts)
    keys = [k for k in args.servers.split(",") if k and (k != "litserve" or _has("litserve"))]
    results = {k: asyncio.run(sweep(SERVERS[k], args.artifact, texts, args, ref)) for k in keys}
    on, off = (results[k]["max_rps_at_p95_target"] if k in results else 0.0 for k in ("batching", "off"))
    rep = {"command": "python benchmarks/serving.py " + " ".join(sys.argv[1:]), "artifact": args.artifact,
           "variant": alone["variant"], "exit": alone["exit"], "runner_rss_mb": round(alone["peak_rss"] / 1e6, 1),
           "loadavg_before": before, "loadavg_after": [round(x, 2) for x in os.getloadavg()],
           "p95_target_ms": P95_TARGET_MS, "results": list(results.values()),
           "batching_speedup": round(on / off, 2) if off else None}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), rep)
    with atomic_file(out.with_suffix(".png")) as tmp:
        plot(rep["results"], tmp.with_suffix(".png"))
        tmp.with_suffix(".png").replace(tmp)
    with atomic_file(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(rep))
    print(markdown(rep))


def _children(pid: int) -> list[Any]:
    import psutil

    return list(psutil.Process(pid).children(recursive=True))


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
