"""Plain PyTorch early-exit loop, batch size 1, written the way the PABEE / DeeBERT reference code runs:
the yardstick the numpy runner is tested against and the eager baseline of `nanotrt bench`.

Confidence, patience (with the PCEE-style confidence gate) and learned exits are written out here;
a deadline rule has no clock in this loop and runs its confidence rule alone (as the policy does
without a StepContext)."""

from __future__ import annotations

import torch
from nanotrt.pipeline.model import OffRampModel
from nanotrt.runtime.exits import Deadline, Entropy, ExitPolicy, FixedDepth, Learned, MaxProb, Patience


def _confident(policy: Entropy, logits: torch.Tensor) -> bool:
    p = torch.softmax(logits.double(), -1)
    if isinstance(policy, MaxProb):  # before Entropy: MaxProb shares its base class
        return bool(p.max() >= policy.threshold)
    return bool(-(p * torch.log(p.clamp_min(1e-30))).sum() < policy.threshold)


@torch.no_grad()
def reference_exit(model: OffRampModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   token_type_ids: torch.Tensor | None, policy: ExitPolicy) -> tuple[torch.Tensor, int]:
    """One example ([1, S] tensors). Returns (logits of the exit ramp [num_labels], exit layer 1-based)."""
    if isinstance(policy, Deadline):
        policy = policy.rule or FixedDepth(0)
    h = model.embed(input_ids, token_type_ids)
    counter, prev = 0, None
    logits = torch.empty(0)
    for i in range(model.num_layers):
        h = model.layer(i, h, attention_mask)
        ramp = model.ramps[i]
        if isinstance(policy, Learned):
            lg, halt = ramp.forward_exit(h, attention_mask)  # type: ignore[operator]
            logits = lg[0]
            if float(torch.sigmoid(halt[0])) >= policy.threshold:
                return logits, i + 1
            continue
        logits = ramp(h, attention_mask)[0]
        if isinstance(policy, Entropy):
            if _confident(policy, logits):
                return logits, i + 1
        elif isinstance(policy, Patience):
            pred = logits[0] if logits.numel() == 1 else logits.argmax()
            same = prev is not None and (abs(float(pred) - float(prev)) < policy.delta if logits.numel() == 1
                                         else bool(pred == prev))
            if same and (policy.confidence is None or _confident(policy.confidence, logits)):
                counter += 1
            else:
                counter = 0
            prev = pred
            if counter == policy.patience:
                return logits, i + 1
        elif isinstance(policy, FixedDepth) and policy.depth and i + 1 >= policy.depth:
            return logits, i + 1
    return logits, model.num_layers
