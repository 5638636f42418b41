"""The Bradley–Terry reward model on a tiny GPT-2: read at the last real token, trained in one forward
pass per batch, every parameter learns, save/load is exact, an interrupted run resumes exactly."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from dpo_edu import losses, models
from dpo_edu.presets import PRESETS, get_preset
from dpo_edu.preferences import pair_token_ids
from dpo_edu.reward_model import (RewardConfig, RewardModel, _pair_rewards, center_rewards,
                                  evaluate_reward_model, last_token_index, pair_accuracy, score, train_reward_model)


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


@pytest.fixture(scope="module")
def texts(short_reviews):
    return short_reviews


@pytest.fixture(scope="module")
def tokenizer(texts):
    return models.train_tokenizer(texts, 300, model_max_length=128)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, texts, tokenizer):
    """A tiny π_SFT saved as a run folder, its weights shaken so hidden states differ a lot between texts."""
    model_config = dataclasses.replace(get_preset("ci", verbose=False).model, n_layer=1, n_embd=32, n_head=2,
                                       vocab_size=300)
    policy = models.build_model(model_config, tokenizer, seed=0)
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1)
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return models.save_policy(policy, tokenizer, tmp_path_factory.mktemp("sft"))


def _separable_pairs(prompts, n: int, seed: int) -> list[dict]:
    """Chosen responses praise, rejected ones pan: a reward model can always tell them apart."""
    rng = random.Random(seed)

    def words(pool):
        return " " + " ".join(rng.choice(pool) for _ in range(rng.randint(1, 6)))

    return [{"prompt": rng.choice(prompts), "chosen": words(["great", "wonderful", "superb"]),
             "rejected": words(["awful", "boring", "dull"])} for _ in range(n)]


@pytest.fixture(scope="module")
def pairs(texts):
    prompts = [" ".join(t.split()[: 2 + i % 5]) for i, t in enumerate(texts)]
    return _separable_pairs(prompts[:60], 48, seed=0), _separable_pairs(prompts[60:], 32, seed=1)


def _config(**changes) -> RewardConfig:
    base = dict(lr=3e-3, batch_size=8, steps=6, progress=False, log_every=1)
    return RewardConfig(**{**base, **changes})


# --- where the reward is read --------------------------------------------------------------------------


def test_last_token_index():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [4, 5, 1]
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[1, 1], [0, 0]]))


def test_backbone_is_the_policy_transformer(policy_dir, tokenizer):
    policy = models.load_policy(policy_dir, tokenizer)
    for source in (policy_dir, policy):  # a folder (from_pretrained) or a live policy (copied)
        rm = RewardModel.from_policy(source, tokenizer)
        own = dict(policy.transformer.named_parameters())
        for name, p in rm.backbone.named_parameters():
            assert torch.equal(p, own[name]), name
        assert rm.backbone.wte.weight.data_ptr() != policy.transformer.wte.weight.data_ptr()  # not shared
    assert RewardModel.from_policy(policy_dir, seed=3).head.weight.tolist() != rm.head.weight.tolist()


def test_batch_scores_equal_each_pair_scored_alone(policy_dir, tokenizer):
    rm = RewardModel.from_policy(policy_dir, tokenizer).eval()
    prompts = ["I", "This movie was a", "Bad", "One of the best films I have ever"]
    responses = [" loved every minute of it, truly", " mess.", " acting, bad plot and a worse ending", ""]
    batch = models.encode_pairs(tokenizer, prompts, responses)  # left-padded prompts, right-padded responses
    assert (batch["attention_mask"][:, 0] == 0).any() and (batch["attention_mask"][:, -1] == 0).any()
    with torch.no_grad():
        together = rm(batch["input_ids"], batch["attention_mask"])
        alone = []
        for p, r in zip(prompts, responses):
            ids = torch.tensor([models.token_ids(tokenizer, p) + models.token_ids(tokenizer, r)])
            alone.append(rm(ids, torch.ones_like(ids)).item())
        assert together.tolist() == pytest.approx(alone, abs=1e-5)
        assert score(rm, tokenizer, prompts, responses, batch_size=3).tolist() == pytest.approx(alone, abs=1e-5)
        # Extra pad columns on either side change nothing.
        pad = tokenizer.pad_token_id
        n = len(prompts)
        ids = torch.cat([torch.full((n, 2), pad), batch["input_ids"], torch.full((n, 3), pad)], dim=1)
        zeros = torch.zeros(n, 5, dtype=torch.long)
        mask = torch.cat([zeros[:, :2], batch["attention_mask"], zeros[:, 2:]], dim=1)
        assert rm(ids, mask).tolist() == pytest.approx(alone, abs=1e-5)
        # The trap this guards against: reading the last column scores a pad for the short rows.
        hidden = rm.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             position_ids=models.position_ids_from_mask(batch["attention_mask"])).last_hidden_state
        naive = rm.head(hidden[:, -1]).squeeze(-1)
        assert (naive - torch.tensor(alone)).abs().max() > 1e-3


# --- training ------------------------------------------------------------------------------------------


def test_training_changes_every_parameter_and_separates_the_pairs(policy_dir, tokenizer, pairs):
    train, held_out = pairs
    rm = RewardModel.from_policy(policy_dir, tokenizer)
    before = {name: p.detach().clone() for name, p in rm.named_parameters()}
    assert any(name.startswith("head") for name in before) and any(name.startswith("backbone") for name in before)
    # rewards read at the last word: after an EOS (the rule for records without ended flags, as TRL) the
    # 1-layer model needs more than 24 steps to separate every held-out pair (0.97 at 24)
    _, metrics = train_reward_model(rm, tokenizer, train, _config(steps=24, append_eos="never"), eval_pairs=held_out)
    for name, p in rm.named_parameters():
        # The final LayerNorm's bias β only shifts every reward by head·β, which cancels in r_w − r_l: its
        # Bradley–Terry gradient is 0 up to rounding (see the next test), and whether Adam turns that rounding
        # into a step depends on the order of a sum. Every other parameter must learn.
        if name != "backbone.ln_f.bias":
            assert not torch.equal(before[name], p), f"{name} did not change"
    assert metrics[-1]["loss"] < 0.5 * metrics[0]["loss"]
    assert metrics[-1]["eval_accuracy"] == 1.0 and pair_accuracy(rm, tokenizer, held_out, append_eos="never") == 1.0
    assert {"loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward", "grad_norm", "learning_rate",
            "epoch"} <= set(metrics[0])
    assert metrics[-1]["margin"] > metrics[0]["margin"]


def test_one_forward_pass_scores_chosen_and_rejected(policy_dir, tokenizer, pairs):
    rm = RewardModel.from_policy(policy_dir, tokenizer)
    calls = []
    rm.backbone.register_forward_hook(lambda module, args, out: calls.append(out.last_hidden_state.shape[0]))
    _, metrics = train_reward_model(rm, tokenizer, pairs[0][:16], _config(steps=2, lr=1e-4))
    assert calls == [16, 16]  # one pass per step over 8 chosen + 8 rejected sequences
    # The logged loss is Eq. 2 on the rewards of that batch.
    rm.eval()
    first = evaluate_reward_model(rm, tokenizer, pairs[0][:4])
    prompts, ended = [p["prompt"] for p in pairs[0][:4]], [True] * 4  # records without flags: EOS after each, as TRL
    chosen = score(rm, tokenizer, prompts, [p["chosen"] for p in pairs[0][:4]], ended=ended)
    rejected = score(rm, tokenizer, prompts, [p["rejected"] for p in pairs[0][:4]], ended=ended)
    assert first["eval_loss"] == pytest.approx(losses.bradley_terry_loss(chosen, rejected).item(), rel=1e-5)
    assert first["eval_margin"] == pytest.approx((chosen - rejected).mean().item(), rel=1e-4, abs=1e-6)


def test_save_and_load_give_identical_scores(policy_dir, tokenizer, pairs, tmp_path):
    rm, _ = train_reward_model(RewardModel.from_policy(policy_dir, tokenizer), tokenizer, pairs[0], _config(steps=3))
    center_rewards(rm, tokenizer, [p["prompt"] for p in pairs[0]], [p["chosen"] for p in pairs[0]])
    rm.save_pretrained(tmp_path / "rm")
    back = RewardModel.from_pretrained(tmp_path / "rm")
    prompts = [p["prompt"] for p in pairs[1]]
    responses = [p["rejected"] for p in pairs[1]]
    assert torch.equal(score(rm, tokenizer, prompts, responses), score(back, tokenizer, prompts, responses))
    assert back.offset.item() == rm.offset.item() != 0.0
    with pytest.raises(ValueError, match="holds no reward model"):
        RewardModel.from_pretrained(policy_dir)


def test_center_rewards_shifts_but_keeps_every_preference(policy_dir, tokenizer, pairs):
    rm = RewardModel.from_policy(policy_dir, tokenizer)
    prompts = [p["prompt"] for p in pairs[1]] * 2
    responses = [p["chosen"] for p in pairs[1]] + [p["rejected"] for p in pairs[1]]
    before = score(rm, tokenizer, prompts, responses)
    accuracy = pair_accuracy(rm, tokenizer, pairs[1])
    offset = center_rewards(rm, tokenizer, prompts, responses)
    after = score(rm, tokenizer, prompts, responses)
    assert offset == pytest.approx(before.mean().item(), rel=1e-5)
    assert after.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert (after - before).tolist() == pytest.approx([-offset] * len(after), abs=1e-5)
    assert pair_accuracy(rm, tokenizer, pairs[1]) == accuracy


def test_a_shift_of_every_reward_gets_no_bradley_terry_gradient(policy_dir, tokenizer, pairs):
    rm = RewardModel.from_policy(policy_dir, tokenizer)
    chosen, rejected = _pair_rewards(rm, tokenizer, pair_token_ids(tokenizer, pairs[0][:16]))
    grads = {}
    for c in (0.0, 0.5):
        loss = losses.bradley_terry_loss(chosen, rejected) + c * ((chosen + rejected) ** 2).mean()
        grads[c] = dict(zip([n for n, _ in rm.named_parameters()],
                            torch.autograd.grad(loss, list(rm.parameters()), retain_graph=True)))
    # ln_f's bias β adds head·β to every reward: Eq. 2 cannot see it (the head has no bias for this reason).
    shift = grads[0.0]["backbone.ln_f.bias"].abs().max().item()
    assert shift < 1e-6 * grads[0.0]["backbone.ln_f.weight"].abs().max().item()
    # The centring penalty c · E[(r_w + r_l)²] does see the shift.
    assert grads[0.5]["backbone.ln_f.bias"].abs().max().item() > 1e-3


def test_center_rewards_coefficient_adds_its_penalty(policy_dir, tokenizer, pairs):
    runs = {}
    for c in (0.0, 0.5):
        rm = RewardModel.from_policy(policy_dir, tokenizer)
        runs[c] = train_reward_model(rm, tokenizer, pairs[0], _config(steps=1, center_rewards_coefficient=c))[1][0]
    # Same first batch and weights: the same rewards; only the penalty c · E[(r_w + r_l)²] ≥ 0 differs.
    assert runs[0.5]["margin"] == runs[0.0]["margin"] and runs[0.5]["loss"] > runs[0.0]["loss"]


def test_resume_and_seed_reproduce_the_uninterrupted_run(policy_dir, tokenizer, pairs, tmp_path):
    config = _config(steps=8, batch_size=10, save_every=3, warmup_steps=2)  # 48 pairs: 5 batches per epoch
    full_model, full = train_reward_model(RewardModel.from_policy(policy_dir, tokenizer), tokenizer, pairs[0], config)
    assert train_reward_model(RewardModel.from_policy(policy_dir, tokenizer), tokenizer, pairs[0], config)[1] == full

    class Interrupt(Exception):
        pass

    def stop(step, row):
        if step == 7:
            raise Interrupt  # the checkpoint holds step 6

    with pytest.raises(Interrupt):
        train_reward_model(RewardModel.from_policy(policy_dir, tokenizer), tokenizer, pairs[0], config,
                           callback=stop, checkpoint_dir=tmp_path)
    fresh = RewardModel.from_policy(policy_dir, tokenizer, seed=9)  # another head: the checkpoint overwrites it
    resumed_model, resumed = train_reward_model(fresh, tokenizer, pairs[0], config, checkpoint_dir=tmp_path)
    assert resumed == full
    for (name, a), b in zip(full_model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_bad_inputs_raise_naming_the_argument(policy_dir, tokenizer):
    rm = RewardModel.from_policy(policy_dir, tokenizer)
    good = {"prompt": "a", "chosen": "b", "rejected": "c"}
    for bad, message in (({"prompt": "a"}, "row 1, field 'chosen': is missing"),
                         ({**good, "chosen": None}, "row 1, field 'chosen': must be a str, got NoneType"),
                         ({**good, "rejected": "   "}, "row 1, field 'rejected': is empty"),
                         ({**good, "rejected": "b"}, r"row 1, field 'rejected': equals chosen")):
        with pytest.raises(ValueError, match=message):  # the pairs' one validation path, before any training
            train_reward_model(rm, tokenizer, [good, bad])
    with pytest.raises(ValueError, match=r"row 0, field 'prompt': is empty"):
        pair_accuracy(rm, tokenizer, [{"prompt": "", "chosen": "b", "rejected": "c"}])
    with pytest.raises(ValueError, match=r"pairs\[1\]: prompt \+ response is \d+ tokens, over the reward model's "
                                         r"n_positions \(128\)"):
        train_reward_model(rm, tokenizer, [good, {**good, "chosen": " long" * 200}])
    with pytest.raises(ValueError, match="model must be a RewardModel"):
        train_reward_model(models.load_policy(policy_dir, tokenizer), tokenizer, [], _config())
    with pytest.raises(ValueError, match="center_rewards_coefficient"):
        RewardConfig(center_rewards_coefficient=-1.0)
    with pytest.raises(ValueError, match="over the model's n_positions"):
        rm(torch.ones(1, 129, dtype=torch.long), torch.ones(1, 129, dtype=torch.long))


def test_presets_hold_a_reward_config_of_whole_epochs():
    for preset in PRESETS.values():
        config = preset.reward_model
        assert isinstance(config, RewardConfig)
        assert config.steps is None  # as many steps as `epochs` passes over the pairs take
    ci = PRESETS["ci"].reward_model
    per_epoch = math.ceil(100 / ci.batch_size)
    assert ci.total_steps(100) == math.ceil(ci.epochs * per_epoch)
    half = get_preset("ci", {"reward_model.epochs": 0.5, "reward_model.batch_size": 8}, verbose=False).reward_model
    assert (half.epochs, half.batch_size, half.lr) == (0.5, 8, ci.lr)
    assert half.total_steps(100) == math.ceil(0.5 * math.ceil(100 / 8)) == 7
