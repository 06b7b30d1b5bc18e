"""Causal attention over packed conversations, one conversation at a time.

A packed micro-batch is one row of several conversations laid end to end. The usual way to
keep them apart (transformers' sdpa with a block-diagonal mask built from the position ids)
scores every token against every other token of the row and then masks most of the
products away: a row of 16 conversations of 100 tokens computes a 1600 x 1600 score matrix
per head of which 1/16 survives, and on the CPU no kernel skips the masked blocks.

``segment_attention`` is registered with transformers' ``AttentionInterface`` under
:data:`ATTENTION_NAME` and runs torch's ``scaled_dot_product_attention`` with ``is_causal``
on each conversation's own slice, given by the flash-attention-style ``cu_seq_lens_q``
(cumulative lengths, ``[0, l1, l1 + l2, ...]``) that the caller passes to the model's
forward. No mask is built at all: a model whose ``_attn_implementation`` has no mask
function gets none from ``masking_utils``. Without ``cu_seq_lens_q`` a row is one sequence
(right padding after it never reaches a real token under the causal mask).

Only for training without a KV cache: a cache would need the mask this skips.
"""

from __future__ import annotations

ATTENTION_NAME = "modelchain_segments"


def segment_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                      cu_seq_lens_q=None, **kwargs):
    """(batch, heads, seq, dim) query/key/value -> ((batch, seq, heads, dim) output, None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if key.shape[2] != query.shape[2]:
        raise ValueError(f"{ATTENTION_NAME} attention is for training: it cannot attend to a KV cache")
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      is_causal=True, **kwargs)
    import torch

    if query.shape[0] != 1:
        raise ValueError(f"packed segments come as one row, got a batch of {query.shape[0]}")
    bounds = cu_seq_lens_q.tolist() if isinstance(cu_seq_lens_q, torch.Tensor) else list(cu_seq_lens_q)
    if bounds[0] != 0 or bounds[-1] != query.shape[2] or any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seq_lens_q must rise from 0 to the row's {query.shape[2]} tokens, got {bounds}")
    window = kwargs.get("sliding_window")
    if window and max(b - a for a, b in zip(bounds, bounds[1:])) > window:
        raise ValueError(f"a packed conversation is longer than the model's sliding window of {window} tokens")
    parts = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                               dropout=dropout, scaling=scaling, is_causal=True, **kwargs)[0]
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(parts, dim=1), None


def register() -> str:
    """Make ``ATTENTION_NAME`` a valid ``attn_implementation``; returns the name. Idempotent."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, segment_attention)
    return ATTENTION_NAME
