"""dpo_edu.data: IMDb loading, the split, prompts and the JSONL / datasets round trips; the preference records'
checks (dpo_edu.preferences) on the same rows."""

import json

import pytest

from dpo_edu import preferences
from dpo_edu.data import (
    Report,
    Review,
    clean_text,
    from_dataset,
    load_imdb,
    load_jsonl,
    make_prompts,
    save_jsonl,
    to_dataset,
    train_eval_split,
)
from dpo_edu.preferences import filter_pairs, make_pairs, validate_pairs


class WhitespaceTokenizer:
    """The smallest tokenizer make_prompts accepts: one id per word, encode() takes only the text."""

    def __init__(self):
        self.words, self.ids = [], {}

    def encode(self, text):
        ids = []
        for word in text.split():
            if word not in self.ids:
                self.ids[word] = len(self.words)
                self.words.append(word)
            ids.append(self.ids[word])
        return ids

    def decode(self, ids):
        return " ".join(self.words[i] for i in ids)


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE trained on a few bundled reviews (a ``tokenizers.Tokenizer``, not HF)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([r.text for r in load_imdb(n=200, seed=1, verbose=False)], trainer)
    return tok


# --- IMDb ------------------------------------------------------------------------------


def test_clean_text_removes_br_tags_and_collapses_whitespace():
    assert clean_text("Great.<br /><br />Really  great.<br/>Yes<BR>\n no ") == "Great. Really great. Yes no"


def test_bundled_imdb_is_the_25000_review_train_split_cleaned():
    reviews = load_imdb(verbose=False)
    assert len(reviews) == 25_000  # the 8,530 Rotten Tomatoes snippets are left out
    assert sum(r.label for r in reviews) == 12_500
    assert all(isinstance(r, Review) and r.label in (0, 1) for r in reviews)
    assert not any("<br" in r.text.lower() or "  " in r.text for r in reviews)


def test_balanced_sample_is_seeded(capsys):
    a = load_imdb(n=101, seed=3)
    assert "load_imdb: 101 reviews (51 positive)" in capsys.readouterr().out
    assert sum(r.label for r in a) == 51
    assert a == load_imdb(n=101, seed=3, verbose=False)
    assert a != load_imdb(n=101, seed=4, verbose=False)
    assert len({r.label for r in a[:20]}) == 2  # shuffled, not sorted by label like the file
    b = load_imdb(n=50, seed=0, balanced=False, verbose=False)
    assert len(b) == 50


def test_load_imdb_errors():
    with pytest.raises(ValueError, match="source"):
        load_imdb(source="web")
    with pytest.raises(ValueError, match="only IMDb's train split"):
        load_imdb(split="test")
    with pytest.raises(ValueError, match="n=30000 needs 15000 reviews labelled 0"):
        load_imdb(n=30_000, verbose=False)
    with pytest.raises(ValueError, match="n must be a positive int"):
        load_imdb(n=0)


def test_hub_source_calls_load_dataset_and_reports_skips(monkeypatch, capsys):
    import datasets

    calls = []
    rows = [
        {"text": "Loved it.<br /><br />Truly.", "label": 1},
        {"text": "Dull.", "label": 0},
        {"text": "Unlabelled.", "label": -1},
        {"text": "<br />", "label": 0},
    ]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or rows)
    reviews = load_imdb(source="hub", split="test", seed=0)
    assert calls == [(("stanfordnlp/imdb",), {"split": "test"})]
    assert sorted(reviews, key=lambda r: r.label) == [Review("Dull.", 0), Review("Loved it. Truly.", 1)]
    out = capsys.readouterr().out
    assert "kept 2 of 4 rows" in out and "label -1 is not 0 or 1" in out and "empty text" in out


def test_hub_source_offline_points_to_bundled(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(OSError, match="source='bundled'"):
        load_imdb(source="hub")


# --- split -----------------------------------------------------------------------------


def test_split_is_seeded_disjoint_and_sized():
    items = list(range(100))
    train, held = train_eval_split(items, eval_size=20, seed=0)
    assert len(train) == 80 and len(held) == 20
    assert sorted(train + held) == items
    assert (train, held) == train_eval_split(items, eval_size=20, seed=0)
    assert set(held) != set(train_eval_split(items, eval_size=20, seed=1)[1])
    train, held = train_eval_split(items, eval_size=0.25, seed=0)
    assert (len(train), len(held)) == (75, 25)


def test_split_by_group_keeps_a_prompts_pairs_together():
    rows = [{"prompt": f"p{i // 6}", "k": i} for i in range(60)]
    train, held = train_eval_split(rows, eval_size=3, seed=0, group="prompt")
    assert len(held) == 18 and len(train) == 42
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}


@pytest.mark.parametrize("size, match", [(0, "at least one"), (10, "at least one"), (1.0, r"in \(0, 1\)"),
                                         ("3", "int or a float")])
def test_split_rejects_bad_sizes(size, match):
    with pytest.raises(ValueError, match=match):
        train_eval_split(list(range(10)), eval_size=size)


# --- prompts ---------------------------------------------------------------------------


def test_prompts_are_2_to_8_token_prefixes():
    texts = [f"word{i} " * 20 for i in range(200)]
    tok = WhitespaceTokenizer()
    prompts, report = make_prompts(texts, tok, seed=0)
    lengths = [len(p.split()) for p in prompts]
    assert report.kept == len(prompts) == 200 and not report.skipped and not report.truncated
    assert min(lengths) == 2 and max(lengths) == 8 and len(set(lengths)) == 7
    assert all(t.startswith(p) for t, p in zip(texts, prompts))
    assert prompts == make_prompts(texts, tok, seed=0)[0]
    assert prompts != make_prompts(texts, tok, seed=1)[0]


def test_short_texts_are_reported_not_silently_dropped():
    texts = ["one two", "a b c", "x " * 30]
    prompts, report = make_prompts(texts, WhitespaceTokenizer(), min_tokens=2, max_tokens=8, seed=0)
    assert report.total == 3 and report.kept == 2 and report.skipped_rows == [0]
    assert prompts[0] == "a b"  # cut to leave one token to continue
    assert sum(report.truncated.values()) == 1
    assert "kept 2 of 3 rows" in str(report) and "skipped 1" in str(report)


def test_prompts_with_a_bpe_end_on_token_boundaries(bpe):
    texts = [r.text for r in load_imdb(n=100, seed=2, verbose=False)]
    prompts, report = make_prompts(texts, bpe, min_tokens=2, max_tokens=8, seed=0)
    assert report.kept == 100
    for text, prompt in zip(texts, prompts):
        assert text.startswith(prompt)
        assert 2 <= len(bpe.encode(prompt).ids) <= 8


def test_make_prompts_checks_its_arguments():
    with pytest.raises(ValueError, match="min_tokens <= max_tokens"):
        make_prompts(["a b c"], WhitespaceTokenizer(), min_tokens=5, max_tokens=2)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str"):
        make_prompts(["a b c", None], WhitespaceTokenizer())


# --- preference records ----------------------------------------------------------------

GOOD = {"prompt": "This film", "chosen": " is a joy.", "rejected": " is a bore."}


def rows_with(bad, at=2):
    rows = [dict(GOOD) for _ in range(4)]
    rows[at] = bad
    return rows


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"prompt": "x", "chosen": "y"}, "row 2, field 'rejected': is missing"),
        ({**GOOD, "chosen": ""}, "row 2, field 'chosen': is empty"),
        ({**GOOD, "prompt": "  "}, "row 2, field 'prompt': is empty"),
        ({**GOOD, "rejected": 3}, "row 2, field 'rejected': must be a str, got int"),
        ({**GOOD, "rejected": GOOD["chosen"]}, "row 2, field 'rejected': equals chosen"),
        ({**GOOD, "chosen": " is" + " very" * 20}, "row 2, field 'chosen': prompt \\+ chosen is 112 characters"),
        (["a", "b"], "row 2 is a list"),
    ],
)
def test_validate_pairs_names_row_and_field(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_pairs(rows_with(bad), max_chars=40)


def test_validate_pairs_keeps_extra_fields_and_counts_tokens():
    rows = [{**GOOD, "chosen_reward": 0.9, "rejected_reward": 0.1, "prompt_id": 7}]
    assert validate_pairs(rows) == rows
    tok = WhitespaceTokenizer()
    assert validate_pairs(rows, tokenizer=tok, max_tokens=5) == rows  # "This film is a joy." = 5
    with pytest.raises(ValueError, match=r"row 0, field 'chosen': prompt \+ chosen is 5 tokens, over the limit of 4"):
        validate_pairs(rows, tokenizer=tok, max_tokens=4)
    with pytest.raises(ValueError, match="not both"):
        validate_pairs(rows, max_chars=10, tokenizer=tok, max_tokens=4)
    with pytest.raises(ValueError, match="go together"):
        validate_pairs(rows, max_tokens=4)


def test_filter_pairs_drops_and_reports_each_reason():
    rows = [GOOD, {**GOOD, "chosen": ""}, {**GOOD, "rejected": GOOD["chosen"]}, {**GOOD, "chosen": ""}]
    kept, report = filter_pairs(rows)
    assert kept == [GOOD]
    assert report.total == 4 and report.kept == 1 and report.skipped_rows == [1, 2, 3]
    assert report.skipped == {"chosen is empty": 2, "rejected equals chosen (a pair must differ)": 1}


def test_make_pairs_four_completions_give_six_pairs():
    pairs, report = make_pairs(["P"], [["a", "b", "c", "d"]], [[0.1, 0.9, 0.5, 0.3]])
    assert len(pairs) == 6 and report.kept == 6
    assert all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        ("b", "a"), ("c", "a"), ("d", "a"), ("b", "c"), ("b", "d"), ("c", "d")}
    assert validate_pairs(pairs) == pairs
    pairs, report = make_pairs(["P", "Q"], [["a", "b"], ["c", "d", "c"]], [[1.0, 1.0], [0.2, 0.4, 0.3]])
    assert [(p["chosen"], p["rejected"], p["prompt_id"]) for p in pairs] == [("d", "c", 1), ("d", "c", 1)]
    assert report.total == 4 and report.skipped_rows == [0, 2]
    with pytest.raises(ValueError, match="prompt 0: 2 completions but 1 scores"):
        make_pairs(["P"], [["a", "b"]], [[1.0]])


# --- round trips -----------------------------------------------------------------------

ROWS = [
    {"prompt": "Ce film", "chosen": " est génial ✨ 🎬", "rejected": " est nul.", "chosen_reward": 0.9731,
     "rejected_reward": 1e-7, "prompt_id": 0},
    {"prompt": "日本の映画", "chosen": " は\n素晴らしい \"quoted\"", "rejected": " は退屈\t\u2028\x85\r",
     "chosen_reward": 0.5, "rejected_reward": 0.1 + 0.2, "prompt_id": 1},
]


def test_jsonl_round_trip_is_exact(tmp_path):
    path = save_jsonl(ROWS, tmp_path / "sub" / "pairs.jsonl")
    assert load_jsonl(path) == ROWS
    assert "génial ✨" in path.read_text(encoding="utf-8")  # written as UTF-8, not \u escapes


def test_a_failed_save_leaves_the_old_file_as_it_was(tmp_path):
    """Issue 15, item 3: a row that cannot be written (here a set, then a non-dict) loses nothing."""
    path = save_jsonl(ROWS, tmp_path / "pairs.jsonl")
    before = path.read_bytes()
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        save_jsonl([ROWS[0], {"prompt": {"a", "set"}}], path)
    with pytest.raises(ValueError, match="row 1 is a list, not a dict"):
        save_jsonl([ROWS[0], [1, 2]], path)
    assert path.read_bytes() == before and load_jsonl(path) == ROWS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]  # no temporary file left behind


def test_load_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"prompt": "x", \n' + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(ValueError, match="line 3: malformed JSON"):
        load_jsonl(path)
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match="line 2: expected a JSON object, got list"):
        load_jsonl(path)
    path.write_text(json.dumps(ROWS[0]) + "\n\n")  # blank lines are not rows
    assert load_jsonl(path) == ROWS[:1]


def test_dataset_round_trip_is_exact():
    ds = to_dataset(ROWS)
    assert ds.num_rows == 2 and set(ds.column_names) == set(ROWS[0])
    assert from_dataset(ds) == ROWS
    with pytest.raises(ValueError, match=r"row 1 has fields unlike row 0: extra \[\], missing \['prompt_id'\]"):
        to_dataset([ROWS[0], {k: v for k, v in ROWS[1].items() if k != "prompt_id"}])
    with pytest.raises(ValueError, match="empty"):
        to_dataset([])


def test_report_counts_add_up():
    report = Report("step", total=5)
    report.skip(1, "why")
    report.skip(3, "why")
    report.truncate("cut")
    assert report.kept == 3 and str(report) == "step: kept 3 of 5 rows\n  skipped 2: why\n  truncated 1: cut"
    assert preferences.PAIR_FIELDS == ("prompt", "chosen", "rejected")


def test_an_empty_jsonl_is_an_error_naming_it_unless_allowed(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=f"{path} holds no rows"):
        load_jsonl(path)
    assert load_jsonl(path, allow_empty=True) == []
