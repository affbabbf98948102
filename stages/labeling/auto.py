"""Automatic labels for unlabelled rows: labelling functions (keyword / regex rules) and a model.

Rules are declared per task in params.yaml (`tasks.<task>.label_rules`); each votes for one label or
abstains, and the rows' rule label is the majority of the rules that fired (a tie abstains). The
model is a classifier on encoder embeddings trained on the labelled rows (see `detect.classifier`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stages.common import StageError


@dataclass(frozen=True)
class Rule:
    name: str
    label: str
    pattern: re.Pattern


@dataclass(frozen=True)
class RuleVote:
    label: str | None
    confidence: float            # share of the fired rules that agree with `label`
    fired: tuple[str, ...]       # names of the rules that agree with `label` (all fired rules on a tie)


def parse_rules(values: Any, *, labels: Sequence[str], where: str) -> list[Rule]:
    """Rules from params: each `{name, label, keywords: [..]}` (whole words, any case) or `{name, label, regex}`."""
    if not isinstance(values, list):
        raise StageError(f"params.yaml: {where}: expected a list of rules, got {values!r}")
    rules, names = [], set()
    for i, spec in enumerate(values):
        at = f"{where}[{i}]"
        if not isinstance(spec, dict):
            raise StageError(f"params.yaml: {at}: expected a mapping, got {spec!r}")
        unknown = sorted(set(spec) - {"name", "label", "keywords", "regex"})
        if unknown:
            raise StageError(f"params.yaml: {at}.{unknown[0]}: unknown key; known: ['keywords', 'label', 'name', 'regex']")
        for key in ("name", "label"):
            if not isinstance(spec.get(key), str) or not spec[key]:
                raise StageError(f"params.yaml: {at}.{key}: missing key or not a string")
        if spec["name"] in names:
            raise StageError(f"params.yaml: {at}.name: duplicate rule name {spec['name']!r}")
        names.add(spec["name"])
        if spec["label"] not in labels:
            raise StageError(f"params.yaml: {at}.label: {spec['label']!r} is not in the task's labels {list(labels)}")
        if ("keywords" in spec) == ("regex" in spec):
            raise StageError(f"params.yaml: {at}: give exactly one of 'keywords' or 'regex'")
        if "keywords" in spec:
            words = spec["keywords"]
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
                raise StageError(f"params.yaml: {at}.keywords: expected a non-empty list of strings, got {words!r}")
            pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
        else:
            try:
                pattern = re.compile(spec["regex"])
            except (re.error, TypeError) as exc:
                raise StageError(f"params.yaml: {at}.regex: invalid pattern {spec['regex']!r}: {exc}") from None
        rules.append(Rule(spec["name"], spec["label"], pattern))
    return rules


def apply_rules(texts: Sequence[str], rules: Sequence[Rule]) -> list[RuleVote]:
    """Each text's majority rule label; abstains (label None) when no rule fires or the top labels tie."""
    votes = []
    for text in texts:
        fired = [r for r in rules if r.pattern.search(text)]
        if not fired:
            votes.append(RuleVote(None, 0.0, ()))
            continue
        counts = Counter(r.label for r in fired).most_common()
        if len(counts) > 1 and counts[0][1] == counts[1][1]:
            votes.append(RuleVote(None, 0.0, tuple(r.name for r in fired)))
            continue
        winner = counts[0][0]
        votes.append(RuleVote(winner, counts[0][1] / len(fired), tuple(r.name for r in fired if r.label == winner)))
    return votes
