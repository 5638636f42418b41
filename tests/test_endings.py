"""The EOS rule: a pair whose chosen ended (π_ref emitted EOS) and whose rejected was cut, through the whole
path: the record, its JSONL and datasets round trips, DPO's tokens and log-probs, the reward model's tokens
and scores, and PPO's scoring of samples."""

import pytest
import torch

from dpo_edu import data, dpo, models, preferences, reward_model
from dpo_edu.reward_model import RewardModel
from dpo_edu.sampling import Samples

PROMPT, CHOSEN, REJECTED = "The movie was", " a delight.", " a long and"


@pytest.fixture(scope="module")
def record():
    pairs, report = preferences.make_pairs([PROMPT], [[CHOSEN, REJECTED]], [[0.9, 0.2]], ended=[[True, False]])
    assert report.total == 1 and len(pairs) == 1
    return pairs[0]


def test_the_record_says_which_response_ended_and_survives_round_trips(record, tmp_path):
    assert (record["chosen"], record["chosen_ended"], record["rejected_ended"]) == (CHOSEN, True, False)
    assert data.load_jsonl(data.save_jsonl([record], tmp_path / "pairs.jsonl")) == [record]
    assert data.from_dataset(data.to_dataset([record])) == [record]
    unflagged = preferences.make_pairs([PROMPT], [[CHOSEN, REJECTED]], [[0.9, 0.2]])[0][0]
    assert "chosen_ended" not in unflagged  # no flags asked, none made up


def test_eos_follows_a_response_only_where_pi_ref_emitted_it(record, tiny_lm):
    _, tok = tiny_lm
    eos, plain = tok.eos_token_id, {side: models.token_ids(tok, text) for side, text in
                                    (("chosen", CHOSEN), ("rejected", REJECTED))}
    expected = {"auto": (True, False), "ended": (True, False), "always": (True, True), "never": (False, False)}
    for rule, (chosen_eos, rejected_eos) in expected.items():
        (prompt, chosen, rejected), = preferences.pair_token_ids(tok, [record], rule)
        assert prompt == models.token_ids(tok, PROMPT)
        assert chosen == plain["chosen"] + [eos] * chosen_eos, rule
        assert rejected == plain["rejected"] + [eos] * rejected_eos, rule
        rows, _ = dpo.tokenize_pairs(tok, [record], max_length=64, append_eos=rule)  # DPO reads the same ids
        assert (rows[0]["chosen_ids"], rows[0]["rejected_ids"]) == (chosen, rejected)
    flagless = {k: record[k] for k in preferences.PAIR_FIELDS}
    assert preferences.eos_rule([flagless], "auto") == "always"  # TRL's rule where records do not say
    with pytest.raises(ValueError, match=r"pairs\[0\] does not say whether its responses ended"):
        preferences.eos_rule([flagless], "ended")
    with pytest.raises(ValueError, match=r"pairs\[1\] lacks chosen_ended, rejected_ended, which other records"):
        preferences.eos_rule([record, flagless], "auto")
    with pytest.raises(ValueError, match="append_eos must be one of"):
        dpo.DPOConfig(append_eos=True)


def test_dpo_scores_the_eos_pi_ref_emitted_and_no_other(record, tiny_lm, one_thread):
    policy, tok = tiny_lm
    config = dpo.DPOConfig(max_length=64)
    prepared, _ = dpo.precompute_reference_logps(policy, tok, [record], config, verbose=False)
    for side, ended in (("chosen", True), ("rejected", False)):
        batch = models.encode_pairs(tok, [PROMPT], [record[side]], append_eos=ended)
        alone = models.response_logps(policy, batch).sequence_logps.item()
        assert prepared[0][f"ref_{side}_logps"] == pytest.approx(alone, abs=1e-5), side
    cut = models.encode_pairs(tok, [PROMPT], [REJECTED], append_eos=True)  # what TRL's rule would score
    assert prepared[0]["ref_rejected_logps"] != pytest.approx(
        models.response_logps(policy, cut).sequence_logps.item(), abs=1e-3)


def test_the_reward_model_and_ppo_read_the_same_endings(record, tiny_lm, tmp_path, one_thread):
    policy, tok = tiny_lm
    rm = RewardModel.from_policy(policy, tok, seed=3)
    chosen, rejected = reward_model.pair_scores(rm, tok, [record])
    by_flags = reward_model.score(rm, tok, [PROMPT, PROMPT], [CHOSEN, REJECTED], ended=[True, False])
    torch.testing.assert_close(torch.cat([chosen, rejected]), by_flags)
    # PPO scores its samples' own tokens, EOS included where sampled: the same numbers
    sampled = [models.token_ids(tok, CHOSEN) + [tok.eos_token_id], models.token_ids(tok, REJECTED)]
    samples = Samples([PROMPT, PROMPT], [CHOSEN, REJECTED], sampled, {}, torch.tensor([True, False]))
    torch.testing.assert_close(reward_model.score_samples(rm, tok, samples), by_flags)
    assert not torch.allclose(reward_model.score(rm, tok, [PROMPT], [CHOSEN]), chosen)  # the EOS is read
