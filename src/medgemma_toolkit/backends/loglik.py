"""Continuation log-likelihoods with the output layer in float32, whatever dtype the model runs in.

A bf16 model's logits are bf16: at the magnitudes of a 262k-word vocabulary's logits (~10-30) bf16 steps by
0.0625-0.125, so option scores move in those steps and tie (issue #34: B, C and D all -1.6406 on one MMLU item).
Here the final hidden state of each scored position is taken from the model's output layer (a forward hook on
`lm_head` sees its input) and the product with the output matrix, the optional soft-capping and the log-softmax are
all computed in float32, the matrix read in row chunks so no float32 copy of it is ever whole in memory (262,144 x
2,560 x 4 bytes = 2.7 GB for MedGemma 4B). The transformer body still runs in the model's dtype.
"""

from __future__ import annotations

from typing import Any

# Output-matrix rows converted to float32 at a time: 32k x 5,376 (MedGemma 27B) x 4 bytes = 0.7 GB at most.
VOCAB_CHUNK = 32_768


def scored_hidden_states(model: Any, inputs: dict[str, Any], keep: int) -> Any:
    """The final hidden states of the last `keep` positions, (batch, keep, hidden), as the output layer sees them.

    `logits_to_keep` restricts the model's own (discarded) logits to those positions as well."""
    head = model.get_output_embeddings()
    seen: list[Any] = []
    handle = head.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        model(**inputs, logits_to_keep=keep)
    finally:
        handle.remove()
    if len(seen) != 1:
        raise RuntimeError(f"expected one pass through the output layer, saw {len(seen)}")
    return seen[0]


def token_logprobs_fp32(model: Any, hidden: Any, targets: Any) -> Any:
    """log p(targets[b, j] | position j) in float32 from hidden states `hidden` (batch, n, width).

    Exact float32 arithmetic on the model's own weights: logits = hidden @ W^T (+ bias), soft-capped as the model's
    forward does (`config.final_logit_softcapping`, read where the model class reads it), then a log-softmax made of
    a running log-sum-exp over vocabulary chunks."""
    import torch

    head = model.get_output_embeddings()
    weight, bias = head.weight, getattr(head, "bias", None)
    cap = getattr(model.config, "final_logit_softcapping", None)
    h = hidden.float()
    targets = targets.to(h.device)
    if not weight.dtype.is_floating_point:  # a quantised output layer: its own (dequantising) forward, then fp32
        logits = head(hidden).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        lp = torch.log_softmax(logits, dim=-1)
        return lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def chunk_logits(rows: slice) -> Any:
        w = weight[rows].to(h.device, torch.float32)
        out = h @ w.T
        if bias is not None:
            out = out + bias[rows].to(h.device, torch.float32)
        return torch.tanh(out / cap) * cap if cap else out

    vocab = weight.shape[0]
    lse = torch.full(h.shape[:-1], float("-inf"), dtype=torch.float32, device=h.device)
    target_logit = torch.zeros(h.shape[:-1], dtype=torch.float32, device=h.device)
    for start in range(0, vocab, VOCAB_CHUNK):
        rows = slice(start, min(vocab, start + VOCAB_CHUNK))
        logits = chunk_logits(rows)
        lse = torch.logaddexp(lse, torch.logsumexp(logits, dim=-1))
        inside = (targets >= rows.start) & (targets < rows.stop)
        local = (targets - rows.start).clamp(0, logits.shape[-1] - 1)
        picked = logits.gather(-1, local.unsqueeze(-1)).squeeze(-1)
        target_logit = torch.where(inside, picked, target_logit)
    return target_logit - lse
