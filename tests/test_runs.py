"""The frontier's alignment runs (runs.py) on a tiny run folder: each a stage, trained from π_ref, evaluated on two
disjoint prompt sets with several samples a prompt; PPO-GT on the true reward, DPO/IPO/baselines on the pairs,
Best-of-N on π_ref's samples; π_ref's own evaluation."""

import dataclasses
import json
import math

import pytest
from conftest import TINY_RUN, hash_reward, tiny_reference

from dpo_edu import baselines, pipeline, runs
from dpo_edu.presets import get_preset
from dpo_edu.reward_model import RewardModel
from dpo_edu.stages import Stage

PROMPTS = {"select": ["The movie was", "I"], "report": ["This film is a", "Acting", "What a"]}
SIZES = {**TINY_RUN, "frontier.samples_per_prompt": 2, "dpo.steps": 2, "dpo.batch_size": 4,
         "ppo.steps": 2, "ppo.batch_size": 8, "ppo.mini_batch_size": 4, "ppo.ppo_epochs": 1,
         "preferred_ft.steps": 2, "preferred_ft.batch_size": 4, "unlikelihood.steps": 2, "unlikelihood.batch_size": 4}


def _share(alphabet: str):
    """A toy ground-truth reward: the share of the text's characters drawn from ``alphabet``."""
    return lambda texts: [sum(c in alphabet for c in t) / max(1, len(t)) for t in texts]


@pytest.fixture
def tiny_run(tmp_path, tiny_lm, one_thread):
    """(preset, π_ref, pairs) of a tiny run folder."""
    preset = get_preset("ci", SIZES, verbose=False)
    ref = tiny_reference(tiny_lm, tmp_path)
    return preset, ref, pipeline.preference_pairs(preset, tmp_path, ref, hash_reward)


def _per_prompt(row) -> dict:
    return {split: {name: len(values) for name, values in columns.items()} for split, columns in
            row["eval/prompts"].items()}


@pytest.mark.parametrize("steps, n_evals, points", [(64, 3, [22, 44, 64]), (336, 3, [112, 224, 336]), (2, 5, [1, 2])])
def test_a_run_is_evaluated_n_times_the_last_at_its_final_step(steps, n_evals, points):
    every = runs.eval_every(steps, n_evals)
    assert sorted({*range(every, steps + 1, every), steps}) == points  # as train_loop evaluates


def test_the_two_prompt_sets_are_disjoint_held_out_prefixes(tiny_lm, one_thread):
    preset = get_preset("ci", {**TINY_RUN, "frontier.select_prompts": 3, "frontier.report_prompts": 4},
                        verbose=False)
    prompts = runs.eval_splits(preset, tiny_lm[1], seed=0)
    assert [len(prompts["select"]), len(prompts["report"])] == [3, 4]
    assert not set(prompts["select"]) & set(prompts["report"])
    _, held_out = pipeline.imdb_splits(preset, 0)
    assert all(any(review.text.startswith(p) for review in held_out) for p in prompts["select"] + prompts["report"])


def test_reference_is_evaluated_like_every_run_at_no_kl(tiny_run, tmp_path):
    preset, ref, _ = tiny_run
    done = runs.reference_eval(preset, tmp_path, ref, hash_reward, PROMPTS)
    (row,) = done.metrics
    assert row["step"] == 0 and row["eval/kl"] == 0 and _per_prompt(row) == {
        "select": {"reward": 2, "kl": 2, "length": 2}, "report": {"reward": 3, "kl": 3, "length": 3}}
    assert row["eval/reward"] == pytest.approx(sum(row["eval/prompts"]["report"]["reward"]) / 3)
    assert [s["prompt"] for s in done.samples] == PROMPTS["report"]


def test_ppo_gt_trains_on_the_true_reward_and_reruns_when_the_reward_changes(tiny_run, tmp_path, capsys):
    preset, ref, _ = tiny_run
    vowels, consonants = _share("aeiou"), _share("bcdfghjklmnpqrstvwxz")
    config = dataclasses.replace(preset.ppo, target_kl=3.0, eval_every=2)
    train_prompts = PROMPTS["report"] * 3

    def run(reward):
        return runs.online_run(preset, tmp_path, ref, reward, PROMPTS, train_prompts, config, "runs/ppo_gt/t3",
                            "PPO-GT t3")

    first = run(vowels)
    assert first.model is None and first.stage.folder == tmp_path / "runs/ppo_gt/t3"
    assert [row["step"] for row in first.metrics] == [1, 2] and "eval/rm_score" not in first.metrics[-1]
    assert _per_prompt(first.metrics[-1])["report"] == {"reward": 3, "kl": 3, "length": 3}
    samples = first.samples
    assert [s["prompt"] for s in samples] == PROMPTS["report"]  # the report set's, each prompt's first sample
    assert [s["reward"] for s in samples] == pytest.approx(vowels([s["prompt"] + s["completion"] for s in samples]))
    assert first.cost["backward_tokens"] > 0
    settings = json.loads((first.stage.folder / "settings.json").read_text())
    assert settings["reward_model"] is None and settings["ppo"]["target_kl"] == 3.0
    assert settings["sft"] == ref.stage.settings and settings["samples_per_prompt"] == 2
    assert run(vowels).metrics == first.metrics and "PPO-GT t3: reusing" in capsys.readouterr().out
    other = run(consonants)
    assert "PPO-GT t3: settings changed (reward); building" in capsys.readouterr().out
    assert other.metrics[0]["objective/scores"] != first.metrics[0]["objective/scores"]


def test_ppo_on_a_reward_model_reports_its_score_beside_the_truth(tiny_run, tmp_path):
    preset, ref, _ = tiny_run
    rm = RewardModel.from_policy(ref.policy, ref.tokenizer, seed=1).eval()
    trained = pipeline.Trained(rm, [], [], {}, Stage(tmp_path / "reward_model", {"rm": 1}))
    config = dataclasses.replace(preset.ppo, target_kl=3.0, eval_every=2)
    run = runs.online_run(preset, tmp_path, ref, hash_reward, PROMPTS, PROMPTS["report"] * 3, config, "runs/ppo/t3",
                       "PPO t3", reward_model=trained)
    last = run.metrics[-1]  # over-optimisation's gauge: r_φ's mean score of the same samples
    assert last["eval/rm_score"] == pytest.approx(sum(last["eval/prompts"]["report"]["rm_score"]) / 3, rel=1e-5)
    assert json.loads((run.stage.folder / "settings.json").read_text())["reward_model"] == {"rm": 1}


def test_dpo_and_ipo_runs_on_the_pairs_record_their_loss(tiny_run, tmp_path, capsys):
    preset, ref, pairs = tiny_run
    beta = 0.1

    def run(loss_type, folder="runs/dpo/b"):
        config = dataclasses.replace(preset.dpo, beta=beta, loss_type=loss_type, eval_every=2)
        return runs.offline_run(preset, tmp_path, ref, pairs, hash_reward, PROMPTS, config, folder, folder)

    sigmoid, ipo = run("sigmoid"), run("ipo", "runs/ipo/b")
    for done, loss_type in ((sigmoid, "sigmoid"), (ipo, "ipo")):
        settings = json.loads((done.stage.folder / "settings.json").read_text())
        assert settings["method"] == "DPOConfig" and settings["config"]["loss_type"] == loss_type
        assert settings["pairs"] == pairs.stage.settings
        assert [row["step"] for row in done.metrics] == [1, 2] and "eval/prompts" in done.metrics[-1]
    # step 1: π_θ = π_ref, every log-ratio 0: −log σ(0) = log 2 for DPO, (0 − 1/(2β))² for IPO
    assert sigmoid.metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert ipo.metrics[0]["loss"] == pytest.approx((1 / (2 * beta)) ** 2, abs=1e-3)
    capsys.readouterr()
    assert run("sigmoid").metrics == sigmoid.metrics and "reusing" in capsys.readouterr().out
    run("ipo")  # another loss in the same folder: built again, saying why
    assert "settings changed (config.loss_type); building" in capsys.readouterr().out


@pytest.mark.parametrize("config_of", [lambda p: p.preferred_ft, lambda p: dataclasses.replace(p.unlikelihood,
                                                                                                 alpha=0.5)])
def test_the_paper_baselines_train_on_the_pairs_and_are_evaluated_alike(tiny_run, tmp_path, config_of):
    preset, ref, pairs = tiny_run
    config = dataclasses.replace(config_of(preset), eval_every=1)
    done = runs.offline_run(preset, tmp_path, ref, pairs, hash_reward, PROMPTS, config, "runs/baseline/x", "x")
    assert [row["step"] for row in done.metrics] == [1, 2]
    assert all(_per_prompt(row)["select"]["reward"] == 2 for row in done.metrics)
    assert json.loads((done.stage.folder / "settings.json").read_text())["method"] == type(config).__name__
    assert done.metrics[-1]["eval/kl"] > 0  # trained away from π_ref
    assert isinstance(config, (baselines.PreferredFTConfig, baselines.UnlikelihoodConfig))


def test_best_of_n_picks_by_the_reward_model_at_each_n(tiny_run, tmp_path):
    preset, ref, _ = tiny_run
    rm = RewardModel.from_policy(ref.policy, ref.tokenizer, seed=1).eval()
    trained = pipeline.Trained(rm, [], [], {}, Stage(tmp_path / "reward_model", {"rm": 1}))
    done = runs.best_of_n_run(preset, tmp_path, ref, hash_reward, PROMPTS, trained, (1, 2, 4), 0, "runs/bon/s0",
                              "BoN")
    assert [row["step"] for row in done.metrics] == [1, 2, 4]  # one row a N
    first, last = done.metrics[0], done.metrics[-1]
    assert first["eval/kl"] == 0 and first["eval/kl_bound"] == 0  # N = 1 is π_ref itself
    assert last["eval/kl_bound"] == pytest.approx(math.log(4) - 3 / 4)
    assert last["eval/kl"] > 0 and _per_prompt(last) == {
        "select": {"reward": 2, "kl": 2, "length": 2}, "report": {"reward": 3, "kl": 3, "length": 3}}
    assert json.loads((done.stage.folder / "settings.json").read_text())["ns"] == [1, 2, 4]
