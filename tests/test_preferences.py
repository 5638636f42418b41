"""dpo_edu.preferences: k samples per prefix → every pair labelled by the reward, cached in the run folder."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter

import pytest
import torch

from dpo_edu import data, models, preferences
from dpo_edu.preferences import build_preference_data, label_pairs, sample_completions, split_by_prompt
from dpo_edu.presets import PRESETS, get_preset

PROMPTS = ["The film", "I watched this", "Bad", "One of the best", "What a", "This movie was"]


def hash_reward(texts):
    """A continuous fake reward in [0, 1): distinct texts practically never tie."""
    return torch.tensor([int(hashlib.sha256(t.encode()).hexdigest()[:12], 16) / 16**12 for t in texts])


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


@pytest.fixture(scope="module")
def tiny(one_thread):
    """``(policy, tokenizer)``: a 2-layer GPT-2 with a 300-token BPE trained on 200 short reviews (~1 s)."""
    texts = [r.text[:300] for r in data.load_imdb(n=200, verbose=False)]
    preset = get_preset("ci", verbose=False, n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=300)
    tokenizer = models.train_tokenizer(texts, preset.vocab_size, model_max_length=preset.n_positions)
    return models.build_model(preset, tokenizer, seed=0).eval(), tokenizer


SETTINGS = dict(k=4, max_new_tokens=6, temperature=1.0, seed=0, batch_size=8, verbose=False)


def _build(tiny, reward=hash_reward, **overrides):
    policy, tokenizer = tiny
    return build_preference_data(policy, tokenizer, PROMPTS, reward, **{**SETTINGS, **overrides})


# --- sampling and labelling ----------------------------------------------------------------------------


def test_sample_completions_gives_k_per_prompt_and_a_seed_fixes_them(tiny):
    policy, tok = tiny
    first = sample_completions(policy, tok, PROMPTS, k=4, max_new_tokens=5, seed=1, batch_size=8)
    again = sample_completions(policy, tok, PROMPTS, k=4, max_new_tokens=5, seed=1, batch_size=8)
    other = sample_completions(policy, tok, PROMPTS, k=4, max_new_tokens=5, seed=2, batch_size=8)
    assert len(first) == len(PROMPTS) and all(len(group) == 4 for group in first)
    assert all(isinstance(c, str) for group in first for c in group)
    assert first == again and first != other
    assert all(len(set(group)) > 1 for group in first)  # the k copies are independent samples, not one


def test_four_completions_give_six_pairs_per_prompt_each_pair_once(tiny, tmp_path):
    pairs, summary = _build(tiny, run_dir=tmp_path)
    samples = data.load_jsonl(tmp_path / "pairs" / "samples.jsonl")
    assert summary.skipped == {} and summary.n_candidate_pairs == 6 * len(PROMPTS) == summary.n_pairs
    assert Counter(p["prompt_id"] for p in pairs) == {i: 6 for i in range(len(PROMPTS))}
    for i, prompt in enumerate(PROMPTS):
        rows = [p for p in pairs if p["prompt_id"] == i]
        assert all(p["prompt"] == prompt for p in rows)
        unordered = [frozenset((p["chosen"], p["rejected"])) for p in rows]
        expected = {frozenset(c) for c in itertools.combinations(samples[i]["completions"], 2)}
        assert len(set(unordered)) == 6 and set(unordered) == expected  # every pair, each once
    for p in pairs:
        assert p["chosen_reward"] > p["rejected_reward"]
        # the reward scored prompt ⊕ completion, and the record carries exactly that score
        assert p["chosen_reward"] == hash_reward([p["prompt"] + p["chosen"]]).item()
        assert p["rejected_reward"] == hash_reward([p["prompt"] + p["rejected"]]).item()
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


def test_bad_arguments_name_the_argument(tiny):
    policy, tok = tiny
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


# --- the cache -----------------------------------------------------------------------------------------


def _no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("generate was called although the cache should have answered")

    monkeypatch.setattr(models, "generate", refuse)


def test_cache_hit_reads_the_files_and_samples_nothing(tiny, tmp_path, monkeypatch):
    pairs, summary = _build(tiny, run_dir=tmp_path)
    folder = tmp_path / "pairs"
    assert {f.name for f in folder.iterdir()} == {"pairs.jsonl", "samples.jsonl", "summary.json", "settings.json"}
    assert data.load_jsonl(folder / "pairs.jsonl") == pairs  # round trip, rewards exact
    settings = json.loads((folder / "settings.json").read_text())
    assert {"seed", "k", "max_new_tokens", "temperature", "n_prompts", "policy", "prompts"} <= set(settings["sampling"])
    assert settings["sampling"]["k"] == 4 and settings["sampling"]["n_prompts"] == len(PROMPTS)
    assert summary.source == "generated" and summary.reason == "no cache"
    _no_sampling(monkeypatch)
    again, cached = _build(tiny, run_dir=tmp_path)
    assert again == pairs and cached.source == "cache" and "same settings" in cached.reason
    assert (cached.n_pairs, cached.mean_reward, cached.seconds) == (summary.n_pairs, summary.mean_reward,
                                                                    summary.seconds)
    with pytest.raises(AssertionError, match="generate was called"):
        _build(tiny, run_dir=tmp_path, refresh=True)


@pytest.mark.parametrize("change, said", [(dict(seed=1), "seed 0 → 1"), (dict(temperature=0.7), "temperature"),
                                          (dict(max_new_tokens=5), "max_new_tokens 6 → 5"), (dict(k=3), "k 4 → 3")])
def test_a_changed_setting_regenerates_and_says_which(tiny, tmp_path, change, said):
    first, _ = _build(tiny, run_dir=tmp_path)
    second, summary = _build(tiny, run_dir=tmp_path, **change)
    assert summary.source == "generated" and said in summary.reason and second != first
    settings = json.loads((tmp_path / "pairs" / "settings.json").read_text())
    key, value = next(iter(change.items()))
    assert settings["sampling"][key] == value  # the files now hold the new run


def test_new_weights_or_prompts_regenerate(tiny, tmp_path):
    policy, tok = tiny
    _build(tiny, run_dir=tmp_path)
    changed = build_preference_data(policy, tok, PROMPTS[:-1], hash_reward, run_dir=tmp_path, **SETTINGS)[1]
    assert "n_prompts 6 → 5" in changed.reason and "prompts '" in changed.reason
    trained = models.build_model(get_preset("ci", verbose=False, n_layer=2, n_head=2, n_embd=32, n_positions=64,
                                            vocab_size=300), tok, seed=1)  # other weights, same shapes
    summary = build_preference_data(trained, tok, PROMPTS[:-1], hash_reward, run_dir=tmp_path, **SETTINGS)[1]
    assert summary.source == "generated" and summary.reason.startswith("policy ")


def test_a_new_reward_relabels_the_saved_samples_without_sampling(tiny, tmp_path, monkeypatch):
    pairs, _ = _build(tiny, run_dir=tmp_path)
    _no_sampling(monkeypatch)
    relabelled, summary = _build(tiny, reward=count_e, run_dir=tmp_path)
    assert summary.source == "relabelled" and "reward_scores" in summary.reason
    completions = {frozenset((p["chosen"], p["rejected"])) for p in pairs}
    assert {frozenset((p["chosen"], p["rejected"])) for p in relabelled} <= completions  # same samples
    assert all(p["chosen_reward"] == (p["prompt"] + p["chosen"]).count("e") for p in relabelled)
    assert _build(tiny, reward=count_e, run_dir=tmp_path)[1].source == "cache"


def test_deterministic_for_a_seed_without_a_run_folder(tiny):
    first, s1 = _build(tiny)
    again, s2 = _build(tiny)
    assert first == again and s1.reason == "no run_dir" and s1.mean_reward == s2.mean_reward


def test_split_by_prompt_keeps_each_prompts_pairs_together(tiny):
    pairs, _ = _build(tiny)
    train, held_out = split_by_prompt(pairs, eval_size=2, seed=0)
    assert len(train) + len(held_out) == len(pairs) and len(held_out) == 12
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held_out}
    assert split_by_prompt(pairs, eval_size=2, seed=0) == (train, held_out)


def test_every_preset_names_the_preference_sizes():
    for preset in PRESETS.values():
        kwargs = preferences.preference_settings(preset)
        assert kwargs["k"] == 4  # the paper's four completions per prefix
        assert kwargs["batch_size"] >= 1 and 0 < preset.eval_pair_prompts < preset.pair_prompts
    assert PRESETS["ci"].pair_prompts <= PRESETS["cpu"].pair_prompts <= PRESETS["gpt2"].pair_prompts
