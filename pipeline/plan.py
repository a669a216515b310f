"""`nanotrt plan`: exit-aware engine plans — where the engine boundaries and the live ramps are.

A per-layer walk pays one engine call per layer (and per ramp), although early layers almost never exit: a
call where nobody stops is pure overhead. A plan groups consecutive layers into *segments*, each compiled into
one graph that ends in its ramp where exits are allowed (the embeddings join the first segment). It is chosen
from three measurements:

1. the held-out ramp outputs (the train rows training kept out; never dev), replayed with the runner's exit
   policies (``calibrate_exit.simulate``);
2. this device's cost per graph and per engine call (``nanotrt profile`` of the source variant, plus the
   runner's own overhead per step, measured here);
3. the memory budget: each segment plus one full-length example's activations must fit.

For each candidate exit rule, dynamic programming over cut points minimizes the expected latency per example
(model: a row that would stop at a ramp that is not live stops at the next live one, so the share of rows
still running after layer j is known per rule); the exact holdout loss and latency of that plan are then
replayed and the fastest plan within ``--max-loss`` wins, its rule re-chosen on the ramps that remain.
Degenerate cases fall out of the same code: no exit allowed -> one segment; a one-layer budget -> per layer.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.runtime.errors import NanotrtError

# --- the model: costs, a plan, dynamic programming ------------------------------------------------------


@dataclass
class Costs:
    """Seconds per example at the holdout's typical shape. ``emb``/``layer``/``ramp``: compute of each graph
    without the per-call cost; ``call``: what one engine call costs on top (backend + runner step);
    ``exit``: the exit decision at a live ramp; ``load``: per graph kind, added when segments are swapped."""

    emb: float
    layer: list[float]
    ramp: list[float]
    call: float
    exit: float = 0.0
    load_emb: float = 0.0
    load_layer: list[float] = field(default_factory=list)
    load_ramp: list[float] = field(default_factory=list)
    streaming: bool = False
    emb_alone: bool = False  # the embeddings run as their own step (the budget cannot hold them with layer 0)

    @property
    def n(self) -> int:
        return len(self.layer)

    def segment(self, start: int, end: int, live: bool, ramp_alone: bool = False) -> float:
        emb = start == 0 and not self.emb_alone
        t = self.call + sum(self.layer[start:end]) + (self.emb if emb else 0.0)
        if live:
            t += self.ramp[end - 1] + self.exit + (self.call if ramp_alone else 0.0)
        if self.streaming:
            t += sum(self.load_layer[start:end]) + (self.load_emb if emb else 0.0)
            t += self.load_ramp[end - 1] if live else 0.0
        return t


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    ramp: bool
    ramp_alone: bool = False  # the ramp runs as its own graph: the budget cannot hold it with the layers

    def cost(self, costs: Costs) -> float:
        return costs.segment(self.start, self.end, self.ramp, self.ramp_alone)


Fits = Callable[[int, int, bool], bool]  # fits(start, end, with_ramp): the segment's graph within the budget


def options(fits: Fits, start: int, end: int, last: bool) -> list[Segment]:
    """The ways layers start..end can be one segment: ramp inside, ramp as its own graph (only when it does
    not fit inside: it costs a call), or no live ramp (never the last segment)."""
    out = []
    if fits(start, end, True):
        out.append(Segment(start, end, True))
    elif fits(start, end, False) and fits(end, end, True):
        out.append(Segment(start, end, True, ramp_alone=True))
    if not last and fits(start, end, False):
        out.append(Segment(start, end, False))
    return out


def expected_cost(costs: Costs, segments: list[Segment], reach: np.ndarray) -> float:
    """Expected seconds per example: each segment's cost times the share of rows still running at its start
    (``reach[j]``: share still running after layer j under the all-ramps rule; monotone model)."""
    total, last_live = 0.0, 0
    for s in segments:
        total += float(reach[last_live]) * s.cost(costs)
        if s.ramp:
            last_live = s.end
    return total


def dp_plan(costs: Costs, reach: np.ndarray, fits: Fits) -> tuple[float, list[Segment]]:
    """Minimum ``expected_cost`` over every cut set and live-ramp choice whose segments fit the budget.
    State: (layers done, layers done at the last live ramp); O(L^3)."""
    n = costs.n
    best: dict[tuple[int, int], tuple[float, list[Segment]]] = {(0, 0): (0.0, [])}
    for j in range(n):
        for r in range(j + 1):
            if (j, r) not in best:
                continue
            cost, segs = best[(j, r)]
            for e in range(j + 1, n + 1):
                for seg in options(fits, j, e, e == n):
                    c = cost + float(reach[r]) * seg.cost(costs)
                    key = (e, e if seg.ramp else r)
                    if key not in best or c < best[key][0] - 1e-15:
                        best[key] = (c, [*segs, seg])
    if (n, n) not in best:
        raise NanotrtError("no plan fits the memory budget: a layer (or its ramp) alone does not fit; raise --memory-budget")
    return best[(n, n)]


def brute_force_plan(costs: Costs, reach: np.ndarray, fits: Fits) -> tuple[float, list[Segment]]:
    """Every cut set and segment option (exponential; the reference the tests hold the DP to)."""
    n = costs.n
    best: tuple[float, list[Segment]] = (float("inf"), [])
    for cuts in itertools.product((False, True), repeat=n - 1):  # a boundary after layer i or not
        bounds = [0, *(i + 1 for i, c in enumerate(cuts) if c), n]
        spans = list(itertools.pairwise(bounds))
        for segs in itertools.product(*(options(fits, a, b, b == n) for a, b in spans)):
            c = expected_cost(costs, list(segs), reach)
            if c < best[0] - 1e-15:
                best = (c, list(segs))
    return best


def reach_of(exit_layers: np.ndarray, n: int) -> np.ndarray:
    """reach[j] = share of rows still running after layer j (exit layer > j), j = 0..n."""
    return np.array([(exit_layers > j).mean() for j in range(n + 1)], dtype=np.float64)


def replay_cost(costs: Costs, segments: list[Segment], exit_layers: np.ndarray) -> float:
    """Exact mean seconds per example when each row stops at ``exit_layers`` (1-based, at a live ramp)."""
    ends = np.array([s.end for s in segments])
    cum = np.cumsum([s.cost(costs) for s in segments])
    return float(cum[np.searchsorted(ends, exit_layers)].mean())


# --- choosing: every candidate rule through the DP, then the exact replay ----------------------------------


@dataclass
class PlanChoice:
    segments: list[Segment]
    exit: str  # the rule, replayed on the live ramps only
    metric: float
    loss: float  # points (x100 metric) below full depth on the holdout
    avg_exit: float
    seconds: float  # exact replay: mean predicted seconds per example on the holdout

    @property
    def live(self) -> list[int]:
        return [s.end - 1 for s in self.segments if s.ramp]

    def as_dict(self) -> dict[str, Any]:
        return {"segments": [s.__dict__ for s in self.segments], "exit": self.exit, "metric": self.metric,
                "loss": self.loss, "avg_exit": self.avg_exit, "predicted_ms": self.seconds * 1000}


@dataclass
class Holdout:
    """What the plan is chosen on: the held-out rows' every-ramp outputs and how to score them."""

    ramp_logits: np.ndarray  # [N, layers, labels]
    exit_prob: np.ndarray | None
    score: Callable[[np.ndarray], float]  # logits [N, labels] -> metric (x1)
    task_type: str

    @property
    def n(self) -> int:
        return int(self.ramp_logits.shape[1])


def replay(h: Holdout, costs: Costs, segments: list[Segment], spec: str, full: float) -> PlanChoice:
    from nanotrt.pipeline.calibrate_exit import simulate
    from nanotrt.runtime.exits import parse_exit

    live = [s.end - 1 for s in segments if s.ramp]
    layers, logits = simulate(parse_exit(spec, h.task_type, h.n), h.ramp_logits, h.exit_prob, live=live)
    metric = h.score(logits)
    return PlanChoice(segments, spec, metric, 100 * (full - metric), float(layers.mean()),
                      replay_cost(costs, segments, layers))


Passing = Callable[[list[str], "list[int] | None"], list[str]]  # (specs, live ramps or all) -> those within the loss


def choose_plan(h: Holdout, costs: Costs, fits: Fits, specs: list[str], passing: Passing
                ) -> tuple[PlanChoice, list[PlanChoice]]:
    """Every setting that passes on all ramps gets its DP plan; the fastest plan (exact holdout replay) wins and
    its rule is re-chosen among the settings that pass on that plan's live ramps (full depth always passes).
    Returns (choice, every rule's DP plan)."""
    from nanotrt.pipeline.calibrate_exit import simulate
    from nanotrt.runtime.exits import parse_exit

    full = h.score(h.ramp_logits[:, -1])
    tried = []
    for spec in ["none", *passing(specs, None)]:
        layers, _ = simulate(parse_exit(spec, h.task_type, h.n), h.ramp_logits, h.exit_prob)
        _, segments = dp_plan(costs, reach_of(layers, h.n), fits)
        tried.append(replay(h, costs, segments, spec, full))
    best = min(tried, key=lambda c: (c.seconds, c.loss))
    again = [replay(h, costs, best.segments, spec, full) for spec in ["none", *passing(specs, best.live)]]
    return min(again, key=lambda c: (c.seconds, c.loss)), tried


# --- segment graphs: consecutive per-layer graphs composed into one ONNX graph -----------------------------

HIDDEN_IN, HIDDEN_OUTS, MASK = "hidden_states", ("hidden_states", "hidden_states_out"), "attention_mask"
# Max abs difference of a segment from its parts run one after another: the same kernels on the same weights
# (float reassociation only); FP16 graphs on ONNX Runtime CPU get casts inserted around ops without FP16
# kernels, and one graph can drop a round trip the parts keep (measured up to 2e-3 on the tiny models).
SEGMENT_ATOL = {"fp16": 1e-2}
SEGMENT_ATOL_DEFAULT = 1e-5
NAME_SLACK = 4096  # bytes per part a composed graph may grow by: every name gets its part's prefix


def _rename_graph(g: Any, rename: Callable[[str], str]) -> None:
    for node in g.node:
        if any(a.type in (a.GRAPH, a.GRAPHS) for a in node.attribute):
            raise NanotrtError(f"graph node {node.name} ({node.op_type}) has a subgraph: nanotrt plan cannot compose it")
        node.name = rename(node.name)
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    for coll in (g.initializer, g.value_info, g.input, g.output):
        for x in coll:
            x.name = rename(x.name)
    for sp in g.sparse_initializer:
        sp.values.name = rename(sp.values.name)


def compose(paths: list[Path], dst: Path, keep_hidden: bool) -> None:
    """One graph running ``paths`` in order (embeddings / layers / one ramp last): each part's hidden input is
    bound to the previous part's hidden output, every part reads the one ``attention_mask``, internal names
    get a per-part prefix. Outputs: ``hidden_states_out`` (when ``keep_hidden``) and the ramp's outputs."""
    import onnx

    models = [onnx.load(str(p)) for p in paths]
    out = onnx.helper.make_graph([], dst.stem, [], [])
    hidden: str | None = None  # the name of the hidden states so far
    inputs: dict[str, Any] = {}
    opsets: dict[str, int] = {}
    makers = [k for k, m in enumerate(models) if any(o.name in HIDDEN_OUTS for o in m.graph.output)]
    for k, model in enumerate(models):
        g, prefix = model.graph, f"p{k}/"
        outs = [o.name for o in g.output]
        bound = {"": "", MASK: MASK}
        if hidden is not None:
            bound[HIDDEN_IN] = hidden
        for i in g.input:  # tokens, mask, or the first part's hidden states: inputs of the segment
            bound.setdefault(i.name, i.name)
        for o in outs:
            last = keep_hidden and makers and k == makers[-1]
            bound[o] = ("hidden_states_out" if last else prefix + o) if o in HIDDEN_OUTS else o
        _rename_graph(g, lambda x, b=bound, p=prefix: b.get(x, p + x))  # type: ignore[misc]
        for i in g.input:
            if i.name != hidden:
                inputs.setdefault(i.name, i)
        out.output.extend(o for o, name in zip(g.output, outs, strict=True)
                          if name not in HIDDEN_OUTS or o.name == "hidden_states_out")
        out.node.extend(g.node)
        out.initializer.extend(g.initializer)
        out.sparse_initializer.extend(g.sparse_initializer)
        out.value_info.extend(g.value_info)
        hidden = next((bound[o] for o in outs if o in HIDDEN_OUTS), hidden)
        for o in model.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
    out.input.extend(inputs.values())
    merged = onnx.helper.make_model(out, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()])
    merged.ir_version = max(m.ir_version for m in models)
    onnx.save(merged, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
              location=dst.name + ".data", size_threshold=1024)


def _session(path: Path) -> Any:
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import session_options

    so = session_options(ort)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(sess: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {i.name: feeds[i.name] for i in sess.get_inputs()}), strict=True))


def run_parts(paths: list[Path], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference a segment is held to: its parts run one after another, as the per-layer walk runs them."""
    feeds, out = dict(feeds), {}
    for p in paths:
        out = _run(_session(p), feeds)
        for name in HIDDEN_OUTS:
            if name in out:
                feeds[HIDDEN_IN] = out[name]
    return {"hidden_states_out": feeds[HIDDEN_IN], **out}


def segment_error(dst: Path, paths: list[Path], feeds: dict[str, np.ndarray]) -> float:
    """Max abs difference of a composed segment against its parts on the same (padded) inputs."""
    got, ref = _run(_session(dst), feeds), run_parts(paths, feeds)
    return max(float(np.abs(v - ref[k]).max()) for k, v in got.items())


def probe_feeds(inputs: list[dict[str, Any]], hidden: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A padded two-row batch for ``inputs`` (a manifest I/O signature): row 2 is 3 tokens shorter."""
    rng = np.random.default_rng(seed)
    b, s = 2, 9
    mask = np.ones((b, s), np.int64)
    mask[1, -3:] = 0
    feeds: dict[str, np.ndarray] = {}
    for i in inputs:
        name, width = i["name"], int(i.get("shape", [hidden])[-1]) if i["name"] == "inputs_embeds" else hidden
        if name in (MASK, "token_type_ids"):
            feeds[name] = mask if name == MASK else np.zeros((b, s), np.int64)
        elif name == "input_ids":
            feeds[name] = rng.integers(0, vocab, (b, s)).astype(np.int64)
        else:  # inputs_embeds, hidden_states
            feeds[name] = rng.standard_normal((b, s, width)).astype(np.float32) * (0.05 if name == "inputs_embeds" else 1)
    return feeds


# --- measuring this device --------------------------------------------------------------------------------


def _call_seconds(hidden: int, seq: int, repeats: int = 200) -> float:
    """One engine call that computes nothing (an Identity graph through ORT): the per-call cost a segment
    saves at each boundary it removes."""
    import tempfile

    import onnx

    x = onnx.helper.make_tensor_value_info(HIDDEN_IN, onnx.TensorProto.FLOAT, ["b", "s", hidden])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", "s", hidden])
    model = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Identity", [HIDDEN_IN], ["y"])],
                                                          "call", [x], [y]), opset_imports=[onnx.helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as d:
        onnx.save(model, f"{d}/call.onnx")
        sess = _session(Path(d) / "call.onnx")
    feeds = {HIDDEN_IN: np.zeros((1, seq, hidden), np.float32)}
    for _ in range(20):
        sess.run(None, feeds)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feeds)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def walk_times(runner: Any, encs: list[dict[str, np.ndarray]]) -> tuple[dict[str, float], float]:
    """Each graph's median time inside the runner's own walk (full depth, batch 1, pre-tokenized held-out
    examples), and the runner's own median cost per step on top (feeds, outputs, exit decision). Measured in
    the walk, not in a loop over one graph: a layer's weights leave the caches while the others run, which a
    tight loop hides (it measured half the time here). Medians: other load on the machine inflates means."""
    real, names = runner.backend.run, dict[int, str]()
    inside: dict[str, list[float]] = {}
    total = [0.0]  # time inside backend.run for the current example

    def timed(engine: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = time.perf_counter()
        out = real(engine, feeds)
        dt = time.perf_counter() - t
        inside.setdefault(names.get(id(engine), ""), []).append(dt)
        total[0] += dt
        return out

    for k, step in enumerate(runner.steps):
        names[id(runner.cache.acquire(k))] = step.graph
        runner.cache.release(k)
    runner.backend.run = timed
    try:
        for e in encs[:5]:
            runner.run_encoded(e)
        inside.clear()
        outside = []  # per example: wall time minus time inside the engines
        for e in encs:
            total[0] = 0.0
            t = time.perf_counter()
            runner.run_encoded(e)
            outside.append(time.perf_counter() - t - total[0])
    finally:
        runner.backend.run = real
    return {g: float(np.median(ts)) for g, ts in inside.items()}, float(np.median(outside)) / len(runner.steps)


def _load_seconds(m: Any, be: Any, names: list[str], repeats: int = 5) -> dict[str, float]:
    """Median time to load each graph (a swap); the first load of a process also pays one-time setup."""
    out = {}
    for name in names:
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            be.release(be.load(m, name))
            ts.append(time.perf_counter() - t)
        out[name] = float(np.median(ts))
    be.close()
    return out


def measure_costs(m: Any, source: str, texts: list[str], pairs: list[str] | None, backend: str,
                  streaming: bool, examples: int = 300) -> tuple[Costs, dict[str, Any]]:
    """Per-graph run (and load) time of ``source`` in the runner's walk at batch 1 on held-out examples, per-call
    and per-step overhead: the plan's cost table. Returns (costs, the measurement record)."""
    from nanotrt.runtime.backend import get_backend
    from nanotrt.runtime.profile import machine
    from nanotrt.runtime.runner import Runner

    sched = m.schedule(source)
    with Runner(m, get_backend(backend), exit="none", variant=source, own_backend=True) as runner:  # all resident
        encs = [runner.tokenizer([t], [p] if pairs else None)
                for t, p in zip(texts[:examples], (pairs or texts)[:examples], strict=True)]
        seq = int(np.median([e["input_ids"].shape[1] for e in encs]))
        run, step = walk_times(runner, encs)
    load = _load_seconds(m, get_backend(backend), sched.names()) if streaming else dict.fromkeys(run, 0.0)
    call = _call_seconds(int(m.data["hidden_size"]), seq) if backend == "onnxruntime" else 0.0
    net = {g: max(0.0, t - call) for g, t in run.items()}
    costs = Costs(net[sched.embeddings], [net[g] for g in sched.layers], [net[g] for g in sched.ramps],
                  call + step, 0.0, load[sched.embeddings], [load[g] for g in sched.layers],
                  [load[g] for g in sched.ramps], streaming)
    return costs, {"seq": seq, "call_ms": call * 1000, "step_overhead_ms": step * 1000,
                   "graph_ms": {g: t * 1000 for g, t in run.items()}, "load_ms": {g: t * 1000 for g, t in load.items()},
                   "machine": machine(), "load_average": os.getloadavg()}


# --- the command ------------------------------------------------------------------------------------------


def _budget(m: Any, source: str, memory_budget: str | None) -> tuple[int | None, int, dict[str, int]]:
    """(budget bytes or None, one full-length example's activation bytes, bytes per graph of ``source``).
    ``Nlayers`` counts the source's per-layer graphs, so a one-layer budget gives the per-layer plan."""
    from nanotrt.runtime.runner import Activations, resolve_budget

    sched = m.schedule(source)
    acts = Activations.from_manifest(m).block([(1, int(m.tokenizer["max_length"]))])
    sizes = {g: int(m.graphs[g]["bytes"]) for g in sched.names()}
    return resolve_budget(memory_budget, m, source), acts, sizes


def fits_budget(m: Any, source: str, budget: int | None, acts: int, sizes: dict[str, int]) -> tuple[Fits, bool]:
    """fits(start, end, with_ramp): the segment's graph (its parts' bytes; ``start == end``: the ramp alone) plus
    one full-length example's activations within the budget. Second: whether the embeddings run alone (they
    do not fit with layer 0)."""
    sched = m.schedule(source)

    def seg_bytes(start: int, end: int, ramp: bool, emb: bool) -> int:
        parts = [*sched.layers[start:end], *([sched.ramps[end - 1]] if ramp else []),
                 *([sched.embeddings] if start == 0 and end > 0 and emb else [])]
        return sum(sizes[g] for g in parts) + (NAME_SLACK * len(parts) if len(parts) > 1 else 0)

    if budget is None:
        return (lambda s, e, r: True), False
    emb_alone = seg_bytes(0, 1, False, True) + acts > budget
    return (lambda s, e, r: seg_bytes(s, e, r, not emb_alone) + acts <= budget), emb_alone


def segment_parts(sched: Any, seg: Segment, emb_alone: bool) -> list[str]:
    """The source graphs a segment is composed of, in order."""
    head = [sched.embeddings] if seg.start == 0 and not emb_alone else []
    return head + sched.layers[seg.start:seg.end] + ([sched.ramps[seg.end - 1]] if seg.ramp and not seg.ramp_alone else [])


class SegmentBuilder:
    """Turns the composed ONNX of a segment into the engine file a backend runs. ONNX Runtime runs the
    composed graph itself (its parts were optimized offline); TensorRT builds a plan from the composition of
    the ONNX each per-layer plan was parsed from, with the source variant's build options."""

    def __init__(self, m: Any, source: str):
        self.m, self.source = m, source
        self.info: dict[str, Any] = {"backend": "onnx"}

    def part(self, name: str) -> Path:
        """The ONNX file of a source graph."""
        return Path(self.m.verify(name))

    def engine(self, onnx: Path, parts: list[str], fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        return onnx.name, {**fields, "format": "onnx", "ort_optimized": self.m.graphs[parts[-1]].get("ort_optimized")}

    def copy(self, name: str, out: Path, role: str, index: int | None) -> tuple[str, dict[str, Any]]:
        """A segment of one source graph: its files copied into the plan's folder, its entry kept."""
        import shutil

        entry, src = self.m.graphs[name], Path(self.m.verify(name))
        files = [src, *([self.m.root / entry["data"]["file"]] if "data" in entry else []),
                 *([src.parent / entry["source_onnx"]] if "source_onnx" in entry else [])]
        for f in files:
            shutil.copy2(f, out / f.name)
        skip = ("file", "sha256", "bytes", "file_bytes", "data", "variant")
        return src.name, {**{k: v for k, v in entry.items() if k not in skip}, "role": role, "index": index,
                          "parts": [name]}


class TrtSegmentBuilder(SegmentBuilder):
    def __init__(self, m: Any, source: str):
        from nanotrt.pipeline import trt_build

        super().__init__(m, source)
        trt_build.require_builder()
        self.trt = trt_build
        self.opts = trt_build.BuildOptions.from_json(m.data["variants"][source].get("options", {}))
        self.info = {"backend": "tensorrt", "scratch_bytes": 0}

    def part(self, name: str) -> Path:
        plan = Path(self.m.verify(name))
        return plan.parent / self.m.graphs[name]["source_onnx"]

    def engine(self, onnx: Path, parts: list[str], fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        plan = onnx.with_suffix(".plan")
        self.trt.build_plan(onnx, plan, fields["inputs"], self.opts, self.m.root / self.trt.TIMING_CACHE)
        info = self.trt.plan_info(plan, self.opts)
        self.info["scratch_bytes"] = max(self.info["scratch_bytes"], int(info["scratch_bytes"]))
        return plan.name, {**fields, **info, "format": "trt-plan", "source_onnx": onnx.name,
                           "io_bytes": self.trt.io_bytes(fields, self.opts.max_shape)}


SEGMENT_BUILDERS: dict[str, type[SegmentBuilder]] = {"onnxruntime": SegmentBuilder, "tensorrt": TrtSegmentBuilder}


def _piece(b: SegmentBuilder, parts: list[str], dst: Path, keep_hidden: bool, role: str, index: int | None
           ) -> tuple[tuple[str, dict[str, Any]], float]:
    """Compose ``parts`` into ``dst``, check it against them, make its engine: (manifest entry, max diff)."""
    from nanotrt.pipeline.export import io_signature

    m = b.m
    if len(parts) == 1:  # one graph: its files as they are (same bytes as in the budget's arithmetic)
        return b.copy(parts[0], dst.parent, role, index), 0.0
    paths = [b.part(p) for p in parts]
    compose(paths, dst, keep_hidden=keep_hidden)
    inputs, outputs = io_signature(dst)
    feeds = probe_feeds(inputs, int(m.data["hidden_size"]), int(m.tokenizer.get("vocab_size", 100)))
    fields = {"role": role, "index": index, "inputs": inputs, "outputs": outputs, "parts": parts,
              "precision": m.graphs[parts[-1]].get("precision")}
    return b.engine(dst, parts, fields), segment_error(dst, paths, feeds)


def build_segments(m: Any, source: str, segments: list[Segment], emb_alone: bool, out: Path
                   ) -> tuple[dict[str, tuple[str, dict[str, Any]]], Any, float, dict[str, Any]]:
    """Compose, check and build every segment into ``out``; returns (graphs for the manifest, schedule,
    worst difference against the per-layer parts, variant info of the backend)."""
    from nanotrt.runtime import variants as registry
    from nanotrt.runtime.artifact import Schedule
    from nanotrt.runtime.progress import progress

    b = SEGMENT_BUILDERS[registry.get(source).backend](m, source)
    sched, n, prefix = m.schedule(source), m.num_layers, f"{source}-plan/"
    graphs: dict[str, tuple[str, dict[str, Any]]] = {}
    segs: list[dict[str, Any]] = []
    layers, ramps, worst, emb = [""] * n, [""] * n, 0.0, ""
    if emb_alone:  # a copy in the plan's folder: the plan owns every file it runs
        emb = prefix + "embeddings"
        graphs[emb], worst = _piece(b, [sched.embeddings], out / "embeddings.onnx", True, "embeddings", None)
    with progress() as bar:
        job = bar.add_task(f"plan {source}", total=len(segments), info="")
        for k, seg in enumerate(segments):
            pieces = [(f"segment_{k:02d}", segment_parts(sched, seg, emb_alone), seg.start, seg.ramp and not seg.ramp_alone)]
            if seg.ramp_alone:  # the budget cannot hold the ramp with the layers: its own graph after them
                pieces.append((f"segment_{k:02d}_ramp", [sched.ramps[seg.end - 1]], seg.end, True))
            for stem, parts, start, ramp in pieces:
                keep = seg.end < n or (seg.ramp_alone and stem.endswith(f"{k:02d}"))
                graphs[prefix + stem], err = _piece(b, parts, out / f"{stem}.onnx", keep, "segment", k)
                worst = max(worst, err)
                segs.append({"graph": prefix + stem, "start": start, "end": seg.end, "ramp": ramp})
            for i in range(seg.start, seg.end):
                layers[i] = ramps[i] = f"{prefix}segment_{k:02d}"
            emb = emb or f"{prefix}segment_{k:02d}"
            bar.advance(job)
    return graphs, Schedule(emb, layers, ramps, segs), worst, b.info


def plan_source(m: Any, precision: str, backend: str, dynamic: bool) -> str:
    """The per-layer built variant a plan is composed from (INT8: static Q/DQ, or ORT dynamic)."""
    from nanotrt.runtime import variants as registry

    quant = ("dynamic" if dynamic else "static") if precision == "int8" else ""
    wanted = [s for s in registry.candidates(precision, backend)
              if s.kind == "built" and s.quantization == quant and registry.plan_of(s.name)]
    have = [s.name for s in wanted if s.name in m.variants]
    if not have:
        cmd = wanted[0].command(m.root) if wanted else f"nanotrt build {m.root}"
        raise NanotrtError(f"artifact '{m.root}' has no built {precision} variant for {backend} to plan from: "
                           f"run `{cmd}` first")
    return have[0]


def make_plan(artifact: str | Path, max_loss: float = 0.5, memory_budget: str | None = None, precision: str = "fp32",
              backend: str = "onnxruntime", dynamic: bool = False, task: str | None = None,
              data_dir: str | None = None, write: bool = True, exits: bool = True,
              confidence: float = 0.9) -> dict[str, Any]:
    """Choose (and with ``write`` build and record) the plan of ``artifact``; returns the plan record.
    ``exits=False``: no early exit at all (the plan is then the fewest segments the budget allows)."""
    from nanotrt.pipeline.build import BUILDER_VERSION, install_variant
    from nanotrt.pipeline.calibrate_exit import (
        FAMILIES,
        bound_passing,
        candidates,
        holdout_split,
        ramp_outputs_on,
    )
    from nanotrt.pipeline.glue import compute_metrics, get_task, predictions_from_logits
    from nanotrt.runtime import variants as registry
    from nanotrt.runtime.artifact import Manifest
    from nanotrt.runtime.progress import console

    if max_loss < 0:
        raise NanotrtError(f"--max-loss {max_loss}: use a metric loss >= 0 points (e.g. 0.5)")
    m = Manifest.load(artifact)
    source = plan_source(m, precision, backend, dynamic)
    t = get_task(task or m.task or "")
    split, holdout = holdout_split(m, t, data_dir)  # held-out TRAIN rows, never dev
    logits, probs = ramp_outputs_on(m.root, split, precision, 32, variant=source, backend=backend)
    h = Holdout(logits, probs, lambda lg: compute_metrics(t, split.labels, predictions_from_logits(t, lg))[t.main_metric],
                m.task_type)
    budget, acts, sizes = _budget(m, source, memory_budget)
    fits, emb_alone = fits_budget(m, source, budget, acts, sizes)
    streaming = budget is not None and budget < sum(sizes.values()) + acts
    console.print(f"plan {source}: measuring this device (graphs, calls, runner steps) on {len(split)} held-out rows")
    costs, measured = measure_costs(m, source, split.texts, split.pairs, backend, streaming)
    costs.emb_alone = emb_alone
    specs = candidates(m.task_type, m.num_layers, probs is not None, FAMILIES) if exits else []
    # the calibrate-exit test: a setting passes when its loss's upper bound at ``confidence`` is within max_loss
    passing = bound_passing(t, split.labels, logits, probs, m.task_type, max_loss, confidence)
    choice, tried = choose_plan(h, costs, fits, specs, passing)
    # what it replaces: every ramp live, one call per layer, the fastest rule that passes on all ramps
    per_layer = [Segment(i, i + 1, True) for i in range(m.num_layers)]
    full = h.score(logits[:, -1])
    per_layer_ms = 1000 * min(replay(h, costs, per_layer, s, full).seconds for s in ["none", *passing(specs, None)])
    record = {"source": source, "task": t.name, "task_metric": t.main_metric, "holdout": holdout, "max_loss": max_loss, "confidence": confidence,
              "exits": exits, "memory_budget": memory_budget or "all", "budget_bytes": budget or 0, "streaming": streaming,
              "full_depth": h.score(logits[:, -1]), **choice.as_dict(), "live_ramps": [i + 1 for i in choice.live],
              "per_layer_predicted_ms": per_layer_ms,
              "measured": measured, "tried": [c.as_dict() for c in tried], "date": time.strftime("%Y-%m-%d %H:%M")}
    if write:
        spec = registry.plan_of(source)
        assert spec is not None
        options = {"builder": BUILDER_VERSION, "from": m.data["variants"][source].get("dir"), "plan": choice.as_dict()}

        def make(out: Path) -> tuple[dict[str, tuple[str, dict[str, Any]]], Any, dict[str, Any]]:
            graphs, sched, worst, backend_info = build_segments(m, source, choice.segments, emb_alone, out)
            atol = SEGMENT_ATOL.get(m.data["variants"][source].get("precision", precision), SEGMENT_ATOL_DEFAULT)
            if worst > atol:
                raise NanotrtError(f"plan segments differ from their per-layer parts by {worst:.2e} (> {atol}): "
                                   "report this as a nanotrt bug")
            record["max_abs_diff_vs_parts"] = worst
            info = {**backend_info, "precision": m.data["variants"][source].get("precision", precision),
                    "plan_from": source, "default_exit": choice.exit, "plan": record,
                    "summary": f"{len(choice.segments)} segments, live ramps {record['live_ramps']}, exit {choice.exit}"}
            return graphs, sched, info

        install_variant(m, spec.name, options, make)
        record["variant"] = spec.name
    return record


def describe(rec: dict[str, Any]) -> str:
    """One paragraph: the plan, its rule, its holdout loss and predicted latency against per-layer."""
    segs = " ".join(f"[{s['start'] + 1}-{s['end']}{'*' if s['ramp'] else ''}]" for s in rec["segments"])
    return (f"{rec.get('variant', rec['source'] + '-plan')}: segments {segs} (* = live ramp); exit {rec['exit']}: "
            f"{rec['task_metric']} {100 * rec['full_depth']:.2f} -> {100 * rec['metric']:.2f} on {rec['holdout']['count']} "
            f"held-out train rows at {rec['avg_exit']:.2f} layers; predicted {rec['predicted_ms']:.3f} ms/example "
            f"vs {rec['per_layer_predicted_ms']:.3f} per layer (budget {rec['memory_budget']})")
