"""The off-ramp model: a HF encoder plus one exit classifier ("ramp") per layer.

The single PyTorch definition used by training, export and the PyTorch reference backend.
Checkpoints are safetensors + JSON (``config.json`` of the encoder, ``nanotrt.json`` of the ramps).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from nanotrt.pipeline.adapters import FamilyAdapter, get_adapter
from nanotrt.runtime.errors import NanotrtError
from nanotrt.runtime.fsutil import atomic_dir, write_json
from torch import nn

RAMP_CONFIG = "nanotrt.json"
WEIGHTS = "model.safetensors"
POOLINGS = ("cls", "mean")
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
EXIT_BIAS_INIT = -2.0


@dataclass
class RampConfig:
    num_labels: int = 2
    pooling: str = "cls"  # "cls": first token (DeeBERT/PABEE); "mean": masked mean over tokens
    activation: str = "tanh"
    dropout: float = 0.1
    labels: list[str] = field(default_factory=list)
    task: str | None = None
    max_length: int = 128
    exit_head: bool = False  # a learned halting head per ramp (``train --compute-penalty``): exit_prob output
    holdout: dict[str, Any] = field(default_factory=dict)  # train rows kept out of training (calibrate-exit)

    @property
    def task_type(self) -> str:
        return "regression" if self.num_labels == 1 else "classification"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise NanotrtError(f"unknown ramp pooling '{self.pooling}': use one of {', '.join(POOLINGS)}")
        if self.activation not in ACTIVATIONS:
            raise NanotrtError(f"unknown ramp activation '{self.activation}'")
        if self.num_labels < 1:
            raise NanotrtError("num_labels must be >= 1 (1 means regression)")
        if not self.labels:
            self.labels = ["score"] if self.num_labels == 1 else [str(i) for i in range(self.num_labels)]


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class Ramp(nn.Module):
    """Pool -> dense -> activation -> dropout -> linear, the DeeBERT/PABEE off-ramp shape.

    With ``exit_head`` a second linear head reads the same (detached) features and scores "exit here"
    (a halting logit): it learns when to stop without pulling the encoder towards its own objective."""

    def __init__(self, hidden: int, cfg: RampConfig):
        super().__init__()
        self.pooling = cfg.pooling
        self.act = ACTIVATIONS[cfg.activation]
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(hidden, cfg.num_labels)
        self.exit = nn.Linear(hidden + cfg.num_labels, 1) if cfg.exit_head else None
        if self.exit is not None:  # start near "continue" (h = 0.12), as ACT does: no early collapse
            nn.init.constant_(self.exit.bias, EXIT_BIAS_INIT)

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, attention_mask)
        return self.act(self.dense(x))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.features(hidden, attention_mask)))

    def forward_exit(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [B, labels], halting logit [B]); needs ``exit_head``."""
        assert self.exit is not None, "this ramp has no exit head"
        x = self.features(hidden, attention_mask)
        logits = self.out(self.dropout(x))
        return logits, self.exit(torch.cat([x, logits], -1).detach())[:, 0]


class _RampExport(nn.Module):
    """A ramp with its halting head as one graph: logits and exit_prob = sigmoid(halting logit)."""

    def __init__(self, ramp: Ramp):
        super().__init__()
        self.ramp = ramp

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, halt = self.ramp.forward_exit(hidden, attention_mask)
        return logits, torch.sigmoid(halt)


class OffRampModel(nn.Module):
    def __init__(self, encoder: Any, cfg: RampConfig):
        super().__init__()
        self.encoder: Any = encoder
        self.cfg = cfg
        self.adapter: FamilyAdapter = get_adapter(encoder.config.model_type)
        self.num_layers = self.adapter.num_layers(encoder.config)
        hidden = self.adapter.hidden_size(encoder.config)
        self.ramps = nn.ModuleList([Ramp(hidden, cfg) for _ in range(self.num_layers)])

    @property
    def config(self) -> Any:
        return self.encoder.config

    def embed(self, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None = None,
              inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if not self.adapter.has_token_types:
            token_type_ids = None
        return self.adapter.embed(self.encoder, input_ids, token_type_ids, inputs_embeds)

    def layer(self, i: int, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.adapter.run_layer(self.adapter.layer_module(self.encoder, i), hidden, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        return_hidden: bool = False,
        return_exit: bool = False,
    ) -> Any:
        """Logits of every ramp (list, layer 1..N); with ``return_hidden`` also the hidden states; with
        ``return_exit`` (exit-head models) also every ramp's halting logit [B] (list)."""
        h = self.embed(input_ids, token_type_ids)
        hiddens, logits, halts = [h], [], []
        for i in range(self.num_layers):
            h = self.layer(i, h, attention_mask)
            hiddens.append(h)
            ramp: Any = self.ramps[i]
            if return_exit:
                lg, halt = ramp.forward_exit(h, attention_mask)
                logits.append(lg)
                halts.append(halt)
            else:
                logits.append(ramp(h, attention_mask))
        out: tuple[Any, ...] = (logits,) + ((hiddens,) if return_hidden else ()) + ((halts,) if return_exit else ())
        return out if len(out) > 1 else logits

    def ramp_graph(self, i: int) -> nn.Module:
        """The module exported as ramp ``i``: logits, plus exit_prob when the model has exit heads."""
        ramp: Any = self.ramps[i]
        return _RampExport(ramp) if self.cfg.exit_head else ramp


# --------------------------------------------------------------------------------------------
# Creation, saving, loading
# --------------------------------------------------------------------------------------------

def _check_local_dir(model_dir: str | Path) -> Path:
    p = Path(model_dir)
    if not p.is_dir():
        raise NanotrtError(
            f"model dir '{model_dir}' does not exist: pass a local HF model directory "
            "(nanotrt never downloads from a hub)"
        )
    if not (p / "config.json").is_file():
        raise NanotrtError(f"'{model_dir}' has no config.json: pass a HF model directory (config.json + weights)")
    return p


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _read_hf_config(p: Path) -> Any:
    from transformers import AutoConfig

    _quiet_transformers()
    try:
        model_type = json.loads((p / "config.json").read_text()).get("model_type", "")
    except json.JSONDecodeError as e:
        raise NanotrtError(f"{p / 'config.json'} is not valid JSON ({e}): re-save the model") from e
    get_adapter(model_type)  # clear error for unsupported families before transformers complains
    try:
        return AutoConfig.from_pretrained(str(p), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a config transformers cannot read -> one clear line
        raise NanotrtError(f"cannot read {p / 'config.json'} ({_first_line(e)}): re-save the model") from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


def _weights_error(p: Path, e: BaseException) -> NanotrtError:
    return NanotrtError(f"cannot load the weights in '{p}' ({_first_line(e)}): the model files are missing or "
                        "damaged; copy the complete model directory again (config.json + model.safetensors)")


def position_limit(config: Any) -> int:
    """Tokens the model's position table holds (0: no limit known)."""
    limit = int(getattr(config, "max_position_embeddings", 0) or 0)
    if limit and config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1  # positions start after the pad id
    return limit


def check_max_length(config: Any, max_length: int) -> None:
    """A max_length past the model's position table would crash (or wrap) on the first long input."""
    limit = position_limit(config)
    if max_length < 2 or (limit > 0 and max_length > limit):
        raise NanotrtError(f"max_length {max_length} is out of range for this model: use 2..{limit} "
                           "(its max_position_embeddings)")


def load_tokenizer(model_dir: str | Path, vocab_size: int | None = None) -> Any:
    """The model dir's fast tokenizer; refuses one with more tokens than the model has embedding rows (a
    tokenizer from another model: ids past the table crash, ids inside it silently read the wrong rows)."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True, use_fast=True)
    except Exception as e:  # noqa: BLE001
        raise NanotrtError(f"cannot load the tokenizer from '{model_dir}' ({_first_line(e)}): "
                           "copy the tokenizer files next to config.json") from e
    if not getattr(tok, "is_fast", False):
        raise NanotrtError(f"the tokenizer in '{model_dir}' has no fast (tokenizers) version to convert")
    # transformers builds an empty tokenizer (special tokens only) when the vocab files are absent.
    if vocab_size is not None and len(tok) < vocab_size // 2:
        raise NanotrtError(f"the tokenizer in '{model_dir}' has only {len(tok)} tokens for a model with vocab_size "
                           f"{vocab_size}: its vocab files are missing or belong to another model; copy this model's "
                           "own tokenizer files next to config.json")
    if vocab_size is not None and len(tok) > vocab_size:
        raise NanotrtError(f"the tokenizer in '{model_dir}' has {len(tok)} tokens but the model's vocab_size is "
                           f"{vocab_size}: it belongs to another model; copy this model's own tokenizer files")
    return tok


def is_checkpoint(model_dir: str | Path) -> bool:
    return (Path(model_dir) / RAMP_CONFIG).is_file()


def load_model(
    model_dir: str | Path,
    num_labels: int | None = None,
    pooling: str | None = None,
    labels: list[str] | None = None,
    task: str | None = None,
    init_seed: int | None = 0,
    exit_head: bool = False,
) -> OffRampModel:
    """Load a nanotrt checkpoint, or create an off-ramp model from a local HF model dir.

    Weights a plain HF dir does not have (new ramps, a missing pooler) are initialised from ``init_seed``
    without touching the global RNG, so exporting the same dir twice gives byte-identical graphs; None uses
    the global RNG (training seeds it itself).

    A ``...ForSequenceClassification`` checkpoint's classifier becomes the last ramp; its pooler (where
    the family has one) initialises the dense layer of every ramp.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    p = _check_local_dir(model_dir)
    if num_labels is not None and num_labels < 1:
        raise NanotrtError(f"num_labels {num_labels} is out of range: use 1 (regression) or more")
    config = _read_hf_config(p)
    config._attn_implementation = "eager"  # additive masks; exports cleanly and lets ORT fuse Attention

    if is_checkpoint(p):
        from safetensors.torch import load_model as st_load

        try:
            rcfg = RampConfig(**json.loads((p / RAMP_CONFIG).read_text()))
        except (json.JSONDecodeError, TypeError, UnicodeDecodeError) as e:  # hand-edited or damaged
            raise NanotrtError(f"{p / RAMP_CONFIG} is not a valid nanotrt ramp config ({_first_line(e)}): "
                               "re-create the checkpoint with `nanotrt train`") from e
        if exit_head and not rcfg.exit_head:
            raise NanotrtError(f"checkpoint '{p}' has no exit heads: train --compute-penalty from the base model")
        encoder = AutoModel.from_config(config, attn_implementation="eager")
        model = OffRampModel(encoder, rcfg)
        if not (p / WEIGHTS).is_file():
            raise NanotrtError(f"checkpoint '{p}' has no {WEIGHTS}: the checkpoint is incomplete; re-create it")
        try:
            missing, unexpected = st_load(model, str(p / WEIGHTS), strict=False)
        except Exception as e:  # noqa: BLE001 - corrupt/mismatched weights become one clear line
            raise NanotrtError(f"cannot load {p / WEIGHTS} ({_first_line(e)}): the file is damaged or from another "
                               "model; re-create the checkpoint") from e
        # A pooler the source model never had (RoBERTa/DistilBERT heads) is unused by the ramps.
        missing = [k for k in missing if not k.startswith("encoder.pooler.")]
        if missing or unexpected:
            raise NanotrtError(f"{p / WEIGHTS} does not match its config (missing {missing[:3]}, "
                               f"unexpected {unexpected[:3]}): re-create the checkpoint")
        return model.eval()

    archs = getattr(config, "architectures", None) or []
    is_cls = any(a.endswith("ForSequenceClassification") for a in archs)
    kw: dict[str, Any] = {"local_files_only": True, "attn_implementation": "eager"}
    with _seeded(init_seed):
        n = (num_labels or config.num_labels) if is_cls else (num_labels or 2)
        try:
            if is_cls:
                hf = AutoModelForSequenceClassification.from_pretrained(
                    str(p), num_labels=n, ignore_mismatched_sizes=n != config.num_labels, **kw)
                encoder = hf.base_model
            else:
                hf = None
                encoder = AutoModel.from_pretrained(str(p), **kw)
        except Exception as e:  # noqa: BLE001 - missing / truncated / mismatched weights -> one clear line
            raise _weights_error(p, e) from e
        id2label = getattr(config, "id2label", None) or {}
        default_labels = ([id2label.get(i, str(i)) for i in range(n)] if n > 1 else ["score"]) if is_cls else []
        adapter = get_adapter(config.model_type)
        head: Any = adapter.classifier_head(hf) if hf is not None else None
        rcfg = RampConfig(
            num_labels=n,
            pooling=pooling or default_pooling(p),
            activation=head.activation if head else ("relu" if adapter.model_type == "distilbert" else "tanh"),
            labels=labels or default_labels,
            task=task,
            exit_head=exit_head,
        )
        model = OffRampModel(encoder, rcfg)
        pooler: Any = adapter.pooler_dense(encoder)
        with torch.no_grad():
            for ramp in model.ramps:
                ramp = cast(Ramp, ramp)
                if pooler is not None:  # a pretrained pooler is a better start than random init
                    ramp.dense.load_state_dict(pooler.state_dict())
            if head is not None:
                last: Any = model.ramps[-1]
                if head.dense is not None:
                    last.dense.load_state_dict(head.dense.state_dict())
                if head.out.out_features == n:
                    last.out.load_state_dict(head.out.state_dict())
    return model.eval()


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def default_pooling(model_dir: Path) -> str:
    """``mean`` for sentence-transformers models trained with mean pooling (their 1_Pooling config),
    else ``cls`` as in DeeBERT/PABEE. CLS ramps on a mean-trained encoder collapse at shallow layers."""
    cfg = model_dir / "1_Pooling" / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("pooling_mode_mean_tokens"):
        return "mean"
    return "cls"


def save_checkpoint(model: OffRampModel, out_dir: str | Path, tokenizer_src: str | Path | None = None,
                    extra_json: dict[str, Any] | None = None) -> Path:
    """Write config.json + nanotrt.json + model.safetensors (+ tokenizer files, extra JSON) atomically."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model.encoder.config.save_pretrained(str(tmp))
        write_json(tmp / RAMP_CONFIG, asdict(model.cfg))
        save_model(model, str(tmp / WEIGHTS))  # handles ALBERT's shared tensors
        if tokenizer_src is not None:
            copy_tokenizer_files(Path(tokenizer_src), tmp)
        for name, data in (extra_json or {}).items():
            write_json(tmp / name, data)
    return out


TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
)


def copy_tokenizer_files(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
