"""Code tests for personal-data detection (stages/modalities/pii.py) and its use in the clean stage."""

from __future__ import annotations

import pandas as pd
import pytest

from stages.clean import clean
from stages.common import StageError
from stages.modalities import get_modality
from stages.modalities.pii import PiiParams, find, iban_ok, luhn_ok, redact
from tests.stages.test_clean import TEXT_VALUES

TEXT = get_modality("text")
ALL = PiiParams(action="redact", kinds=["email", "phone", "ip", "card", "iban"], phone_regions=["GB", "US"])


@pytest.mark.parametrize("text,kind,found", [
    ("write to jane.doe+news@mail.example.co.uk today", "email", "jane.doe+news@mail.example.co.uk"),
    ("call 020 7946 0958 now", "phone", "020 7946 0958"),
    ("call +44 (0)161 496 0123 now", "phone", "+44 (0)161 496 0123"),
    ("ring (415) 555-2671 or", "phone", "(415) 555-2671"),
    ("from 192.168.1.20 at", "ip", "192.168.1.20"),
    ("host 2001:db8::8a2e:370:7334 is", "ip", "2001:db8::8a2e:370:7334"),
    ("paid with 4111 1111 1111 1111 on", "card", "4111 1111 1111 1111"),
    ("amex 3782-822463-10005 ok", "card", "3782-822463-10005"),
    ("to GB82 WEST 1234 5698 7654 32 please", "iban", "GB82 WEST 1234 5698 7654 32"),
    ("to DE89370400440532013000 please", "iban", "DE89370400440532013000"),
])
def test_detects_each_kind(text, kind, found):
    spans = find(text, ALL)
    assert [(s.kind, text[s.start:s.end]) for s in spans] == [(kind, found)]


@pytest.mark.parametrize("text", [
    "Python 3.10.4 was released on 12.05.2024 at 12:30:45.",
    "Windows version 10.0.19041.1 and firmware v1.2.3.4 shipped.",
    "He won 7-6 (7-5) 4-6 6-3 4-6 6-0 in the final.",
    "Order 4532 1234 5678 9013 was cancelled; the ISBN is 978-0-306-40615-7.",
    "Profits rose to £1,234,567 in 1998-2004, up 12.5% on 2003.",
    "Follow @bbcnews or write to editor at bbc dot co dot uk.",
    "The code GB00 WEST 1234 5698 7654 32 fails its checksum.",
])
def test_look_alikes_are_not_personal_data(text):
    assert find(text, ALL) == []


def test_redact_uses_typed_placeholders():
    text = "Mail a@b.org, call 020 7946 0958, card 4111111111111111."
    assert redact(text, find(text, ALL)) == "Mail <EMAIL>, call <PHONE>, card <CARD>."


def test_checksums():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")


def text_params(**pii):
    values = {"action": "redact", "kinds": ["email", "phone", "ip", "card", "iban"], "phone_regions": ["GB"], **pii}
    return TEXT.clean_params({**TEXT_VALUES, "max_chars": 1000, "pii": values})


def rows(*texts):
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "modality": "text", "text": list(texts),
                         "label": "a", "source": "s", "license": "l", "sha256": "x", "acquired_at": "t"})


TEXTS = ("Contact jane@example.org about the match report today.",
         "No personal data in this sentence about markets at all.",
         "Call 020 7946 0958 or 020 7946 0959 from 10.0.0.1 for tickets.")


def test_clean_redacts_and_counts_per_kind():
    result = clean(rows(*TEXTS), TEXT, text_params(), exact_dedup=True, near_dedup="off")
    assert list(result.kept["text"]) == ["Contact <EMAIL> about the match report today.", TEXTS[1],
                                         "Call <PHONE> or <PHONE> from <IP> for tickets."]
    assert result.metrics["personal_data"] == {"rows": 2, "by_kind": {"email": 1, "ip": 1, "phone": 2}}


def test_clean_quarantines_with_the_payload_redacted():
    result = clean(rows(*TEXTS), TEXT, text_params(action="quarantine"), exact_dedup=True, near_dedup="off")
    assert list(result.kept["text"]) == [TEXTS[1]]
    assert result.metrics["quarantined_by_reason"] == {"personal_data": 2}
    assert len(result.kept) + len(result.quarantine) == 3
    # raw personal data stays in raw.parquet only: the quarantine holds the redacted text
    assert not result.quarantine["text"].str.contains("jane@|7946|10.0.0.1").any()


def test_clean_off_leaves_text_alone():
    result = clean(rows(*TEXTS), TEXT, text_params(action="off"), exact_dedup=True, near_dedup="off")
    assert list(result.kept["text"]) == list(TEXTS) and result.metrics["personal_data"]["rows"] == 0


@pytest.mark.parametrize("pii,message", [({"action": "mask"}, "pii.action: 'mask' is not one of"),
                                         ({"kinds": ["email", "ssn"]}, "pii.kinds: unknown kind 'ssn'")])
def test_bad_params_fail_with_the_key(pii, message):
    with pytest.raises(StageError, match=message):
        text_params(**pii)
