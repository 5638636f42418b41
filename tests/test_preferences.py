"""dpo_edu.preferences: k samples per prefix → every pair labelled by the reward; and the run folder's
``samples/`` and ``pairs/`` stages that keep them (pipeline.preference_pairs)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import Counter

import pytest
import torch

from dpo_edu import data, models, pipeline, preferences, sampling
from dpo_edu.preferences import label_pairs, make_preference_data, sample_completions, split_by_prompt
from conftest import TINY_RUN, hash_reward, tiny_reference

from dpo_edu.presets import PRESETS, get_preset
from dpo_edu.sampling import Generation
from dpo_edu.stages import Stage

PROMPTS = ["The film", "I watched this", "Bad", "One of the best", "What a", "This movie was"]



def salted_reward(texts):
    """Another continuous fake reward, unrelated to ``hash_reward``."""
    return hash_reward(["salt:" + t for t in texts])


def count_e(texts):
    """A fake reward whose labels can be checked by eye: the number of letters 'e'."""
    return torch.tensor([float(t.count("e")) for t in texts])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Matrices this small run fastest on one thread; two threads on a busy 2-core machine spin for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



GENERATION = Generation(max_new_tokens=6, temperature=1.0)


def _build(tiny_lm, reward=hash_reward, prompts=PROMPTS, seed=0):
    """Sample 4 completions per prompt and label every pair, without a run folder."""
    policy, tokenizer = tiny_lm
    completions, ended = sample_completions(policy, tokenizer, prompts, 4, GENERATION, seed=seed, batch_size=8)
    return make_preference_data(prompts, completions, reward, ended=ended)



def preference_pairs(tiny_lm, run_dir, overrides=None, reward=hash_reward, seed=0, ref=None) -> pipeline.Pairs:
    preset = get_preset("ci", {**TINY_RUN, **(overrides or {})}, verbose=False)
    ref = ref if ref is not None else tiny_reference(tiny_lm, run_dir)
    return pipeline.preference_pairs(preset, run_dir, ref, reward, seed=seed)


def count_sampling(monkeypatch) -> list[int]:
    """The rows of each call of ``generate`` by preferences.sample_completions, appended to a list."""
    calls, generate = [], preferences.generate

    def counting(model, tokenizer, prompts, *args, **kwargs):
        calls.append(len(prompts))
        return generate(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(preferences, "generate", counting)
    return calls


def key(pair: dict) -> str:
    return json.dumps(pair, sort_keys=True)


# --- sampling and labelling ----------------------------------------------------------------------------


def test_sample_completions_gives_k_per_prompt_and_a_seed_fixes_them(tiny_lm):
    policy, tok = tiny_lm
    generation = Generation(max_new_tokens=5)
    first, ended = sample_completions(policy, tok, PROMPTS, k=4, generation=generation, seed=1, batch_size=8)
    again = sample_completions(policy, tok, PROMPTS, k=4, generation=generation, seed=1, batch_size=8)
    other = sample_completions(policy, tok, PROMPTS, k=4, generation=generation, seed=2, batch_size=8)
    assert len(first) == len(PROMPTS) and all(len(group) == 4 for group in first)
    assert all(isinstance(c, str) for group in first for c in group)
    assert (first, ended) == again and first != other[0]
    assert all(len(set(group)) > 1 for group in first)  # the k copies are independent samples, not one
    # ended: whether the row's last sampled token is EOS, as generate's ids say
    texts, ids, mask = sampling.generate(policy, tok, [p for p in PROMPTS for _ in range(4)], 5, seed=1,
                                         batch_size=8, return_ids=True)
    last = [row[m.bool()][-1].item() for row, m in zip(ids, mask)]
    assert [stop for group in ended for stop in group] == [t == tok.eos_token_id for t in last]


def test_four_completions_give_six_pairs_per_prompt_each_pair_once(tiny_lm):
    pairs, scored, summary = _build(tiny_lm)
    assert summary.skipped == {} and summary.n_candidate_pairs == 6 * len(PROMPTS) == summary.n_pairs
    assert (summary.n_prompts, summary.k) == (len(PROMPTS), 4)
    assert Counter(p["prompt_id"] for p in pairs) == {i: 6 for i in range(len(PROMPTS))}
    assert [row["prompt"] for row in scored] == PROMPTS and [row["prompt_id"] for row in scored] == [0, 1, 2, 3, 4, 5]
    for i, prompt in enumerate(PROMPTS):
        rows = [p for p in pairs if p["prompt_id"] == i]
        assert all(p["prompt"] == prompt for p in rows)
        unordered = [frozenset((p["chosen"], p["rejected"])) for p in rows]
        expected = {frozenset(c) for c in itertools.combinations(scored[i]["completions"], 2)}
        assert len(set(unordered)) == 6 and set(unordered) == expected  # every pair, each once
        assert scored[i]["rewards"] == hash_reward([prompt + c for c in scored[i]["completions"]]).tolist()
    for p in pairs:
        assert p["chosen_reward"] > p["rejected_reward"]
        # the reward scored prompt ⊕ completion, and the record carries exactly that score
        assert p["chosen_reward"] == hash_reward([p["prompt"] + p["chosen"]]).item()
        assert p["rejected_reward"] == hash_reward([p["prompt"] + p["rejected"]]).item()
    flat = torch.tensor([r for row in scored for r in row["rewards"]], dtype=torch.float64)
    assert summary.mean_reward == pytest.approx(flat.mean().item()) and summary.std_reward == pytest.approx(
        flat.std().item())
    assert summary.mean_margin == pytest.approx(sum(p["chosen_reward"] - p["rejected_reward"] for p in pairs) / 36)
    assert summary.mean_margin > 0 and 0 < summary.mean_reward < 1


def test_labels_are_exact_with_a_letter_counting_reward():
    prompts = ["Here", "x"]
    completions = [["a", "ee", "eee", "b e"], ["eeee", "e", "zz", "ee"]]
    pairs, report = label_pairs(prompts, completions, count_e)
    assert report.total == 12 and report.skipped == {} and len(pairs) == 12  # all e-counts differ
    for p in pairs:
        assert p["chosen_reward"] == (p["prompt"] + p["chosen"]).count("e")
        assert p["rejected_reward"] == (p["prompt"] + p["rejected"]).count("e")
        assert p["chosen"].count("e") > p["rejected"].count("e")
    first = {(p["chosen"], p["rejected"]) for p in pairs if p["prompt_id"] == 0}
    assert first == {("ee", "a"), ("eee", "a"), ("b e", "a"), ("eee", "ee"), ("ee", "b e"), ("eee", "b e")}
    # without the prompt, "Here" (two e's) no longer counts; the order of the pairs is the same here
    alone, _ = label_pairs(prompts, completions, count_e, score_prompt=False)
    assert [p["chosen_reward"] for p in alone if p["prompt_id"] == 0] == [
        p["chosen_reward"] - 2 for p in pairs if p["prompt_id"] == 0]


def test_ties_and_empty_completions_are_counted_not_dropped_silently():
    prompts = ["p", "q", "r"]
    completions = [["ab", "cd", "ef", "gh"],  # counts 0 0 1 0: the three pairs among ab, cd, gh tie
                   ["e", "e", "ee", "xx"],  # "e" twice: an identical pair, a tie
                   ["", "e", "ee", "eee"]]  # "" loses to each of the three others: dropped, it is empty
    pairs, report = label_pairs(prompts, completions, count_e)
    tie = "tie: equal scores or identical completions"
    assert report.total == 18 and report.skipped == {tie: 4, "rejected is empty": 3}
    assert len(pairs) == report.kept == 11
    assert report.skipped_rows == [0, 2, 4, 6, 12, 13, 14]  # candidate-pair indices, in order
    assert "skipped 4: tie" in str(report) and "skipped 3: rejected is empty" in str(report)
    assert all(p["chosen"] and p["rejected"] for p in pairs)


def test_a_real_sentiment_reward_labels_pairs():
    from dpo_edu.sentiment import TfidfSentiment

    reviews = data.load_imdb(n=300, verbose=False)
    reward = TfidfSentiment.fit([r.text for r in reviews], [r.label for r in reviews], verbose=False)
    completions = [[" a wonderful, moving film.", " a boring waste of time.", " great acting.", " awful."]]
    pairs, report = label_pairs(["This movie was"], completions, reward)
    assert report.total == 6 and len(pairs) == 6
    top = Counter(p["chosen"] for p in pairs).most_common(1)[0][0]
    assert top in (" a wonderful, moving film.", " great acting.")  # positive beats negative


def test_bad_arguments_name_the_argument(tiny_lm):
    policy, tok = tiny_lm
    with pytest.raises(ValueError, match="k must be"):
        sample_completions(policy, tok, PROMPTS, k=1)
    with pytest.raises(ValueError, match="prompts"):
        sample_completions(policy, tok, [], k=4)
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        label_pairs(["a", ""], [["x", "y"], ["x", "y"]], count_e)
    with pytest.raises(ValueError, match="prompts and completions"):
        label_pairs(["a"], [["x", "y"], ["x", "y"]], count_e)
    with pytest.raises(ValueError, match="3 scores for 2 texts"):
        label_pairs(["a"], [["x", "y"]], lambda texts: torch.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        label_pairs(["a"], [["x", "y"]], lambda texts: torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="reward must be callable"):
        label_pairs(["a"], [["x", "y"]], "tfidf")


# --- the run folder's samples/ and pairs/ stages ---------------------------------------------------------------


def test_finished_stages_are_read_back_and_sample_nothing(tiny_lm, tmp_path, monkeypatch, capsys):
    calls = count_sampling(monkeypatch)
    first = preference_pairs(tiny_lm, tmp_path)
    assert calls == [6 * 4]  # the 6 prefixes × 4 completions, sampled once
    out = capsys.readouterr().out
    assert "π_ref's samples: new; building" in out and "preference pairs: new; building" in out
    samples, labelled = tmp_path / "samples", tmp_path / "pairs"
    stage_files = {"contents.json", "events.jsonl", "settings.json"}
    assert {f.name for f in samples.iterdir()} == {"samples.jsonl", *stage_files}
    assert {f.name for f in labelled.iterdir()} == {"pairs.jsonl", "scored.jsonl", "summary.json", *stage_files}
    sampling = json.loads((samples / "settings.json").read_text())
    ref_settings = tiny_reference(tiny_lm, tmp_path).stage.settings
    assert sampling == {"format": 2, "sft": ref_settings, "prompts": sampling["prompts"], "seed": 0, "completions": 4,
                        "batch_size": 8, "generation": {"max_new_tokens": 6, "temperature": 1.0}}
    assert json.loads((labelled / "settings.json").read_text()) == {
        "samples": sampling, "reward": preferences.reward_fingerprint(hash_reward), "eval_prompts": 2}
    assert first.stage == Stage(labelled, json.loads((labelled / "settings.json").read_text()))
    # the stages hold exactly what sample_completions and make_preference_data give
    rows = data.load_jsonl(samples / "samples.jsonl")
    prompts = [row["prompt"] for row in rows]
    policy, tokenizer = tiny_lm
    preset = get_preset("ci", TINY_RUN, verbose=False)
    completions, ended = sample_completions(policy, tokenizer, prompts, 4, preset.generation, seed=0, batch_size=8)
    assert len(prompts) == 6 and [row["completions"] for row in rows] == completions
    assert [row["ended"] for row in rows] == ended
    pairs, scored, summary = make_preference_data(prompts, completions, hash_reward, ended=ended)
    assert data.load_jsonl(labelled / "pairs.jsonl") == pairs  # round trip, rewards exact
    assert first.scored == scored and first.summary == summary
    assert sorted(map(key, first.train + first.eval)) == sorted(map(key, pairs))
    assert len({p["prompt"] for p in first.eval}) == 2 and len({p["prompt"] for p in first.train}) == 4
    assert not {p["prompt"] for p in first.train} & {p["prompt"] for p in first.eval}
    calls.clear()
    again = preference_pairs(tiny_lm, tmp_path)
    assert calls == []  # nothing sampled
    out = capsys.readouterr().out
    assert "π_ref's samples: reusing" in out and "preference pairs: reusing" in out
    assert again[:4] == first[:4] and again.stage == first.stage
    (samples / "settings.json").unlink()  # no settings: an unfinished stage, sampled again
    third = preference_pairs(tiny_lm, tmp_path)
    assert calls == [6 * 4] and third[:4] == first[:4]
    assert "preference pairs: reusing" in capsys.readouterr().out  # the same samples: the labels stand
    # issue 15: pairs.jsonl cut at a line boundary to half its rows was trusted on settings.json alone
    lines = (labelled / "pairs.jsonl").read_text().splitlines(keepends=True)
    (labelled / "pairs.jsonl").write_text("".join(lines[: len(lines) // 2]))
    fourth = preference_pairs(tiny_lm, tmp_path)
    assert (f"preference pairs: pairs.jsonl holds {len(lines) // 2} rows, {len(lines)} when built; building"
            in capsys.readouterr().out)
    assert fourth[:4] == first[:4] and calls == [6 * 4]  # labelled again from the samples, which were intact


@pytest.mark.parametrize("change, said", [
    (dict(seed=1), "prompts, seed"),  # another seed splits the reviews another way: other prefixes too
    (dict(overrides={"generation.temperature": 0.7}), "generation.temperature"),
    (dict(overrides={"generation.max_new_tokens": 5}), "generation.max_new_tokens"),
    (dict(overrides={"pairs.completions": 3}), "completions"),
    (dict(overrides={"pairs.batch_size": 4}), "batch_size"),
])
def test_a_changed_setting_samples_again_and_says_which(tiny_lm, tmp_path, monkeypatch, capsys, change, said):
    first = preference_pairs(tiny_lm, tmp_path)
    calls = count_sampling(monkeypatch)
    capsys.readouterr()
    second = preference_pairs(tiny_lm, tmp_path, **change)
    assert len(calls) == 1
    out = capsys.readouterr().out
    assert f"π_ref's samples: settings changed ({said}); building" in out
    dotted = ", ".join(f"samples.{name}" for name in said.split(", "))
    assert f"preference pairs: settings changed ({dotted}); building" in out
    assert second.scored != first.scored
    sampling = json.loads((tmp_path / "samples" / "settings.json").read_text())  # the files hold the new run
    assert json.loads((tmp_path / "pairs" / "settings.json").read_text())["samples"] == sampling
    preset = get_preset("ci", {**TINY_RUN, **change.get("overrides", {})}, verbose=False)
    assert (sampling["seed"], sampling["completions"], sampling["batch_size"], sampling["generation"]) == (
        change.get("seed", 0), preset.pairs.completions, preset.pairs.batch_size,
        dataclasses.asdict(preset.generation))
    assert second.summary.k == preset.pairs.completions
    assert all(len(row["completions"]) == preset.pairs.completions for row in second.scored)


def test_new_prompts_or_a_new_reference_sample_again(tiny_lm, tmp_path, monkeypatch, capsys):
    first = preference_pairs(tiny_lm, tmp_path)
    calls = count_sampling(monkeypatch)
    capsys.readouterr()
    fewer = preference_pairs(tiny_lm, tmp_path, {"pairs.prompts": 5})
    assert "π_ref's samples: settings changed (prompts); building" in capsys.readouterr().out
    assert calls == [5 * 4] and fewer.summary.n_prompts == 5
    assert [row["prompt"] for row in fewer.scored] == [row["prompt"] for row in first.scored][:5]
    _, tokenizer = tiny_lm
    other = models.build_model(get_preset("ci", TINY_RUN, verbose=False).model, tokenizer, seed=1)  # other weights
    retrained = tiny_reference(tiny_lm, tmp_path, policy=other.eval(), seed=1)  # as SFT with another seed leaves it
    again = preference_pairs(tiny_lm, tmp_path, {"pairs.prompts": 5}, ref=retrained)
    assert "π_ref's samples: settings changed (sft.seed); building" in capsys.readouterr().out
    assert calls == [20, 20] and again.scored != fewer.scored
    assert [row["prompt"] for row in again.scored] == [row["prompt"] for row in fewer.scored]


def test_a_new_reward_relabels_the_saved_samples_without_sampling(tiny_lm, tmp_path, monkeypatch, capsys):
    first = preference_pairs(tiny_lm, tmp_path)
    samples = (tmp_path / "samples" / "samples.jsonl").read_text()
    calls = count_sampling(monkeypatch)
    capsys.readouterr()
    relabelled = preference_pairs(tiny_lm, tmp_path, reward=salted_reward)
    out = capsys.readouterr().out
    assert calls == [] and "π_ref's samples: reusing" in out
    assert "preference pairs: settings changed (reward); building" in out
    assert (tmp_path / "samples" / "samples.jsonl").read_text() == samples  # the same samples
    assert [row["completions"] for row in relabelled.scored] == [row["completions"] for row in first.scored]
    for row in relabelled.scored:
        assert row["rewards"] == salted_reward([row["prompt"] + c for c in row["completions"]]).tolist()
    assert relabelled.summary.n_pairs == first.summary.n_pairs == 36
    for p in relabelled.train + relabelled.eval:
        assert p["chosen_reward"] == salted_reward([p["prompt"] + p["chosen"]]).item() > p["rejected_reward"]
        assert p["rejected_reward"] == salted_reward([p["prompt"] + p["rejected"]]).item()
    assert sorted(map(key, relabelled.train + relabelled.eval)) != sorted(map(key, first.train + first.eval))
    assert json.loads((tmp_path / "pairs" / "settings.json").read_text())["reward"] == (
        preferences.reward_fingerprint(salted_reward))
    preference_pairs(tiny_lm, tmp_path, reward=salted_reward)
    assert calls == [] and "preference pairs: reusing" in capsys.readouterr().out


def test_reward_fingerprint_tells_rewards_apart_by_their_scores():
    assert preferences.reward_fingerprint(hash_reward) == preferences.reward_fingerprint(
        lambda texts: hash_reward(texts).tolist())  # the same scores, another callable
    assert preferences.reward_fingerprint(hash_reward) != preferences.reward_fingerprint(count_e)
    assert preferences.reward_fingerprint(count_e) == preferences.reward_fingerprint(
        lambda texts: count_e(texts) + 1e-7)  # rounded to 1e-5
    assert preferences.reward_fingerprint(count_e) != preferences.reward_fingerprint(
        lambda texts: count_e(texts) + 1e-3)


def test_deterministic_for_a_seed_without_a_run_folder(tiny_lm):
    first, scored, s1 = _build(tiny_lm)
    again, scored_again, s2 = _build(tiny_lm)
    assert first == again and scored == scored_again and s1 == s2
    assert _build(tiny_lm, seed=1)[1] != scored


def test_split_by_prompt_keeps_each_prompts_pairs_together(tiny_lm):
    pairs, _, _ = _build(tiny_lm)
    train, held_out = split_by_prompt(pairs, eval_size=2, seed=0)
    assert len(train) + len(held_out) == len(pairs) and len(held_out) == 12
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held_out}
    assert split_by_prompt(pairs, eval_size=2, seed=0) == (train, held_out)


def test_every_preset_names_the_preference_sizes():
    for preset in PRESETS.values():
        assert preset.pairs.completions == 4  # the paper's four completions per prefix
        assert preset.pairs.batch_size >= 1 and 0 < preset.pairs.eval_prompts < preset.pairs.prompts
    assert PRESETS["ci"].pairs.prompts <= PRESETS["cpu"].pairs.prompts <= PRESETS["gpt2"].pairs.prompts
    with pytest.raises(ValueError, match=r"eval_prompts \(6\) must be < prompts \(6\)"):
        get_preset("ci", {**TINY_RUN, "pairs.eval_prompts": 6}, verbose=False)


def test_no_surviving_pair_is_an_error_and_duplicates_are_counted():
    constant = lambda texts: torch.full((len(texts),), 0.5)  # noqa: E731  every pair a tie
    with pytest.raises(ValueError, match=r"no preference pair survived labelling: 6 candidates, skipped"):
        make_preference_data(["p"], [["a", "b", "c", "d"]], constant)
    by_length = lambda texts: torch.tensor([float(len(t)) for t in texts])  # noqa: E731
    pairs, _, summary = make_preference_data(["p"], [["a good one", "bad", "bad", "fine"]], by_length)
    # ("a good one", "bad") twice, ("fine", "bad") twice: "bad" sampled twice; ("bad", "bad") is skipped
    assert summary.n_pairs == len(pairs) == 5 and summary.duplicates == 2
    assert "duplicates 2" in str(summary)
