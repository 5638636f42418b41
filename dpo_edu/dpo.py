"""Direct Preference Optimization (DPO paper §4, Eq. 7): preference pairs train the policy directly.

    L_DPO(π_θ; π_ref) = −E [log σ(β log π_θ(y_w|x)/π_ref(y_w|x) − β log π_θ(y_l|x)/π_ref(y_l|x))]

log π_ref of every pair is computed once before training; chosen and rejected share one forward
pass. Each choice is TRL ``DPOTrainer``'s (tests/test_dpo_trl_oracle.py): docs/notes.md#dpo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .data import Report
from .losses import LOSS_TYPES, dpo_loss
from .models import response_logps
from .preferences import EOS_RULES, SIDES, pair_token_ids
from .progress import progress_bar
from .training import TrainConfig, minimize, train_loop
from .validate import check_int, check_positive

REF_FIELDS = ("ref_chosen_logps", "ref_rejected_logps")  # what the precompute adds (TRL's names)


@dataclass(frozen=True)
class DPOConfig(TrainConfig):
    """DPO on precomputed reference log-probs; the shared fields are ``TrainConfig``'s."""

    lr: float = 1e-4  # peak AdamW learning rate (the tiny GPT-2; the paper: 1e-6 for GPT-2)
    batch_size: int = 16  # preference pairs per step (2 × batch_size rows in one forward pass)
    beta: float = 0.1  # β of Eq. 7, weight of KL(π ‖ π_ref); notebook 05 sweeps frontier.dpo_betas
    loss_type: str = "sigmoid"  # "sigmoid" (Eq. 7), "ipo" (length-normalised, as TRL) or "hinge"
    label_smoothing: float = 0.0  # cDPO's ε: each label flipped with probability ε (sigmoid)
    rpo_alpha: float = 0.0  # α of an SFT term on the chosen responses, α · NLL(y_w) (TRL's RPO)
    max_length: int = 64  # tokens per row, prompt + response + EOS; longer rows lose their end
    append_eos: str = "auto"  # EOS after a response: "ended" (where π_ref emitted it), "always"
    # (TRL's), "never"; "auto": "ended" when the records carry chosen_ended, else "always"
    length_buckets: int = 1  # forward passes per step, rows sorted by length: less padding on a CPU
    ref_batch_size: int | None = None  # pairs per pass of the π_ref precompute; None: batch_size
    eval_batch_size: int = 64  # pairs per forward pass in evaluate_pairs

    def __post_init__(self):
        super().__post_init__()
        check_positive("beta", self.beta)
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        smoothing = self.label_smoothing
        if not (isinstance(smoothing, (int, float)) and 0.0 <= smoothing < 0.5):
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {smoothing!r}")
        if smoothing and self.loss_type != "sigmoid":
            raise ValueError(f"label_smoothing (cDPO) applies to loss_type 'sigmoid' only, not "
                             f"{self.loss_type!r}")
        if not (isinstance(self.rpo_alpha, (int, float)) and 0.0 <= self.rpo_alpha < math.inf):
            raise ValueError(f"rpo_alpha must be a finite number ≥ 0, got {self.rpo_alpha!r}")
        check_int("max_length", self.max_length, 2)  # a prompt token and a response token at least
        if self.append_eos not in EOS_RULES:
            raise ValueError(f"append_eos must be one of {EOS_RULES}, got {self.append_eos!r}")
        for name in ("length_buckets", "eval_batch_size"):
            check_int(name, getattr(self, name), 1)
        if self.ref_batch_size is not None:
            check_int("ref_batch_size", self.ref_batch_size, 1)


# --- tokens and batches ---------------------------------------------------------------------------


def tokenize_pairs(tokenizer, pairs: Sequence[dict], max_length: int, append_eos: str = "auto"
                   ) -> tuple[list[dict], Report]:
    """``prompt_ids`` / ``chosen_ids`` / ``rejected_ids`` (TRL's names) and ``index`` of each pair.

    TRL's ``keep_start``: a row over ``max_length`` loses its end (counted); a pair whose prompt
    alone fills ``max_length`` is skipped (its index in ``report.skipped_rows``).
    """
    check_int("max_length", max_length, 2)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("tokenizer needs a pad token distinct from EOS "
                         "(models.load_tokenizer adds one)")
    report, rows = Report("tokenize_pairs", total=len(pairs)), []
    for i, (prompt, *responses) in enumerate(pair_token_ids(tokenizer, pairs, append_eos)):
        if len(prompt) >= max_length:
            report.skip(i, f"prompt alone has ≥ max_length={max_length} tokens: "
                           "no response token left")
            continue
        row, room = {"index": i, "prompt_ids": prompt}, max_length - len(prompt)
        for side, ids in zip(SIDES, responses):
            if len(ids) > room:
                ids = ids[:room]  # keep_start: the end of the response goes
                report.truncate(f"{side} cut to fit max_length={max_length} tokens")
            row[f"{side}_ids"] = ids
        rows.append(row)
    return rows, report


def collate_pairs(rows: Sequence[dict], pad_token_id: int) -> dict[str, Tensor]:
    """[x ⊕ y_w ; x ⊕ y_l]: the chosen rows, then the rejected rows, in ONE right-padded batch."""
    prompts = [row["prompt_ids"] for row in rows]
    responses = [row["chosen_ids"] for row in rows] + [row["rejected_ids"] for row in rows]
    return _right_padded(list(zip(prompts + prompts, responses)), pad_token_id)


def _right_padded(sequences: Sequence[tuple[list[int], list[int]]], pad_token_id: int
                  ) -> dict[str, Tensor]:
    width = max(len(p) + len(r) for p, r in sequences)
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    response = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, (p, r) in enumerate(sequences):
        ids[i, : len(p) + len(r)] = torch.tensor(p + r, dtype=torch.long)
        mask[i, : len(p) + len(r)] = 1
        response[i, len(p) : len(p) + len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask, "response_mask": response}


def pair_logps(model, tokenizer, rows: Sequence[dict], buckets: int = 1, desc: str | None = None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(log π(y_w|x), log π(y_l|x), tokens of y_w, tokens of y_l)`` of tokenized pairs.

    With ``buckets=k`` the 2n rows, sorted by length, go through k forward passes (less padding);
    ``desc`` names a progress bar over them.
    """
    if not rows:
        return (torch.empty(0),) * 4
    sequences = [(r["prompt_ids"], r[side])
                 for side in ("chosen_ids", "rejected_ids") for r in rows]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    order = order if buckets > 1 else list(range(len(sequences)))
    size = math.ceil(len(order) / buckets)
    chunks = [order[s : s + size] for s in range(0, len(order), size)]
    parts = [response_logps(model, _right_padded([sequences[i] for i in c], tokenizer.pad_token_id))
             .sequence_logps for c in progress_bar(chunks, desc=desc, disable=desc is None)]
    back = torch.argsort(torch.tensor(order)).to(parts[0].device)  # to the rows' order
    logps = torch.cat(parts)[back]
    tokens = torch.tensor([len(r) for _, r in sequences], device=logps.device)
    n = len(rows)
    return logps[:n], logps[n:], tokens[:n], tokens[n:]


# --- the reference, once --------------------------------------------------------------------------


@torch.no_grad()
def precompute_reference_logps(ref_model, tokenizer, pairs: Sequence[dict],
                               config: DPOConfig | None = None, batch_size: int | None = None,
                               verbose: bool = True) -> tuple[list[dict], Report]:
    """Copies of the pairs with ``ref_chosen_logps`` / ``ref_rejected_logps`` = log π_ref(y|x).

    Tokenized and truncated as ``train_dpo`` will (pass the same ``config``); dropped pairs are left
    out and reported. Afterwards π_ref is no longer needed: delete it to halve the memory.
    """
    config = config if config is not None else DPOConfig()
    batch_size = (batch_size if batch_size is not None
                  else config.ref_batch_size or config.batch_size)
    check_int("batch_size", batch_size, 1)
    check_fits(ref_model, config)
    rows, report = tokenize_pairs(tokenizer, pairs, config.max_length, config.append_eos)
    report.step = "precompute_reference_logps"
    was_training = ref_model.training
    ref_model.eval()  # no dropout: the reference is the deterministic π_ref
    try:  # every row sorted by length, batch_size pairs a pass: hardly any padding computed
        chosen, rejected, _, _ = pair_logps(ref_model, tokenizer, rows,
                                            math.ceil(len(rows) / batch_size),
                                            desc="log π_ref of the pairs" if verbose else None)
    finally:
        ref_model.train(was_training)
    out = [{**pairs[row["index"]], "ref_chosen_logps": c, "ref_rejected_logps": r}
           for row, c, r in zip(rows, chosen.tolist(), rejected.tolist())]
    if verbose and (report.skipped or report.truncated):
        print(report)
    return out, report


def check_fits(model, config) -> None:
    """``config.max_length`` ≤ the model's ``n_positions``, else a ValueError naming both."""
    n_positions = getattr(model.config, "n_positions", None)
    if n_positions is not None and config.max_length > n_positions:
        raise ValueError(f"config.max_length ({config.max_length}) exceeds the model's n_positions "
                         f"({n_positions})")


def _reference_rows(tokenizer, pairs: Sequence[dict], config: DPOConfig) -> list[dict]:
    """Tokenized pairs with their π_ref log-probs; refuses pairs the precompute did not prepare."""
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or not all(k in pair for k in REF_FIELDS):
            raise ValueError(f"pairs[{i}] has no {' / '.join(REF_FIELDS)}: run "
                             "precompute_reference_logps(ref_model, tokenizer, pairs, config) "
                             "first")
        for k in REF_FIELDS:
            if not (isinstance(pair[k], (int, float)) and math.isfinite(pair[k])):
                raise ValueError(f"pairs[{i}]['{k}'] must be a finite number, got {pair[k]!r}")
    rows, report = tokenize_pairs(tokenizer, pairs, config.max_length, config.append_eos)
    if report.skipped:  # the precompute drops these itself: its max_length must have been another
        raise ValueError(f"pairs {report.skipped_rows[:8]} do not fit config.max_length="
                         f"{config.max_length}; compute their reference log-probs "
                         f"with train_dpo's config")
    for row in rows:
        row["ref_chosen_logps"], row["ref_rejected_logps"] = (
            pairs[row["index"]][k] for k in REF_FIELDS)
    return rows


# --- the loss -------------------------------------------------------------------------------------


def preference_loss(chosen: Tensor, rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor,
                    chosen_tokens: Tensor, rejected_tokens: Tensor, config: DPOConfig
                    ) -> tuple[Tensor, dict]:
    """The configured loss of summed log-probs, and TRL's metrics.

    The logged rewards are β × the summed log-ratios, for every loss type.
    """
    # sigmoid (Eq. 7), cDPO or hinge on the summed log-ratios
    loss, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, config.beta,
                             config.loss_type, config.label_smoothing)
    if config.loss_type == "ipo":  # TRL 1.16: the log-ratio averaged per response token
        n_w, n_l = chosen_tokens.clamp(min=1), rejected_tokens.clamp(min=1)  # (a − b)/n = a/n − b/n
        loss, _ = dpo_loss(chosen / n_w, rejected / n_l, ref_chosen / n_w, ref_rejected / n_l,
                           config.beta, "ipo")
    return loss, metrics


def sft_term(chosen: Tensor, chosen_tokens: Tensor) -> Tensor:
    """NLL(y_w) = −Σ log π(y_w) / Σ |y_w| over a batch, per chosen token as TRL: DPO's loss plus
    α · NLL(y_w) is RPO (Pang et al., 2024; TRL's ``rpo_alpha``), an SFT term that holds up
    log π(y_w), which DPO alone may lower (``displacement.py``)."""
    return -chosen.sum() / chosen_tokens.sum().clamp(min=1)


# --- training -------------------------------------------------------------------------------------


def train_dpo(policy, tokenizer, pairs: Sequence[dict], config: DPOConfig | None = None,
              callback: Callable[[int, dict], None] | None = None, checkpoint_dir=None,
              eval_fn: Callable[[], dict] | None = None):
    """Optimise ``policy`` (in place) by DPO on pairs from ``precompute_reference_logps``.

    Returns ``(policy, metrics)``, a row per step, TRL's names (``loss``, ``rewards/margins``, …).
    """
    config = config if config is not None else DPOConfig()
    if not isinstance(config, DPOConfig):
        raise ValueError(f"config must be a DPOConfig, got {type(config).__name__}")
    check_fits(policy, config)
    rows = _reference_rows(tokenizer, pairs, config)  # tokenized once, not at every step

    def loss_fn(batch: list[dict]):
        chosen, rejected, n_w, n_l = pair_logps(policy, tokenizer, batch, config.length_buckets)
        if not (torch.isfinite(chosen).all() and torch.isfinite(rejected).all()):
            return chosen.sum() + rejected.sum(), {}  # non-finite: train_loop names step and batch
        ref_chosen = torch.tensor([row["ref_chosen_logps"] for row in batch], device=chosen.device)
        ref_rejected = torch.tensor([row["ref_rejected_logps"] for row in batch],
                                    device=chosen.device)
        loss, metrics = preference_loss(chosen, rejected, ref_chosen, ref_rejected, n_w, n_l,
                                        config)
        if config.rpo_alpha:  # L_DPO + α · NLL(y_w)
            nll = sft_term(chosen, n_w)
            loss, metrics = loss + config.rpo_alpha * nll, {**metrics, "nll_loss": nll.item()}
        return loss, metrics

    metrics = train_loop(policy, rows, minimize(loss_fn, config.grad_accum_steps), config,
                         callback=callback, checkpoint_dir=checkpoint_dir, eval_fn=eval_fn,
                         desc="DPO")
    return policy, metrics


@torch.no_grad()
def evaluate_pairs(policy, tokenizer, pairs: Sequence[dict],
                   config: DPOConfig | None = None) -> dict:
    """Held-out metrics of pairs with π_ref log-probs: ``eval_loss``, ``eval_rewards/…``, …"""
    config = config if config is not None else DPOConfig()
    rows = _reference_rows(tokenizer, pairs, config)
    if not rows:
        raise ValueError("pairs is empty: nothing to evaluate")
    was_training = policy.training
    policy.eval()
    try:
        chosen, rejected, n_w, n_l = pair_logps(policy, tokenizer, rows,
                                                math.ceil(len(rows) / config.eval_batch_size))
    finally:
        policy.train(was_training)
    ref_chosen = torch.tensor([row["ref_chosen_logps"] for row in rows], device=chosen.device)
    ref_rejected = torch.tensor([row["ref_rejected_logps"] for row in rows], device=chosen.device)
    loss, metrics = preference_loss(chosen, rejected, ref_chosen, ref_rejected, n_w, n_l, config)
    return {"eval_loss": loss.item(), **{f"eval_{k}": v for k, v in metrics.items()}}
