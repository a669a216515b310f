"""`nanotrt export`: cut an off-ramp model into per-graph ONNX files plus a manifest.

Graphs: ``word_embeddings`` (a raw .npy table the runtime memory-maps and indexes on the host),
``embeddings`` (inputs_embeds[, input_ids][, token_type_ids] -> hidden_states: positions, token types,
LayerNorm; input_ids only for families whose embeddings need them), one ``layer_XX`` per unique layer
(hidden_states, attention_mask -> hidden_states_out; the additive mask is built inside the graph so the
runtime only ever feeds the [B, S] 0/1 mask), one ``ramp_XX`` per off-ramp (-> logits, plus exit_prob
for models trained with a halting head), and with ``whole`` the one-graph baseline.
Every graph passes onnx.checker (full), a Polygraphy sanity run, and a parity check against PyTorch.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nanotrt.pipeline.glue import label_names
from nanotrt.pipeline.model import (
    OffRampModel,
    check_max_length,
    load_model,
    load_tokenizer,
    position_limit,
    save_checkpoint,
)
from nanotrt.runtime.artifact import FORMAT, MANIFEST, Manifest, Schedule, new_manifest
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import atomic_dir, check_output_dir, sha256_file
from nanotrt.runtime.progress import console, progress
from torch import nn

OPSET = 17
EXPORT_FAIL_ATOL = 1e-3  # fp32, max abs diff vs PyTorch eager above which export refuses a graph
SAMPLE_TEXTS = [
    ("The quick brown fox jumps over the lazy dog near the river bank.", "A fox jumped."),
    ("Short one.", "Another sentence that is a good deal longer than the first one here."),
    ("Hi", None),
]


class _Embeddings(nn.Module):
    """Everything of the embeddings but the word lookup (positions, token types, LayerNorm, projection)."""

    def __init__(self, m: OffRampModel, input_names: list[str]):
        super().__init__()
        self.m, self.input_names = m, input_names

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        kw = dict(zip(self.input_names, args, strict=True))
        return self.m.embed(kw.get("input_ids"), kw.get("token_type_ids"), inputs_embeds=kw["inputs_embeds"])


class _Whole(nn.Module):
    """The whole classifier as one graph (embeddings, all layers, final ramp): the all-resident baseline."""

    def __init__(self, m: OffRampModel):
        super().__init__()
        self.m = m

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        h = self.m.embed(input_ids, token_type_ids)
        for i in range(self.m.num_layers):
            h = self.m.layer(i, h, attention_mask)
        return self.m.ramps[-1](h, attention_mask)


class _Layer(nn.Module):
    def __init__(self, m: OffRampModel, i: int):
        super().__init__()
        self.m, self.i = m, i

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.m.layer(self.i, hidden_states, attention_mask)


def io_signature(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def sig(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": str(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)), "shape": dims})
        return out

    return sig(model.graph.input), sig(model.graph.output)


def check_graph(path: Path, vocab_size: int, inputs: list[dict[str, Any]] | None = None) -> None:
    """onnx.checker full check, then a Polygraphy sanity run (random inputs through ORT, finite outputs).
    ``inputs``: the graph's input signature when the caller already read it."""
    import onnx
    from nanotrt.engines.onnxruntime import library_sessions
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import DataLoader
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001
        raise NanotrtError(f"exported graph {path.name} fails onnx.checker: {str(e).splitlines()[0]}") from e
    if inputs is None:
        inputs, _ = io_signature(path)
    shapes = {i["name"]: (2, 8, *i["shape"][2:]) for i in inputs}  # batch 2, seq 8
    ranges = {i["name"]: (0, 1) for i in inputs}
    if any(i["name"] == "input_ids" for i in inputs):
        ranges["input_ids"] = (5, min(vocab_size - 1, 1000))
    loader = DataLoader(iterations=1, input_metadata=None, val_range=ranges, seed=0)
    runner = OnnxrtRunner(SessionFromOnnx(str(path)))
    with library_sessions(), runner, warnings.catch_warnings():  # Polygraphy builds the ORT session
        warnings.simplefilter("ignore", DeprecationWarning)
        meta = runner.get_input_metadata()
        for name in meta.keys():
            meta[name].shape = shapes[name]
        loader.input_metadata = meta
        for feed in loader:
            outs = runner.infer(feed)
            for k, v in outs.items():
                if not np.all(np.isfinite(v)):
                    raise NanotrtError(f"graph {path.name} produced non-finite values in '{k}' on random inputs")


def _ort_run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort
    from nanotrt.engines.onnxruntime import session_options

    sess = ort.InferenceSession(str(path), session_options(ort), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def _export_one(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                output_names: list[str]) -> None:
    axes: dict[str, dict[int, str]] = {n: {0: "batch", 1: "seq"} for n in input_names}
    for n in output_names:
        axes[n] = {0: "batch"} if n in ("logits", "exit_prob") else {0: "batch", 1: "seq"}
    # The exporter restores the wrapper's train/eval mode recursively afterwards: a fresh wrapper is in
    # train mode and would switch dropout on in the whole model, so pin eval first.
    module.eval()
    # The TorchScript exporter: fast, deterministic, handles these small graphs with dynamic axes.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation and tracer notes say nothing about these graphs
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)




class _Export:
    """One export into the temporary dir ``tmp``: each step writes its graphs, checks them against
    PyTorch on the same sample batch, and records them in the manifest."""

    def __init__(self, model: OffRampModel, tok: Any, tmp: Path, max_length: int, check: bool, bar: Any,
                 job: Any):
        self.model, self.tok, self.tmp, self.check, self.bar, self.job = model, tok, tmp, check, bar, job
        self.adapter, self.cfg = model.adapter, model.config
        (tmp / "graphs").mkdir()
        # Sample: a padded batch with a pair, so traced shapes and parity cover masks and token types.
        enc = tok([a for a, _ in SAMPLE_TEXTS], [b or "" for _, b in SAMPLE_TEXTS], padding=True,
                  truncation=True, max_length=max_length, return_tensors="pt", return_token_type_ids=True)
        self.ids, self.mask, self.types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
        _, self.hiddens = model(self.ids, self.mask, self.types, return_hidden=True)
        self.manifest = self._new_manifest(max_length)

    def _new_manifest(self, max_length: int) -> Manifest:
        tok, model, cfg = self.tok, self.model, self.cfg
        tok.save_pretrained(str(self.tmp / "tokenizer"))
        if not (self.tmp / "tokenizer" / "tokenizer.json").is_file():
            tok.backend_tokenizer.save(str(self.tmp / "tokenizer" / "tokenizer.json"))
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        tok_file = self.tmp / "tokenizer" / "tokenizer.json"  # the one tokenizer file the runtime reads: hashed
        positions = position_limit(cfg)
        return new_manifest(
            self.tmp, family=cfg.model_type, num_layers=model.num_layers, hidden_size=self.adapter.hidden_size(cfg),
            task=model.cfg.task, task_type=model.cfg.task_type, labels=label_names(model.cfg.task, model.cfg.labels),
            ramp=asdict(model.cfg), config=cfg.to_dict(),
            tokenizer={"file": "tokenizer/tokenizer.json", "sha256": sha256_file(tok_file),
                       "bytes": tok_file.stat().st_size, "max_length": max_length, "pad_id": int(pad_id),
                       "pad_token": str(tok.pad_token), "token_types": self.adapter.has_token_types,
                       **({"max_positions": positions} if positions else {})},
            opset=OPSET,
        )

    def graph(self, name: str, module: nn.Module, args: dict[str, torch.Tensor], outputs: list[str],
              refs: list[torch.Tensor], role: str, index: int | None) -> None:
        """Export ``module`` as graphs/NAME.onnx, check it, compare every output with ``refs``, record it."""
        path = self.tmp / "graphs" / f"{name}.onnx"
        self.bar.update(self.job, info=name)
        _export_one(module, tuple(args.values()), path, list(args), outputs)
        ins, outs = io_signature(path)  # read once: a BERT-base layer graph is 28 MB of protobuf
        if self.check:
            check_graph(path, int(self.cfg.vocab_size), ins)
        got = _ort_run(path, {k: v.numpy() for k, v in args.items()})
        diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, refs, strict=True))
        if diff > EXPORT_FAIL_ATOL:
            raise NanotrtError(f"graph {name} differs from PyTorch by {diff:.2e} (> {EXPORT_FAIL_ATOL})")
        self.manifest.add_graph(name, path, role=role, index=index, precision="fp32", format="onnx",
                                inputs=ins, outputs=outs, parity_max_abs_diff=diff)
        self.bar.advance(self.job)

    def embeddings(self) -> None:
        # Word embeddings: a raw float32 table the runtime memory-maps and indexes on the host, so only
        # the rows a batch touches become resident (BERT-base: 94 MB table, ~3 KB per token).
        table = self.adapter.word_embeddings(self.model.encoder).weight.detach().numpy().astype(np.float32)
        np.save(self.tmp / "graphs" / "word_embeddings.npy", table)
        self.manifest.add_graph("word_embeddings", self.tmp / "graphs" / "word_embeddings.npy", role="lookup",
                                index=None, precision="fp32", format="npy", shape=list(table.shape))
        self.manifest.data["lookup"] = "word_embeddings"
        sample = {"inputs_embeds": torch.from_numpy(table[self.ids.numpy()]), "input_ids": self.ids,
                  "token_type_ids": self.types}
        names = ["inputs_embeds"] + (["input_ids"] if self.adapter.embeddings_need_ids else []) + (
            ["token_type_ids"] if self.adapter.has_token_types else [])
        self.graph("embeddings", _Embeddings(self.model, names), {k: sample[k] for k in names}, ["hidden_states"],
                   [self.hiddens[0]], "embeddings", None)

    def layers(self, groups: list[int]) -> None:
        """One graph per unique weight set (ALBERT: one for all layers)."""
        for g in dict.fromkeys(groups):
            i = groups.index(g)
            self.graph(f"layer_{g:02d}", _Layer(self.model, i), {"hidden_states": self.hiddens[i],
                       "attention_mask": self.mask}, ["hidden_states_out"], [self.hiddens[i + 1]], "layer", g)

    def ramps(self) -> None:
        exit_head = self.model.cfg.exit_head
        outputs = ["logits", "exit_prob"] if exit_head else ["logits"]
        for i in range(self.model.num_layers):
            module = self.model.ramp_graph(i)
            args = {"hidden_states": self.hiddens[i + 1], "attention_mask": self.mask}
            ref = module(*args.values())
            self.graph(f"ramp_{i:02d}", module, args, outputs, list(ref) if exit_head else [ref], "ramp", i)

    def whole(self) -> None:
        """Not part of any schedule; bench runs it as the one-graph baseline."""
        m = self.model
        self.graph("whole", _Whole(m), {"input_ids": self.ids, "attention_mask": self.mask,
                                        "token_type_ids": self.types}, ["logits"],
                   [m.ramps[-1](self.hiddens[-1], self.mask)], "whole", None)

    def finish(self, groups: list[int], include_checkpoint: bool) -> Manifest:
        n = self.model.num_layers
        sched = Schedule("embeddings", [f"layer_{g:02d}" for g in groups], [f"ramp_{i:02d}" for i in range(n)])
        self.manifest.set_variant("fp32", sched, backend="onnx", precision="fp32")
        if include_checkpoint:
            # The PyTorch reference backend (and bench's eager baselines) rebuild the model from this;
            # it is not needed on the device.
            save_checkpoint(self.model, self.tmp / "checkpoint", tokenizer_src=self.tmp / "tokenizer")
            self.manifest.data["checkpoint"] = "checkpoint"
        self.manifest.save(self.tmp)
        self.bar.update(self.job, advance=1, info="done")
        return self.manifest


def is_artifact(folder: Path) -> bool:
    """A folder nanotrt made: it holds a nanotrt manifest (read only as far as its format field)."""
    path = folder / MANIFEST
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return path.is_file() and f'"format": "{FORMAT}"'.encode() in head


def export_model(model_dir: str | Path, out_dir: str | Path, max_length: int = 128,
                 model: OffRampModel | None = None, check: bool = True,
                 include_checkpoint: bool = True, whole: bool = False, force: bool = False) -> Manifest:
    """Export ``model_dir`` (HF dir or nanotrt checkpoint) to the artifact ``out_dir`` atomically. ``out_dir``
    may be absent, empty or an earlier artifact; any other folder is replaced only with ``force``."""
    model_dir = Path(model_dir)
    check_output_dir(Path(out_dir), is_artifact, force, "nanotrt artifact", keep=(model_dir,))
    model = (model if model is not None else load_model(model_dir)).eval()
    check_max_length(model.config, max_length)
    tok = load_tokenizer(model_dir, int(model.config.vocab_size))
    n = model.num_layers
    groups = [model.adapter.layer_graph_index(model.config, i) for i in range(n)]
    steps = 1 + len(set(groups)) + n + 1 + int(whole)
    with atomic_dir(Path(out_dir)) as tmp, torch.no_grad(), progress() as bar:
        job = bar.add_task("export", total=steps, info="tokenizer")
        ex = _Export(model, tok, tmp, max_length, check, bar, job)
        ex.embeddings()
        ex.layers(groups)
        ex.ramps()
        if whole:
            ex.whole()
        manifest = ex.finish(groups, include_checkpoint)
    manifest.root = Path(out_dir)
    console.print(f"exported {n} layers ({len(set(groups))} layer graph(s)) to {out_dir}")
    return manifest
