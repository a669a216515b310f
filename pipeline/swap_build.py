"""`nanotrt build --swap`: a built ONNX Runtime variant re-cut so that a swap costs what mapping its weights
costs, not a session build (issue 21, benchmarks/results/swap_cost.md).

Every graph of the source variant is brought to a canonical form (values, nodes and initializers renamed by
position), and graphs whose canonical form is the same (all layers of a family, all ramps) share ONE
*structure* graph whose weights are graph inputs. Each graph's weights go to one flat ``.npy`` file (uint8,
tensors at 64-byte offsets); the runtime maps it and feeds zero-copy views (``engines/onnxruntime.py``).
Initializers identical across a structure's graphs and smaller than ``LIFT_MIN`` (shape constants, ...)
stay inside the structure graph.

Layout of the variant's folder and its manifest entries::

    structure_00.onnx   <variant>/structure_00: format onnx, role structure, weights [[input, dtype, shape,
                        offset], ...] (the same layout for every graph of the structure), weight_bytes
    layer_00.npy        <variant>/layer_00: format onnx-swap, structure <variant>/structure_00, source (the
                        built graph it was made from: what runs when nothing is swapped), and that graph's role,
                        index, I/O signature and precision

Offline side (imports onnx); the format is read by the device side with numpy only (no pickle).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nanotrt.runtime import variants as registry
from nanotrt.runtime.artifact import Manifest, Schedule
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.progress import progress

ALIGN = 64  # bytes: each tensor's offset in a weight file (the .npy header also ends on a 64-byte boundary)
LIFT_MIN = 1024  # bytes: smaller initializers equal in every graph of a structure stay inside it
SWAP_FORMAT = "onnx-swap"
SWAP_VERSION = 2  # part of a swap variant's build options: a newer format rebuilds it


@dataclass
class Canonical:
    """One graph in canonical form: ``model`` without its initializers, ``inits`` in order of first use."""

    model: Any  # onnx.ModelProto, initializers removed
    inits: list[tuple[str, np.ndarray]]  # (canonical name, value)

    def key(self) -> str:
        """Same key = same structure: the graph, the initializers' dtypes and shapes (not their values)."""
        h = hashlib.sha256(self.model.SerializeToString(deterministic=True))
        for name, a in self.inits:
            h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        return h.hexdigest()


def canonical(path: Path) -> Canonical:
    """Load a graph (with its external data) and rename what differs between layers of one structure: node
    names, intermediate values (``v<k>``, in order of definition) and initializers (``w<k>``, in order of
    first use). Graph inputs and outputs keep their names; value_info (shape hints) is dropped."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    keep = {i.name for i in g.input} | {o.name for o in g.output} | {""}
    inits = {i.name: i for i in g.initializer}
    names: dict[str, str] = {}
    order: list[tuple[str, np.ndarray]] = []
    for k, node in enumerate(g.node):
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise NanotrtError(f"{path} has a subgraph ({node.op_type}): swap variants take flat graphs only")
        for i, x in enumerate(node.input):
            if x in inits and x not in names:
                names[x] = f"w{len(order)}"
                order.append((names[x], numpy_helper.to_array(inits[x])))
            node.input[i] = x if x in keep else names.get(x, x)
        for i, x in enumerate(node.output):
            if x not in keep:
                names.setdefault(x, f"v{len(names)}")
                node.output[i] = names[x]
        node.name = f"n{k}"
    del g.initializer[:]
    del g.value_info[:]
    model.graph.name = "structure"
    model.doc_string = ""
    return Canonical(model, order)


def lifted(group: Sequence[Canonical]) -> list[bool]:
    """Which initializers become inputs: any that differs between the graphs, and every large one."""
    first = group[0].inits
    out = []
    for k, (_, a) in enumerate(first):
        same = all(g.inits[k][1].shape == a.shape and np.array_equal(g.inits[k][1], a) for g in group[1:])
        out.append(not same or a.nbytes >= LIFT_MIN)
    return out


def structure_model(c: Canonical, lift: list[bool]) -> Any:
    """The shared graph: lifted initializers as inputs (after the graph's own), the rest inline."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(c.model)
    for (name, a), up in zip(c.inits, lift, strict=True):
        if up:
            dtype = onnx.helper.np_dtype_to_tensor_dtype(a.dtype)
            model.graph.input.append(onnx.helper.make_tensor_value_info(name, dtype, list(a.shape)))
        else:
            model.graph.initializer.append(numpy_helper.from_array(a, name))
    return model


def layout(c: Canonical, lift: list[bool]) -> tuple[list[list[Any]], int]:
    """[input name, dtype, shape, offset] of each lifted tensor in a weight file, and the file's data bytes."""
    out, off = [], 0
    for (name, a), up in zip(c.inits, lift, strict=True):
        if up:
            out.append([name, a.dtype.str, list(a.shape), off])
            off += -(-a.nbytes // ALIGN) * ALIGN
    return out, off


def write_weights(c: Canonical, lift: list[bool], dst: Path) -> None:
    specs, total = layout(c, lift)
    blob = np.zeros(total, np.uint8)
    arrays = [a for (_, a), up in zip(c.inits, lift, strict=True) if up]
    for (_, _, _, off), a in zip(specs, arrays, strict=True):
        raw = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
        blob[off:off + raw.size] = raw
    np.save(dst, blob, allow_pickle=False)


def build_swap(m: Manifest, spec: registry.VariantSpec, out: Path
               ) -> tuple[dict[str, tuple[str, dict[str, Any]]], Schedule, dict[str, Any]]:
    """Make the swap variant ``spec`` from its source variant into ``out`` (build.py's staging folder)."""
    import onnx

    variant, source = spec.name, str(spec.source)
    base = m.schedule(source)
    units = base.names()
    canon: dict[str, Canonical] = {}
    with progress() as bar:
        task = bar.add_task(f"build {variant}", total=len(units), info="")
        for unit in units:
            bar.update(task, info=unit)
            canon[unit] = canonical(m.verify(unit))
            bar.advance(task)
    groups: dict[str, list[str]] = {}
    for unit in units:
        groups.setdefault(canon[unit].key(), []).append(unit)
    graphs: dict[str, tuple[str, dict[str, Any]]] = {}
    rename: dict[str, str] = {}
    for s, members in enumerate(groups.values()):
        lift = lifted([canon[u] for u in members])
        first = m.graphs[members[0]]
        sname = f"{variant}/structure_{s:02d}"
        onnx.save(structure_model(canon[members[0]], lift), str(out / f"structure_{s:02d}.onnx"))
        specs, total = layout(canon[members[0]], lift)
        graphs[sname] = (f"structure_{s:02d}.onnx", {
            "role": "structure", "index": None, "format": "onnx", "ort_optimized": first.get("ort_optimized"),
            "inputs": first["inputs"], "outputs": first["outputs"], "weights": specs, "weight_bytes": total,
            "members": [_stem(u) for u in members]})
        for u in members:
            stem = _stem(u)
            write_weights(canon[u], lift, out / f"{stem}.npy")
            entry = m.graphs[u]
            fields: dict[str, Any] = {k: entry[k] for k in ("role", "index", "inputs", "outputs", "precision") if k in entry}
            graphs[f"{variant}/{stem}"] = (f"{stem}.npy", {**fields, "format": SWAP_FORMAT, "structure": sname,
                                                          "source": u})
            rename[u] = f"{variant}/{stem}"
    sched = Schedule(rename[base.embeddings], [rename[n] for n in base.layers], [rename[n] for n in base.ramps])
    info = m.data["variants"][source]
    summary = f"{len(groups)} structures for {len(units)} graphs"
    return graphs, sched, {"backend": "onnx", "precision": info.get("precision"), "swap_from": source,
                           "structures": len(groups), "summary": summary}


def _stem(unit: str) -> str:
    return unit.rsplit("/", 1)[-1]


def refit_model(structure: Path, specs: list[list[Any]], weights: dict[str, np.ndarray]) -> Any:
    """The structure graph with its weight inputs as initializers holding ``weights`` (one graph's mapped
    arrays): what a refittable TensorRT plan of the structure is built from (README, TensorRT swaps). Its
    weight names are the structure's, the same for every graph of it, so ``Refitter.set_named_weights(name,
    array)`` with another graph's arrays turns the plan into that graph. Run on ONNX Runtime it must equal the
    graph it was made from (tests/test_swap.py)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(structure))
    names = {str(s[0]) for s in specs}
    inputs = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.graph.initializer.extend(numpy_helper.from_array(np.asarray(weights[n]), n) for n in sorted(names))
    return model
