"""dpo_edu.sentiment: the TF-IDF reward trained on IMDb, its run-folder stage (pipeline.ground_truth_reward),
and the Hub-classifier wrapper exercised offline with tiny randomly initialised classifiers saved to a local folder."""

import json

import pytest
import torch

from dpo_edu import pipeline
from dpo_edu.data import load_imdb
from dpo_edu.presets import get_preset
from dpo_edu.sentiment import (
    SAVE_FILE,
    HubSentiment,
    SentimentReward,
    TfidfSentiment,
    make_reward,
    positive_label_index,
)

POSITIVE = "A wonderful, moving film. The acting is superb and I loved every minute. A masterpiece."
NEGATIVE = "A boring, awful mess. The acting is terrible and I hated every minute. A waste of time."


@pytest.fixture(scope="module")
def reviews():
    return load_imdb(n=2500, seed=0, verbose=False)


@pytest.fixture(scope="module")
def tfidf(reviews):
    return TfidfSentiment.fit([r.text for r in reviews], [r.label for r in reviews], eval_size=500, seed=0,
                              verbose=False)


# --- TF-IDF ----------------------------------------------------------------------------


def test_tfidf_held_out_accuracy(tfidf):
    assert tfidf.info["n_train"] == 2000 and tfidf.info["n_eval"] == 500
    assert tfidf.accuracy >= 0.8
    assert "held-out accuracy 0.8" in repr(tfidf) or "held-out accuracy 0.9" in repr(tfidf)


def test_tfidf_probabilities(tfidf, reviews):
    p = tfidf([POSITIVE, NEGATIVE, "", "ok"])
    assert p.dtype == torch.float32 and p.shape == (4,)
    assert ((p >= 0) & (p <= 1)).all()
    assert p[0] > 0.7 and p[1] < 0.3
    assert tfidf([]).shape == (0,)
    mean_by_label = [tfidf([r.text for r in reviews[:400] if r.label == y]).mean() for y in (0, 1)]
    assert mean_by_label[1] > mean_by_label[0] + 0.3


def test_tfidf_save_load_gives_identical_outputs(tfidf, reviews, tmp_path):
    path = tfidf.save(tmp_path / "sentiment")
    assert path == tmp_path / "sentiment" / "tfidf.joblib" == tmp_path / "sentiment" / SAVE_FILE
    loaded = TfidfSentiment.load(tmp_path / "sentiment")
    texts = [r.text for r in reviews[:50]] + [POSITIVE, NEGATIVE]
    assert torch.equal(loaded(texts), tfidf(texts))
    assert loaded.accuracy == tfidf.accuracy and loaded.info == tfidf.info
    with pytest.raises(FileNotFoundError, match="no saved tfidf"):
        TfidfSentiment.load(tmp_path / "elsewhere")


def test_tfidf_checks_its_inputs(tfidf):
    with pytest.raises(ValueError, match="list of strings, not one string"):
        tfidf(POSITIVE)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str, got int"):
        tfidf([POSITIVE, 3])
    with pytest.raises(ValueError, match="labels must be 0 or 1, got 2"):
        TfidfSentiment.fit(["a", "b"], [0, 2])
    with pytest.raises(ValueError, match="must match, got 2 and 1"):
        TfidfSentiment.fit(["a", "b"], [0])


def test_make_reward_trains_tfidf_on_reviews_or_on_n_reviews(reviews, capsys):
    small = reviews[:600]
    reward = make_reward("tfidf", reviews=small, eval_size=100)
    assert isinstance(reward, TfidfSentiment) and isinstance(reward, SentimentReward)
    assert reward.info["n_train"] == 500 and reward.info["n_eval"] == 100
    assert "held-out accuracy" in capsys.readouterr().out
    fitted = TfidfSentiment.fit([r.text for r in small], [r.label for r in small], eval_size=100, verbose=False)
    assert torch.equal(reward([POSITIVE, NEGATIVE]), fitted([POSITIVE, NEGATIVE]))  # the same fit
    bundled = make_reward("tfidf", n_reviews=600, seed=0, verbose=False)  # the first 600 bundled reviews
    assert bundled.info["n_train"] == 480 and bundled.info["seed"] == 0
    same = make_reward("tfidf", reviews=load_imdb(n=600, seed=0, verbose=False), verbose=False)
    assert torch.equal(bundled([POSITIVE, NEGATIVE]), same([POSITIVE, NEGATIVE]))
    with pytest.raises(ValueError, match="n_reviews"):
        make_reward("tfidf")
    with pytest.raises(ValueError, match="name must be"):
        make_reward("")


# --- the ground-truth stage of a run folder ------------------------------------------------------------------


def ground_truth(run_dir, reviews=600, seed=0):
    preset = get_preset("ci", {"ground_truth.reviews": reviews}, verbose=False)
    return pipeline.ground_truth_reward(preset, run_dir, seed=seed)


def refuse_training(monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the ground-truth classifier was trained again instead of loaded")

    monkeypatch.setattr(TfidfSentiment, "fit", no_training)


def test_ground_truth_reward_is_trained_once_then_loaded(tmp_path, monkeypatch, capsys):
    reward = ground_truth(tmp_path)
    folder = tmp_path / "sentiment"
    assert isinstance(reward, TfidfSentiment) and (folder / SAVE_FILE).is_file()
    assert json.loads((folder / "settings.json").read_text()) == {
        "ground_truth": {"classifier": "tfidf", "reviews": 600}, "seed": 0}
    assert reward.info["n_train"] == 480 and reward.info["seed"] == 0
    assert "ground-truth reward: new; building" in capsys.readouterr().out
    trained = make_reward("tfidf", n_reviews=600, seed=0, verbose=False)  # what the stage trains
    assert torch.equal(reward([POSITIVE, NEGATIVE]), trained([POSITIVE, NEGATIVE]))
    refuse_training(monkeypatch)
    again = ground_truth(tmp_path)
    assert "ground-truth reward: reusing" in capsys.readouterr().out
    texts = [POSITIVE, NEGATIVE, "", "ok"]
    assert torch.equal(again(texts), reward(texts)) and again.info == reward.info
    assert again.accuracy == reward.accuracy


@pytest.mark.parametrize("change, said", [(dict(reviews=500), "ground_truth.reviews"), (dict(seed=1), "seed")])
def test_ground_truth_reward_is_retrained_when_its_settings_change(tmp_path, capsys, change, said):
    """A stale classifier is never reused: another review count or seed trains a new one."""
    first = ground_truth(tmp_path)
    capsys.readouterr()
    second = ground_truth(tmp_path, **change)
    assert f"ground-truth reward: settings changed ({said}); building" in capsys.readouterr().out
    expected = make_reward("tfidf", n_reviews=change.get("reviews", 600), seed=change.get("seed", 0), verbose=False)
    assert second.info["n_train"] == expected.info["n_train"] and second.info["seed"] == expected.info["seed"]
    texts = [POSITIVE, NEGATIVE, "I have seen better."]
    assert torch.equal(second(texts), expected(texts)) and not torch.equal(second(texts), first(texts))
    settings = json.loads((tmp_path / "sentiment" / "settings.json").read_text())
    assert (settings["ground_truth"]["reviews"], settings["seed"]) == (change.get("reviews", 600),
                                                                      change.get("seed", 0))
    # and the first settings again: retrained, not the second classifier
    back = ground_truth(tmp_path)
    assert torch.equal(back(texts), first(texts))


# --- the Hub wrapper, on tiny local classifiers -----------------------------------------


@pytest.mark.parametrize(
    "id2label, given, expected",
    [
        ({0: "NEGATIVE", 1: "POSITIVE"}, None, 1),  # siebert, lvwerra/distilbert-imdb
        ({"0": "positive", "1": "negative"}, None, 0),  # JSON configs key by strings
        ({0: "negative", 1: "neutral", 2: "positive"}, None, 2),  # three classes
        ({0: "Neg", 1: "Pos"}, None, 1),
        ({0: "LABEL_0", 1: "LABEL_1"}, 1, 1),
        ({0: "LABEL_0", 1: "LABEL_1"}, "label_0", 0),
    ],
)
def test_positive_label_index(id2label, given, expected):
    assert positive_label_index(id2label, given) == expected


def test_positive_label_index_errors():
    with pytest.raises(ValueError, match="cannot tell the positive class .* pass positive_label"):
        positive_label_index({0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ValueError, match="positive_label=5 is not an output index"):
        positive_label_index({0: "NEGATIVE", 1: "POSITIVE"}, 5)
    with pytest.raises(ValueError, match="positive_label='good' is not one of the labels"):
        positive_label_index({0: "NEGATIVE", 1: "POSITIVE"}, "good")


@pytest.fixture(scope="module")
def tiny_tokenizer(reviews):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([r.text for r in reviews[:200]],
                            trainers.WordLevelTrainer(vocab_size=500, special_tokens=["[PAD]", "[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", model_max_length=64)


def save_tiny_classifier(folder, kind, id2label, tokenizer):
    """A randomly initialised 1-layer classifier + tokenizer, saved as a Hub model would be."""
    from transformers import (DistilBertConfig, DistilBertForSequenceClassification, RobertaConfig,
                              RobertaForSequenceClassification)

    torch.manual_seed(0)
    labels = dict(id2label=id2label, label2id={v: k for k, v in id2label.items()}, pad_token_id=tokenizer.pad_token_id)
    if kind == "distilbert":
        config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                                  max_position_embeddings=64, **labels)
        model = DistilBertForSequenceClassification(config)
    else:  # RoBERTa offsets positions by pad_token_id + 1
        config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=64 + 2, **labels)
        model = RobertaForSequenceClassification(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("kind, id2label, positive", [
    ("distilbert", {0: "NEGATIVE", 1: "POSITIVE"}, 1),
    ("roberta", {0: "positive", 1: "negative"}, 0),
])
def test_hub_wrapper_batches_and_picks_the_positive_label(kind, id2label, positive, tiny_tokenizer, reviews,
                                                          tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = save_tiny_classifier(tmp_path / kind, kind, id2label, tiny_tokenizer)
    texts = [r.text[:150] for r in reviews[:7]] + [POSITIVE, "short"]
    reward = HubSentiment(folder, device="cpu", batch_size=2)
    assert reward.positive_index == positive
    p = reward(texts)
    assert p.dtype == torch.float32 and p.shape == (9,) and ((p > 0) & (p < 1)).all()
    # One padded batch of all texts gives the same numbers: padding is masked, batching is invisible.
    assert torch.allclose(HubSentiment(folder, device="cpu", batch_size=16)(texts), p, atol=1e-5)
    # The reference: the same model loaded directly, one text at a time, softmax at the positive index.
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        expected = torch.stack([
            model(**{k: v for k, v in tiny_tokenizer(t, return_tensors="pt").items() if k != "token_type_ids"})
            .logits.softmax(-1)[0, positive] for t in texts])
    assert torch.allclose(p, expected, atol=1e-5)


def test_hub_wrapper_label_errors_warnings_and_accuracy(tiny_tokenizer, reviews, tmp_path):
    folder = save_tiny_classifier(tmp_path / "m", "distilbert", {0: "LABEL_0", 1: "LABEL_1"}, tiny_tokenizer)
    with pytest.raises(ValueError, match="pass positive_label"):
        HubSentiment(folder, device="cpu")
    reward = make_reward(folder, positive_label=1, device="cpu", verbose=False)
    assert reward.positive_index == 1 and reward.accuracy is None
    with pytest.warns(UserWarning, match="max_length=64") as caught:  # reviews run past 64 tokens
        measured = make_reward(folder, reviews=reviews[:20], positive_label=1, device="cpu", batch_size=4)
    assert len(caught) == 1  # once per classifier, not once per batch
    labels = torch.tensor([r.label for r in reviews[:20]])
    expected = ((measured([r.text for r in reviews[:20]]) > 0.5).long() == labels).float().mean().item()
    assert measured.accuracy == pytest.approx(expected)


def test_ground_truth_reward_of_a_hub_classifier_is_loaded_not_staged(tiny_tokenizer, tmp_path):
    folder = save_tiny_classifier(tmp_path / "classifier", "distilbert", {0: "NEGATIVE", 1: "POSITIVE"},
                                  tiny_tokenizer)
    preset = get_preset("ci", {"ground_truth.classifier": folder}, verbose=False)
    reward = pipeline.ground_truth_reward(preset, tmp_path / "run", seed=0)
    assert isinstance(reward, HubSentiment) and reward.name == folder and reward.positive_index == 1
    texts = [POSITIVE, NEGATIVE, "short"]
    assert torch.equal(reward(texts), HubSentiment(folder, device="cpu")(texts))
    assert not (tmp_path / "run").exists()  # nothing trained, nothing saved in the run folder


def test_hub_wrapper_offline_failure_names_tfidf(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(OSError, match="could not load sentiment classifier 'lvwerra/distilbert-imdb'.*'tfidf'"):
        make_reward("lvwerra/distilbert-imdb")


def test_a_corrupt_classifier_file_is_named_and_retrained(tmp_path, capsys):
    """Issue 15: an emptied tfidf.joblib failed with a bare EOFError on every rerun."""
    reward = ground_truth(tmp_path)
    (tmp_path / "sentiment" / SAVE_FILE).write_bytes(b"")
    capsys.readouterr()
    again = ground_truth(tmp_path)
    assert f"ground-truth reward: {SAVE_FILE} has changed (0 bytes" in capsys.readouterr().out
    assert torch.equal(again([POSITIVE, NEGATIVE]), reward([POSITIVE, NEGATIVE]))
