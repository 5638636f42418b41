"""CHES (Razin et al., 2024) from hidden states: summed states against each pair run alone, the score against
its formula, and DPO's SFT term (rpo_alpha) that holds log π(y_w) up."""

import copy
import dataclasses

import pytest
import torch

from dpo_edu import displacement, dpo
from dpo_edu.dpo import DPOConfig


def _rows(tokenizer):
    pairs = [{"prompt": "The film", "chosen": " was a joy to watch", "rejected": " bored me"},
             {"prompt": "I", "chosen": " loved it", "rejected": " left early, and I would leave again"},
             {"prompt": "A long and slow story", "chosen": " with heart", "rejected": " with nothing"}]
    rows, _ = dpo.tokenize_pairs(tokenizer, pairs, max_length=48, append_eos="always")
    return rows


def test_summed_states_equal_each_response_run_alone(tiny_lm):
    policy, tokenizer = tiny_lm
    rows = _rows(tokenizer)
    embeddings = displacement.response_embeddings(policy, tokenizer, rows, batch_size=2)  # two batches
    for i, row in enumerate(rows):
        for side, summed, length in (("chosen", embeddings.chosen, embeddings.chosen_tokens),
                                     ("rejected", embeddings.rejected, embeddings.rejected_tokens)):
            ids = row["prompt_ids"] + row[f"{side}_ids"]
            with torch.no_grad():
                hidden = policy.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            n_prompt, n_response = len(row["prompt_ids"]), len(row[f"{side}_ids"])
            # the states that predict the response: positions n_prompt − 1 … n_prompt + n_response − 2
            expected = hidden[n_prompt - 1 : n_prompt + n_response - 1].sum(0)
            torch.testing.assert_close(summed[i], expected, rtol=1e-4, atol=1e-4)
            assert length[i] == n_response


def test_ches_is_its_formula():
    embeddings = displacement.Embeddings(torch.tensor([[1.0, 0.0], [2.0, 2.0], [1.0, 1.0]]),
                                         torch.tensor([[1.0, 1.0], [2.0, 2.0], [-1.0, 1.0]]),
                                         torch.tensor([2, 4, 1]), torch.tensor([1, 2, 3]))
    # ⟨H_w, H_l⟩ − ‖H_w‖²: 1 − 1; 8 − 8 (alike responses: no margin to gain from H); 0 − 2 (orthogonal)
    torch.testing.assert_close(displacement.ches(embeddings), torch.tensor([0.0, 0.0, -2.0]))
    # LN: ⟨H_w/|y_w|, H_l/|y_l|⟩ − ‖H_w‖²/|y_w|²: 1/2 − 1/4; 8/8 − 8/16; 0 − 2
    torch.testing.assert_close(displacement.ches(embeddings, normalised=True), torch.tensor([0.25, 0.5, -2.0]))


def test_no_rows_is_an_error(tiny_lm):
    with pytest.raises(ValueError, match="rows is empty"):
        displacement.response_embeddings(tiny_lm[0], tiny_lm[1], [])


def test_the_sft_term_is_the_nll_per_chosen_token_and_rpo_alpha_is_checked():
    chosen, tokens = torch.tensor([-10.0, -4.0]), torch.tensor([5, 2])
    assert dpo.sft_term(chosen, tokens).item() == pytest.approx(14 / 7)  # −Σ log π(y_w) / Σ |y_w|
    for bad in (-0.1, float("inf"), "1"):
        with pytest.raises(ValueError, match="rpo_alpha"):
            dataclasses.replace(DPOConfig(), rpo_alpha=bad)


def test_the_sft_term_raises_log_pi_of_the_chosen(tiny_lm):
    policy, tokenizer = tiny_lm
    pairs = [{"prompt": f"Film {i}", "chosen": " good and fine", "rejected": f" awful {i}"} for i in range(16)]
    config = DPOConfig(lr=1e-2, batch_size=8, steps=6, progress=False, append_eos="always")
    prepared, _ = dpo.precompute_reference_logps(policy, tokenizer, pairs, config)
    rows, _ = dpo.tokenize_pairs(tokenizer, pairs, config.max_length, config.append_eos)
    change, logged = {}, {}
    for alpha in (0.0, 5.0):
        trained = copy.deepcopy(policy)
        _, logged[alpha] = dpo.train_dpo(trained, tokenizer, prepared, dataclasses.replace(config, rpo_alpha=alpha))
        with torch.no_grad():
            after = dpo.pair_logps(trained.eval(), tokenizer, rows)[0]
        change[alpha] = (after - torch.tensor([p["ref_chosen_logps"] for p in prepared])).mean().item()
    assert change[5.0] > change[0.0] and change[5.0] > 0
    assert "nll_loss" in logged[5.0][0] and "nll_loss" not in logged[0.0][0]
    # the loss logged is DPO's plus α · NLL: at step 1 both runs start from π_ref, where DPO's loss is log 2
    assert logged[5.0][0]["loss"] == pytest.approx(logged[0.0][0]["loss"] + 5.0 * logged[5.0][0]["nll_loss"], rel=1e-5)
