"""Behaviour of a registered champion, as Made-With-ML tests a model: invariance and minimum functionality.

- Invariance: edits that do not change what a text says (whitespace, letter case, trailing punctuation) do not
  change its label; a one-pixel shift of an image does not change its label.
- Minimum functionality: a handful of unambiguous, hand-written examples per class get their class.
- The clean stage's rules hold at serving: an input clean would quarantine gets no label.

Run against any registry (see conftest.py); tests/test_pipeline.py runs them on the tiny profile's champions.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

# Unambiguous examples per class, for the text tasks (images have no hand-made examples: minimum functionality
# is not tested for them).
MINIMUM = {
    "spam": {
        "spam": ["WINNER!! You have won a free prize, claim it now: txt WIN to 80086",
                 "URGENT! Your mobile number has won a cash award of 2000 pounds. Call 09061743810 to claim now",
                 "Free entry in a weekly competition to win FA Cup final tickets. Text FA to 87121 to receive entry"],
        "ham": ["Are you coming home for dinner tonight?",
                "I'll be at the library until six, see you after that",
                "Ok lor, I'm leaving the office now. Want me to pick up some milk?"],
    },
    "news": {
        "business": ["Shares in the bank fell 5% after it reported a sharp drop in annual profits and cut its dividend, "
                     "as investors worried about rising interest rates and the company's debt.",
                     "The firm's chief executive said quarterly sales had beaten analysts' forecasts, sending its "
                     "stock market value above $10bn."],
        "entertainment": ["The film won best picture at the Oscars, and its star collected the award for best actress "
                          "at the ceremony in Hollywood.",
                          "The band's new album went straight to number one in the UK singles and album charts, "
                          "ahead of their world tour."],
        "politics": ["The prime minister faced questions in the Commons as Labour and the Conservatives clashed over "
                     "the government's plans before the general election.",
                     "MPs voted on the bill after the home secretary defended the policy, while opposition leaders "
                     "accused ministers of breaking manifesto promises."],
        "sport": ["The striker scored twice in the second half as Chelsea beat Arsenal 3-1 to go top of the Premiership.",
                  "England's captain hit a century on the opening day of the Test match against Australia at Lord's."],
        "tech": ["The new smartphone runs software that lets users download music and browse the web over broadband "
                 "and wi-fi networks.",
                 "Security experts warned that a computer virus was spreading by email, infecting PCs running "
                 "Microsoft Windows and stealing passwords online."],
    },
}


def text_variants(text: str) -> list[str]:
    """The same text with whitespace, letter case and trailing punctuation edited."""
    return ["  " + text.replace(" ", "   ") + "\n", text.lower(), text.upper(), text.rstrip(".!?") + ".",
            text.rstrip(".!?") + "!"]


def shifted(png: bytes) -> list[bytes]:
    """The image moved by one pixel up, down, left and right, the uncovered edge filled from its neighbour."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        mode, pixels = image.mode, np.asarray(image)
    out = []
    for axis, step in ((0, 1), (0, -1), (1, 1), (1, -1)):
        moved = np.roll(pixels, step, axis=axis)
        edge = [slice(None)] * pixels.ndim
        edge[axis] = 0 if step > 0 else -1
        source = [slice(None)] * pixels.ndim
        source[axis] = 1 if step > 0 else -2
        moved[tuple(edge)] = moved[tuple(source)]
        buffer = io.BytesIO()
        Image.fromarray(moved, mode=mode).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def labels_of(champion, values: list) -> list:
    out = champion["model"].predict(pd.DataFrame({champion["column"]: values}))
    assert out["rejected"].isna().all(), out  # these inputs are all valid: each one must be predicted
    return list(out["label"])


def originals(champion) -> list:
    """Inputs to edit: the model's logged input example (real test rows), plus the hand-written examples."""
    values = list(champion["example"][champion["column"]])
    values += [t for texts in MINIMUM.get(champion["task"], {}).values() for t in texts]
    return values


def test_invariance(champion):
    values = originals(champion)
    base = labels_of(champion, values)
    edit = shifted if champion["column"] == "image" else text_variants
    for value, label in zip(values, base):
        variants = edit(value)
        got = labels_of(champion, variants)
        assert got == [label] * len(variants), (str(value)[:80], label, got)


def test_minimum_functionality(champion):
    cases = MINIMUM.get(champion["task"])
    if cases is None:
        pytest.skip(f"no hand-written examples for task {champion['task']!r}")
    assert set(cases) == set(champion["labels"])
    for label, texts in cases.items():
        assert labels_of(champion, texts) == [label] * len(texts), label


def test_inputs_clean_would_quarantine_get_no_label(champion):
    bad = ["", "   ", "<p></p>"] if champion["column"] == "text" else [b"", b"not an image", b"\x89PNG\r\n\x1a\n"]
    values = [*bad, list(champion["example"][champion["column"]])[0]]
    out = champion["model"].predict(pd.DataFrame({champion["column"]: values}))
    assert out["label"].iloc[:len(bad)].isna().all() and out["rejected"].iloc[:len(bad)].notna().all(), out
    assert out["rejected"].iloc[-1] is None and out["label"].iloc[-1] in champion["labels"]
