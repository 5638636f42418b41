"""Likelihood displacement: DPO can lower log π(y_w | x), the response it was told to prefer, and
which pairs will do it can be read off π_ref's hidden states before training (Razin et al., 2024,
"Unintentional Unalignment", §4). With h(x, y_<k) the last hidden state that predicts token k:

    CHES(x, y_w, y_l)    = ⟨H_w, H_l⟩ − ‖H_w‖²,                  H = Σ_k h(x, y_<k)
    LN-CHES(x, y_w, y_l) = ⟨H_w / |y_w|, H_l / |y_l|⟩ − ‖H_w‖² / |y_w|²

The larger the score, the more alike the two responses look to the model, and the more a DPO step
that pushes y_l down drags y_w down with it (notebook 07, §9).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .dpo import collate_pairs
from .models import response_states
from .validate import check_int


class Embeddings(NamedTuple):
    """Summed hidden states of each pair's responses, and their lengths in tokens."""

    chosen: Tensor  # (n, H) H_w
    rejected: Tensor  # (n, H) H_l
    chosen_tokens: Tensor  # (n,) |y_w|
    rejected_tokens: Tensor  # (n,) |y_l|


@torch.no_grad()
def response_embeddings(model, tokenizer, rows: Sequence[dict], batch_size: int = 64
                        ) -> Embeddings:
    """H_w and H_l of pairs tokenized by ``dpo.tokenize_pairs``, in float32 on the CPU."""
    check_int("batch_size", batch_size, 1)
    if not rows:
        raise ValueError("rows is empty: no pair to embed")
    was_training = model.training
    model.eval()
    sums, lengths = [], []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            states, scored = response_states(model, collate_pairs(chunk, tokenizer.pad_token_id))
            row = scored.nonzero()[:, 0]  # the row of each of the N states
            total = torch.zeros(len(scored), states.shape[-1], device=states.device)
            total = total.index_add(0, row, states.float())
            sums.append(total.cpu().split(len(chunk)))  # chosen rows, then rejected rows
            lengths.append(scored.sum(1).cpu().split(len(chunk)))
    finally:
        model.train(was_training)
    chosen, rejected = (torch.cat([part[side] for part in sums]) for side in (0, 1))
    n_w, n_l = (torch.cat([part[side] for part in lengths]) for side in (0, 1))
    return Embeddings(chosen, rejected, n_w, n_l)


def ches(embeddings: Embeddings, normalised: bool = False) -> Tensor:
    """(n,) CHES, or LN-CHES with ``normalised``, of each pair (module docstring)."""
    chosen, rejected = embeddings.chosen, embeddings.rejected
    if normalised:
        chosen = chosen / embeddings.chosen_tokens.clamp(min=1)[:, None]
        rejected = rejected / embeddings.rejected_tokens.clamp(min=1)[:, None]
    return (chosen * rejected).sum(-1) - (chosen * chosen).sum(-1)
