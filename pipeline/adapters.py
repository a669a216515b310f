"""Per-family adapters: where a HF encoder keeps its embeddings, layers, pooler and classifier head.

A registry keyed by ``config.model_type`` (Optimum-style small adapters, not if/else chains).
Adding a family means adding one subclass and registering it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from nanotrt.runtime.errors import NanotrtError
from torch import nn

# Additive mask value: large enough to zero softmax weights in fp32 and still finite in fp16
# (finfo(float32).min becomes -inf in fp16 graphs).
MASK_NEG = -10000.0


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, S] 1/0 mask -> [B, 1, 1, S] additive mask, the convention of transformers' eager attention."""
    m = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - m) * MASK_NEG


@dataclass
class ClassifierHead:
    """The parts of a HF sequence-classification head that map onto a ramp: dense -> act -> out."""

    dense: nn.Linear | None
    out: nn.Linear
    activation: str


class FamilyAdapter:
    """Defaults follow BERT; subclasses override what differs."""

    model_type: str = ""
    has_token_types: bool = True
    # The word-embedding lookup runs outside the graphs (a memory-mapped table on the device); families
    # whose position ids depend on the token ids (RoBERTa's padding offset) also feed input_ids.
    embeddings_need_ids: bool = False

    # --- structure -------------------------------------------------------------------------
    def num_layers(self, config: Any) -> int:
        return int(config.num_hidden_layers)

    def hidden_size(self, config: Any) -> int:
        return int(config.hidden_size)

    def layer_graph_index(self, config: Any, i: int) -> int:
        """Which unique layer graph layer ``i`` runs (ALBERT shares weights across layers)."""
        return i

    def word_embeddings(self, base: Any) -> nn.Embedding:
        return base.embeddings.word_embeddings

    def embed(self, base: Any, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None,
              inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds is not None:
            input_ids = None  # positions default to 0..S-1, right padding keeps real tokens' positions
        return base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids, inputs_embeds=inputs_embeds)

    def layer_module(self, base: Any, i: int) -> Any:
        return base.encoder.layer[i]

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = layer(hidden, extended_attention_mask(attention_mask, hidden.dtype))
        return out[0] if isinstance(out, tuple) else out

    # --- heads -----------------------------------------------------------------------------
    def pooler_dense(self, base: Any) -> nn.Linear | None:
        pooler = getattr(base, "pooler", None)
        return getattr(pooler, "dense", None) if pooler is not None else None

    def classifier_head(self, model: Any) -> ClassifierHead:
        return ClassifierHead(self.pooler_dense(model.base_model), model.classifier, "tanh")


_REGISTRY: dict[str, FamilyAdapter] = {}


def register(cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    _REGISTRY[cls.model_type] = cls()
    return cls


def get_adapter(model_type: str) -> FamilyAdapter:
    try:
        return _REGISTRY[model_type]
    except KeyError as e:
        raise NanotrtError(
            f"unsupported model_type '{model_type}': nanotrt supports {', '.join(sorted(_REGISTRY))}"
        ) from e


@register
class BertAdapter(FamilyAdapter):
    model_type = "bert"


@register
class RobertaAdapter(FamilyAdapter):
    """RoBERTa: position ids are derived from input_ids (padding offset) inside its embeddings, which
    export keeps; token types are a single all-zero row, so the graph takes none."""

    model_type = "roberta"
    has_token_types = False
    embeddings_need_ids = True

    def embed(self, base: Any, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None,
              inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if inputs_embeds is None:
            return base.embeddings(input_ids=input_ids)
        emb = base.embeddings
        # Positions from the ids (padding offset), and no ids into the module: it would keep the word table.
        pos = emb.create_position_ids_from_input_ids(input_ids, emb.padding_idx)
        return emb(position_ids=pos, inputs_embeds=inputs_embeds)

    def classifier_head(self, model: Any) -> ClassifierHead:
        return ClassifierHead(model.classifier.dense, model.classifier.out_proj, "tanh")


@register
class AlbertAdapter(FamilyAdapter):
    """ALBERT: factorized embeddings (E -> H projection lives in the encoder) and layer groups whose
    weights are shared across layers, so N layers map onto num_hidden_groups graphs."""

    model_type = "albert"

    def layer_graph_index(self, config: Any, i: int) -> int:
        return int(i / (config.num_hidden_layers / config.num_hidden_groups))

    def embed(self, base: Any, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None,
              inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return base.encoder.embedding_hidden_mapping_in(super().embed(base, input_ids, token_type_ids, inputs_embeds))

    def layer_module(self, base: Any, i: int) -> Any:
        return base.encoder.albert_layer_groups[self.layer_graph_index(base.config, i)]

    def pooler_dense(self, base: Any) -> nn.Linear | None:
        return getattr(base, "pooler", None)


@register
class DistilBertAdapter(FamilyAdapter):
    """DistilBERT: no token types, no pooler; its head is pre_classifier -> ReLU -> classifier."""

    model_type = "distilbert"
    has_token_types = False

    def num_layers(self, config: Any) -> int:
        return int(config.n_layers)

    def hidden_size(self, config: Any) -> int:
        return int(config.dim)

    def embed(self, base: Any, input_ids: torch.Tensor | None, token_type_ids: torch.Tensor | None,
              inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        return base.embeddings(None if inputs_embeds is not None else input_ids, inputs_embeds=inputs_embeds)

    def layer_module(self, base: Any, i: int) -> Any:
        return base.transformer.layer[i]

    def pooler_dense(self, base: Any) -> nn.Linear | None:
        return None

    def classifier_head(self, model: Any) -> ClassifierHead:
        return ClassifierHead(model.pre_classifier, model.classifier, "relu")
