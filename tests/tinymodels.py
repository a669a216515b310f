"""Tiny random models of each family, saved as local HF dirs with the real tokenizer files."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TOKENIZERS = SHARED / "tokenizers"

FAMILIES = {
    # model_type: (tokenizer dir, config overrides)
    "bert": ("bert-base-uncased", dict(vocab_size=30522)),
    "roberta": ("roberta-base", dict(vocab_size=50265, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                     max_position_embeddings=130, type_vocab_size=1)),
    "albert": ("albert-base-v2", dict(vocab_size=30000, embedding_size=16, num_hidden_groups=1, inner_group_num=1)),
    "distilbert": ("bert-base-uncased", dict(vocab_size=30522)),
}


def make_tiny(model_type: str, out: Path, num_labels: int = 2, layers: int = 3, seq_cls: bool = True,
              seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    tok_dir, over = FAMILIES[model_type]
    torch.manual_seed(seed)
    if model_type == "distilbert":
        cfg = AutoConfig.for_model("distilbert", dim=32, n_layers=layers, n_heads=4, hidden_dim=64,
                                   max_position_embeddings=128, num_labels=num_labels, **over)
    else:
        cfg = AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=over.pop("max_position_embeddings", 128),
                                   num_labels=num_labels, **over)
    cls = AutoModelForSequenceClassification if seq_cls else AutoModel
    model = cls.from_config(cfg)
    model.save_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(TOKENIZERS / tok_dir))
    tok.save_pretrained(str(out))
    return out
