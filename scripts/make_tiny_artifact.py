"""Make the tiny committed artifact `tests/fixtures/tiny-artifact/` (a few hundred KB).

It lets the device-side tests and `nanotrt predict` run in a core install (no torch): a 4-layer BERT
(hidden 32, random weights, seed 3) with mean-pooled ramps scaled so that they give confident, varied
predictions (samples exit at different layers), and a 2,000-token WordPiece vocabulary cut from
bert-base-uncased (special tokens, every character piece and the ~1,000 most frequent words), so the
word-embedding table stays small. Labels are SST-2's names; the predictions mean nothing.

Regenerate (needs the `export` extra; run from the repository root):

    python scripts/make_tiny_artifact.py [--out tests/fixtures/tiny-artifact]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BERT_VOCAB = ROOT.parent / "shared" / "data" / "tokenizers" / "bert-base-uncased" / "vocab.txt"
KEEP = [0, 100, 101, 102, 103, *range(999, 2995)]  # [PAD], [UNK], [CLS], [SEP], [MASK], chars, top words


def make_hf_dir(out: Path, seed: int = 3) -> Path:
    """A random 4-layer BERT for sequence classification with the cut vocabulary, as a local HF dir."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = BERT_VOCAB.read_text().splitlines()
    vocab = {words[i]: n for n, i in enumerate(KEEP)}
    BertTokenizerFast(vocab=vocab, do_lower_case=True).save_pretrained(str(out))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(KEEP), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, num_labels=2,
                     id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(cfg).save_pretrained(str(out))
    return out


def make(out: Path, include_checkpoint: bool = False) -> Path:
    import torch
    from nanotrt.pipeline.export import export_model
    from nanotrt.pipeline.model import load_model, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        hf = make_hf_dir(Path(tmp) / "hf")
        model = load_model(hf, pooling="mean")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():  # confident, disagreeing ramps: samples exit at different layers
            for ramp in model.ramps:
                ramp.dense.weight.copy_(torch.randn(ramp.dense.weight.shape, generator=g))
                ramp.out.weight.copy_(3 * torch.randn(ramp.out.weight.shape, generator=g))
        save_checkpoint(model, Path(tmp) / "ckpt", tokenizer_src=hf)
        return export_model(Path(tmp) / "ckpt", out, include_checkpoint=include_checkpoint).root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "tiny-artifact")
    args = ap.parse_args()
    make(args.out)
    shutil.rmtree(args.out / "checkpoint", ignore_errors=True)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
