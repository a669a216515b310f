"""What one layer swap costs on ONNX Runtime CPU, by method and precision (issue 21), side by side in one run.

For each artifact (the demo MiniLM, a BERT-base-shaped random export) and each built variant (FP32, INT8 static
Q/DQ, INT8 dynamic), its distinct layer graphs are swapped in turn, one at a time, by:

  (a) session      today's path: build a session from the built graph (no prepacking), drop it on release;
  (b) mapped       swap variant: one session per layer structure (built once), the layer's weight file mapped
                   with MAP_POPULATE and its arrays fed as inputs (zero-copy); munmap on release;
  (b) lazy         the same without MAP_POPULATE: the run faults the pages in;
  (b) cold         (b) after the file was dropped from the page cache (posix_fadvise): read from disk;
  (c) ext-init     a session per swap from the structure graph, its weights given as mapped OrtValues through
                   ``SessionOptions.add_external_initializers``;
  (d) kept         one session per layer kept for good (built with (c)'s mapped initializers); release drops
                   the weight pages (MADV_DONTNEED), load maps them again (MADV_POPULATE_READ, else touching).

Per swap: load ms (until runnable), first run ms (pages fault here when not populated), steady run ms (pages
resident), release ms, and the swap's cost = load + first run + release - the resident run (built graph,
prepacked, everything loaded: the all-resident baseline, run on the same layer right after each swap so both
see the same machine load); per MB of the layer's weights. Memory: RssAnon / RssFile added per
layer held (all layers loaded at once).

    flock /tmp/nanotrt-cpu.lock python benchmarks/swap_cost.py [--artifact ART ...] [--shapes 1x128 1x16 8x32] [--repeats 3]
        ->  benchmarks/results/swap_cost.{json,md}
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
CACHE = Path.home() / ".cache" / "nanotrt"
DEMO = CACHE / "minilm-cola" / "artifact"  # made by `nanotrt bench --task cola`
ARTIFACTS = {"MiniLM-L6 (demo, CoLA)": CACHE / "swap-minilm-cola" / "artifact",  # demo_copy()
             "BERT-base shape": CACHE / "bert-base-random" / "artifact"}  # streaming_memory.make_model
SOURCES = ("ort-fp32", "ort-int8", "ort-int8-dynamic")
MADV_POPULATE_READ = 22  # Linux >= 5.14; not in Python's mmap module


def rss() -> tuple[int, int]:
    from nanotrt.runtime.profile import proc_status_bytes

    return proc_status_bytes("RssAnon"), proc_status_bytes("RssFile")


def feeds(m: Any, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"hidden_states": rng.standard_normal((*shape, int(m.data["hidden_size"]))).astype(np.float32),
            "attention_mask": np.ones(shape, np.int64)}


def parse_shape(text: str) -> tuple[int, int]:
    b, s = text.lower().split("x")
    return int(b), int(s)


def drop_cache(path: Path) -> None:
    """Evict a file from the page cache (pages not mapped by anyone), so the next map reads the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class Method:
    """load(name) -> handle, run(handle, feeds), release(name, handle); ``before_load`` runs untimed."""

    def __init__(self, load: Callable[[str], Any], run: Callable[[Any, dict[str, np.ndarray]], Any],
                 release: Callable[[str, Any], None], before_load: Callable[[str], None] | None = None):
        self.load, self.run, self.release, self.before_load = load, run, release, before_load


def methods(m: Any, variant: str) -> dict[str, Method]:
    from nanotrt.engines.onnxruntime import Layout, OrtBackend, map_weights

    swap = variant + "-swap"
    plain = OrtBackend(prepack=False)
    # prepack=False: what the runner configures when it streams (otherwise a swap graph runs its source)
    mapped, lazy = OrtBackend(prepack=False, populate=True), OrtBackend(prepack=False, populate=False)
    swap_name = dict(zip(m.schedule(variant).layers, m.schedule(swap).layers, strict=True))
    ort = plain._ort

    def ext_session(name: str) -> tuple[Any, Any]:
        """(c): a session whose initializers are the mapped arrays (structure graph with the inputs turned back
        into initializers, data given through add_external_initializers)."""
        entry = m.graphs[swap_name[name]]
        sentry = m.graphs[entry["structure"]]
        mm, w = map_weights(m.path(swap_name[name]), Layout.of(sentry), True)
        so = plain._options(sentry)
        so.add_external_initializers(list(w), [ort.OrtValue.ortvalue_from_numpy(a) for a in w.values()])
        return ort.InferenceSession(ext_models[entry["structure"]], so, providers=plain.providers), (mm, w)

    ext_models = {s: _with_initializers(m, s) for s in {m.graphs[n]["structure"] for n in swap_name.values()}}
    kept: dict[str, tuple[Any, Any]] = {}

    def kept_load(name: str) -> Any:
        if name not in kept:
            kept[name] = ext_session(name)
        mm = kept[name][1][0]
        try:
            mm.madvise(MADV_POPULATE_READ)
        except OSError:  # older kernel: touch one byte per page
            np.frombuffer(mm, np.uint8)[::4096].sum()
        return kept[name][0]

    def kept_release(name: str, _: Any) -> None:
        kept[name][1][0].madvise(mmap.MADV_DONTNEED)

    def drop(b: OrtBackend) -> Callable[[str, Any], None]:
        return lambda _, e: b.release(e)

    def ort_run(s: Any, f: dict[str, np.ndarray]) -> Any:
        return s.run(None, {i.name: f[i.name] for i in s.get_inputs() if i.name in f})

    out = {
        "(a) session build per swap (today)": Method(lambda n: plain.load(m, n), plain.run, drop(plain)),
        "(b) structure session + mapped weights, populated at load": Method(
            lambda n: mapped.load(m, swap_name[n]), mapped.run, drop(mapped)),
        "(b) ... not populated (run faults the pages)": Method(
            lambda n: lazy.load(m, swap_name[n]), lazy.run, drop(lazy)),
        "(b) ... cold: file dropped from the page cache": Method(
            lambda n: mapped.load(m, swap_name[n]), mapped.run, drop(mapped),
            before_load=lambda n: drop_cache(m.path(swap_name[n]))),
        "(c) session per swap, add_external_initializers (mapped)": Method(
            lambda n: ext_session(n), lambda h, f: ort_run(h[0], f), lambda n, h: None),
        "(d) sessions kept, weight pages dropped / re-populated": Method(kept_load, ort_run, kept_release),
    }
    return out


def _with_initializers(m: Any, structure: str) -> bytes:
    """The structure graph with its weight inputs declared as (external) initializers again, for (c)/(d)."""
    import onnx

    entry = m.graphs[structure]
    model = onnx.load(str(m.path(structure)))
    lifted = {w[0]: w for w in entry["weights"]}
    keep = [i for i in model.graph.input if i.name not in lifted]
    for name, dt, shape, off in entry["weights"]:
        t = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)), dims=shape)
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", "unused.bin"), ("offset", str(off)),
                     ("length", str(int(np.prod(shape)) * np.dtype(dt).itemsize))):
            e = t.external_data.add()
            e.key, e.value = k, v
        model.graph.initializer.append(t)
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model.SerializeToString()


def measure(m: Any, variant: str, shape: tuple[int, int], repeats: int) -> list[dict[str, Any]]:
    """Every method over the variant's distinct layers; after each swap the same layer's resident engine runs
    once, so each method's swap is paired with a resident run taken under the same machine load."""
    from nanotrt.engines.onnxruntime import OrtBackend

    f = feeds(m, shape)
    tokens = f"{shape[0]}x{shape[1]}"
    layers = list(dict.fromkeys(m.schedule(variant).layers))
    swap_layers = list(dict.fromkeys(m.schedule(variant + "-swap").layers))
    mb = np.mean([m.graphs[n]["bytes"] for n in swap_layers]) / 1e6
    res = OrtBackend(prepack=True)  # the all-resident baseline: built graphs, prepacked, all loaded
    resident = {n: res.load(m, n) for n in layers}
    for e in resident.values():
        res.run(e, f)
    rows = []
    for label, meth in methods(m, variant).items():
        rec: dict[str, list[float]] = {"load": [], "first": [], "run": [], "release": [], "resident": []}
        for r in range(repeats + 1):  # the first round warms the page cache and the structure sessions
            for n in layers:
                if meth.before_load:
                    meth.before_load(n)
                t0 = time.perf_counter()
                h = meth.load(n)
                t1 = time.perf_counter()
                meth.run(h, f)
                t2 = time.perf_counter()
                meth.run(h, f)
                t3 = time.perf_counter()
                meth.release(n, h)
                del h
                t4 = time.perf_counter()
                res.run(resident[n], f)
                t5 = time.perf_counter()
                if r:
                    for k, v in zip(rec, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                        rec[k].append(1000 * v)
        anon, file = _held(meth, layers, f)
        med = {k: float(np.median(v)) for k, v in rec.items()}
        swap_ms = med["load"] + med["first"] + med["release"] - med["resident"]
        rows.append({"variant": variant, "tokens": tokens, "method": label, "layer_mb": mb,
                     **{f"{k}_ms": v for k, v in med.items() if k != "resident"},
                     "resident_run_ms": med["resident"], "swap_ms": swap_ms, "swap_ms_per_mb": swap_ms / mb,
                     "anon_mb_per_layer": anon / 1e6, "file_mb_per_layer": file / 1e6})
        print(f"{variant:18s} {tokens:6s} {label[:60]:60s} load {med['load']:6.2f} first {med['first']:6.2f} "
              f"run {med['run']:6.2f} (resident {med['resident']:6.2f}) swap {swap_ms:6.2f} ms  anon {anon / 1e6:6.1f} "
              f"file {file / 1e6:6.1f} MB/layer", flush=True)
    return rows


def _held(meth: Method, layers: list[str], f: dict[str, np.ndarray]) -> tuple[float, float]:
    """RssAnon / RssFile added per layer while every layer is loaded and has run once."""
    from nanotrt.runtime.backend import trim_heap

    trim_heap()
    a0, f0 = rss()
    held = []
    for n in layers:
        held.append(meth.load(n))
        meth.run(held[-1], f)
    a1, f1 = rss()
    for n, h in zip(layers, held, strict=True):
        meth.release(n, h)
    del held
    trim_heap()
    return (a1 - a0) / len(layers), (f1 - f0) / len(layers)


def demo_copy(src: Path = DEMO) -> Path | None:
    """A copy of the demo artifact to add the swap variants to, so `nanotrt bench`'s own cache keeps choosing
    what it chose (refreshed when the demo's graphs change); None when the demo has not been made."""
    import shutil

    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.fsutil import atomic_dir

    if not (src / "manifest.json").is_file():
        return None
    dst = ARTIFACTS["MiniLM-L6 (demo, CoLA)"]
    stamp = Manifest.load(src).graphs["whole"]["sha256"]
    if not (dst / "manifest.json").is_file() or Manifest.load(dst).graphs["whole"]["sha256"] != stamp:
        with atomic_dir(dst) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    return dst


def ensure_swap(art: Path) -> None:
    """The swap variants of the artifact's built variants, with the options they were built with (so that
    nothing else is rebuilt; a no-op when up to date)."""
    from nanotrt.pipeline.build import build
    from nanotrt.runtime.artifact import Manifest

    m = Manifest.load(art)
    info = m.data["variants"]
    opts = info.get("ort-int8", info.get("ort-int8-dynamic", {})).get("options", {})
    build(art, int8="ort-int8" in info, dynamic="ort-int8-dynamic" in info, fused="ort-fp32-fused" in info,
          swap=True, **{k: opts[k] for k in ("calib_task", "calib_size", "calib_method", "int8_tolerance") if k in opts})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", type=Path, nargs="*", default=None)
    ap.add_argument("--shapes", nargs="*", default=["1x128", "1x16", "8x32"], help="BATCHxTOKENS fed to each layer")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    a = ap.parse_args()
    os.environ.setdefault("NANOTRT_ORT_THREAD_POOL", "session")  # plain sessions (c, d) next to the backend's
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.fsutil import write_json
    from nanotrt.runtime.profile import machine

    demo_copy()
    names = {v.resolve(): k for k, v in ARTIFACTS.items()}
    arts = ({names.get(p.resolve(), str(p)): p for p in a.artifact} if a.artifact
            else {k: v for k, v in ARTIFACTS.items() if v.is_dir()})
    load0 = os.getloadavg()
    results: dict[str, Any] = {"rows": {}, "machine": machine(), "loadavg_start": load0,
                               "command": "python benchmarks/swap_cost.py " + " ".join(sys.argv[1:])}
    for label, art in arts.items():
        ensure_swap(art)
        m = Manifest.load(art)
        rows = []
        for variant in SOURCES:
            if variant in m.variants and variant + "-swap" in m.variants:
                for shape in a.shapes:
                    rows += measure(m, variant, parse_shape(shape), a.repeats)
        results["rows"][label] = rows
    results["loadavg_end"] = os.getloadavg()
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "swap_cost.json", results)
    (a.out / "swap_cost.md").write_text(markdown(results))
    print(f"wrote {a.out / 'swap_cost.md'}")


def markdown(res: dict[str, Any]) -> str:
    mi = res["machine"]
    lines = ["# Swap cost by method and precision (ONNX Runtime CPU, batch 1)", "",
             f"`flock /tmp/nanotrt-cpu.lock {res['command']}`; {mi['cpu']}, {mi['cores']} cores, shared machine "
             f"(load average {res['loadavg_start'][0]:.2f} at the start, {res['loadavg_end'][0]:.2f} at the end). "
             "Medians over every swap of the variant's distinct layers. Swap = load + first run + release - the "
             "resident run (built graph, prepacked, all loaded); per MB of the layer's weights. Memory: RssAnon / "
             "RssFile added per layer while every layer is held.", ""]
    for label, rows in res["rows"].items():
        lines += [f"## {label}", "", "| variant | batch x tokens | method | layer MB | load ms | first run ms | steady run ms | "
                  "resident run ms | release ms | swap ms | swap ms / MB | anon MB / layer | file MB / layer |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['variant']} | {r['tokens']} | {r['method']} | {r['layer_mb']:.1f} | {r['load_ms']:.2f} | "
                         f"{r['first_ms']:.2f} | {r['run_ms']:.2f} | {r['resident_run_ms']:.2f} | {r['release_ms']:.2f} | "
                         f"{r['swap_ms']:.2f} | {r['swap_ms_per_mb']:.3f} | {r['anon_mb_per_layer']:.1f} | "
                         f"{r['file_mb_per_layer']:.1f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
