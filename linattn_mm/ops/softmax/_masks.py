"""Mask arithmetic shared by the fast and the naive softmax attention."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def combine_masks(q: Tensor, k: Tensor, key_padding_mask: Optional[Tensor],
                  attn_mask: Optional[Tensor]) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """Fold both masks into ``(allowed, bias, row_ok)``.

    * ``allowed``: bool, broadcastable to ``(B, H, Nq, Nk)``, True where a query may look at a key; rows with no
      allowed key are switched fully on (so softmax stays finite) and reported through ``row_ok``.
    * ``bias``: float additive bias (finite everywhere) or None.
    * ``row_ok``: bool ``(B|1, H|1, Nq|1, 1)``, False for query rows that had no allowed key at all;
      their outputs must be zeroed by the caller. None when there is no mask at all.
    """
    allowed: Optional[Tensor] = None
    bias: Optional[Tensor] = None
    if attn_mask is not None:
        while attn_mask.dim() < 4:
            attn_mask = attn_mask.unsqueeze(0)
        if attn_mask.dtype == torch.bool:
            allowed = ~attn_mask
        else:
            allowed = attn_mask != float('-inf')
            # -inf entries are masks, not biases: keep them out of the arithmetic (no inf - inf)
            bias = attn_mask.masked_fill(~allowed, 0.).to(q.dtype)
    if key_padding_mask is not None:
        kp = ~key_padding_mask[:, None, None, :]
        allowed = kp if allowed is None else allowed & kp
    if allowed is None:
        return None, bias, None
    # unconditionally, without asking the device whether any row is empty: bool(tensor) would be a host sync
    # (and a graph break under torch.compile) in every forward
    row_ok = allowed.any(-1, keepdim=True)
    return allowed | ~row_ok, bias, row_ok
