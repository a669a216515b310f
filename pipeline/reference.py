"""Plain PyTorch early-exit loop, batch size 1, written the way the PABEE / DeeBERT reference code runs:
the yardstick the numpy runner is tested against and the eager baseline of `nanotrt bench`."""

from __future__ import annotations

import torch
from nanotrt.pipeline.model import OffRampModel
from nanotrt.runtime.exits import Entropy, ExitPolicy, FixedDepth, MaxProb, Patience


@torch.no_grad()
def reference_exit(model: OffRampModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   token_type_ids: torch.Tensor | None, policy: ExitPolicy) -> tuple[torch.Tensor, int]:
    """One example ([1, S] tensors). Returns (logits of the exit ramp [num_labels], exit layer 1-based)."""
    h = model.embed(input_ids, token_type_ids)
    counter, prev = 0, None
    logits = torch.empty(0)
    for i in range(model.num_layers):
        h = model.layer(i, h, attention_mask)
        logits = model.ramps[i](h, attention_mask)[0]
        if isinstance(policy, MaxProb):  # before Entropy: MaxProb shares its base class
            if torch.softmax(logits.double(), -1).max() >= policy.threshold:
                return logits, i + 1
        elif isinstance(policy, Entropy):
            p = torch.softmax(logits.double(), -1)
            if -(p * torch.log(p.clamp_min(1e-30))).sum() < policy.threshold:
                return logits, i + 1
        elif isinstance(policy, Patience):
            pred = logits[0] if logits.numel() == 1 else logits.argmax()
            if prev is not None and (abs(float(pred) - float(prev)) < policy.delta if logits.numel() == 1
                                     else bool(pred == prev)):
                counter += 1
            else:
                counter = 0
            prev = pred
            if counter == policy.patience:
                return logits, i + 1
        elif isinstance(policy, FixedDepth) and policy.depth and i + 1 >= policy.depth:
            return logits, i + 1
    return logits, model.num_layers
