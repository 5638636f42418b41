"""Oracle: our DPO loss, metrics and gradients equal TRL's DPOTrainer on the same tiny model and batch.

TRL 1.16's DPOTrainer computes the reference log-probs in the batch (a second model held in memory);
ours are precomputed once. Both tokenize "prompt" and "prompt + completion + EOS" the same way on these
pairs (every completion starts with a space, so no BPE merge crosses the boundary: checked below), cut
rows to ``max_length`` from the end (``keep_start``), and sum the completion tokens' log-probs.

cDPO is not tested against TRL: TRL 1.16 has no cDPO as such. Its ``label_smoothing`` feeds the "robust"
loss (Chowdhury et al., 2024), the unbiased variant (ℓ(h)·(1 − ε) − ℓ(−h)·ε) / (1 − 2ε) with
ℓ = −log σ, a different function of the margin h than cDPO's −(1 − ε) log σ(h) − ε log σ(−h).
"""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("trl")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers 5 renames TRL's defaults

from dpo_edu.dpo import DPOConfig, pair_logps, precompute_reference_logps, preference_loss, tokenize_pairs  # noqa: E402

PAIRS = [
    {"prompt": "The movie was", "chosen": " wonderful and moving.", "rejected": " dull."},
    {"prompt": "I", "chosen": " loved it", "rejected": " hated every minute of this long film, truly"},
    {"prompt": "This film is a", "chosen": " gem", "rejected": " mess from start to end"},
    {"prompt": "Acting", "chosen": " superb, story great", "rejected": " bad"},
    {"prompt": "What a", "chosen": " great cast", "rejected": " waste of time and money"},
    {"prompt": "Not", "chosen": " bad at all, really good", "rejected": " good"},
    {"prompt": "The plot", "chosen": " works well", "rejected": " makes no sense at all"},
    {"prompt": "One of the best", "chosen": " films this year", "rejected": " naps I took"},
]
MAX_LENGTH = 14  # short enough that some rows are cut (and lose their EOS), as TRL does it


@pytest.fixture(scope="module")
def models_pair(tiny_lm):
    """(reference, policy): the tiny GPT-2 and a copy whose weights moved, so the log-ratios are not 0."""
    ref, tokenizer = tiny_lm
    policy = copy.deepcopy(ref)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(3)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return copy.deepcopy(ref), policy, tokenizer


def _trl_loss(ref, policy, tokenizer, loss_type, beta, tmp_path):
    """TRL's loss, metrics and gradients on one batch holding all 8 pairs."""
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    args = TRLConfig(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=len(PAIRS), use_cpu=True,
                     bf16=False, gradient_checkpointing=False, max_length=MAX_LENGTH, beta=beta,
                     loss_type=[loss_type], precompute_ref_log_probs=False, disable_tqdm=True)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(ref), args=args,
                         train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters()}
    return loss.item(), metrics, grads, trainer.train_dataset


def _our_loss(ref, policy, tokenizer, config):
    pairs, report = precompute_reference_logps(ref, tokenizer, PAIRS, config, verbose=False)
    assert report.kept == len(PAIRS)
    model = copy.deepcopy(policy).train()
    rows, _ = tokenize_pairs(tokenizer, pairs, config.max_length, config.append_eos)
    chosen, rejected, n_w, n_l = pair_logps(model, tokenizer, rows)
    ref_chosen = torch.tensor([p["ref_chosen_logps"] for p in pairs])
    ref_rejected = torch.tensor([p["ref_rejected_logps"] for p in pairs])
    loss, metrics = preference_loss(chosen, rejected, ref_chosen, ref_rejected, n_w, n_l, config)
    loss.backward()
    return loss.item(), metrics, {name: p.grad.clone() for name, p in model.named_parameters()}, rows, report


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.1), ("hinge", 0.5), ("ipo", 0.1)])
def test_loss_metrics_and_gradients_equal_trl(models_pair, loss_type, beta, tmp_path, one_thread):
    ref, policy, tokenizer = models_pair
    trl_loss, trl_metrics, trl_grads, trl_data = _trl_loss(ref, policy, tokenizer, loss_type, beta, tmp_path)
    config = DPOConfig(beta=beta, loss_type=loss_type, max_length=MAX_LENGTH, progress=False)
    loss, metrics, grads, rows, report = _our_loss(ref, policy, tokenizer, config)

    # The same tokens: TRL's prompt_ids / chosen_ids / rejected_ids (EOS appended), cut as its collator cuts.
    assert len(rows) == len(trl_data)
    for ours, theirs in zip(rows, trl_data):
        room = MAX_LENGTH - len(theirs["prompt_ids"])
        assert ours["prompt_ids"] == theirs["prompt_ids"]
        assert ours["chosen_ids"] == theirs["chosen_ids"][:room]
        assert ours["rejected_ids"] == theirs["rejected_ids"][:room]
    assert sum(report.truncated.values()) > 0  # the truncation rule was exercised

    assert loss == pytest.approx(trl_loss, abs=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                 "logps/chosen", "logps/rejected"):
        assert metrics[name] == pytest.approx(trl_metrics[name], abs=1e-5), name
    assert 0 < metrics["rewards/accuracies"] < 1  # a real mix of right and wrong orders, not a trivial case
    for name, grad in grads.items():
        torch.testing.assert_close(grad, trl_grads[name], atol=1e-5, rtol=1e-4, msg=name)
