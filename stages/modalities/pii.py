"""Personal data in text: e-mail addresses, phone numbers, IP addresses, payment cards and IBANs.

Each kind is a detector in `DETECTORS` (a registry: `clean.by_modality.text.pii.kinds` names them) that yields
candidate spans from a pattern and keeps only those a validator accepts, which is what keeps look-alikes out:
card numbers must pass the Luhn check and start like a card scheme, IBANs must pass ISO 13616's mod-97 check
with their country's length, IP addresses must parse (and not follow "version"), and phone numbers must be
valid numbers for one of the configured regions (Google's libphonenumber metadata, via `phonenumbers`), so
dates, times, years, version numbers and prices are not phones.

Person names are not detected: no named-entity model ships in any package this project installs offline.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

PLACEHOLDERS = {"email": "<EMAIL>", "phone": "<PHONE>", "ip": "<IP>", "card": "<CARD>", "iban": "<IBAN>"}
ACTIONS = ("redact", "quarantine", "off")


@dataclass(frozen=True)
class PiiParams:
    action: str                    # redact (typed placeholders) | quarantine (row quarantined) | off
    kinds: list[str]               # detectors to run, in DETECTORS
    phone_regions: list[str]       # ISO 3166 regions whose national formats count as phone numbers


@dataclass(frozen=True)
class Span:
    kind: str
    start: int
    end: int


_EMAIL = re.compile(r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@"
                    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
_VERSION_BEFORE = re.compile(r"\b(?:v|version|release|build|ver\.?|firmware|update)\s*$", re.IGNORECASE)
_DATE = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_DIGIT_RUNS = re.compile(r"\d+")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])")
# ISO 13616 lengths of the commonest countries; others need 15-34 characters and the checksum
_IBAN_LENGTHS = {"AT": 20, "BE": 16, "CH": 21, "CZ": 24, "DE": 22, "DK": 18, "ES": 24, "FI": 18, "FR": 27, "GB": 22,
                 "GR": 27, "HU": 28, "IE": 22, "IT": 27, "LU": 20, "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24,
                 "SE": 24, "SK": 24}


def _email(text: str, params: PiiParams) -> Iterator[tuple[int, int]]:
    for match in _EMAIL.finditer(text):
        yield match.span()


def _ip(text: str, params: PiiParams) -> Iterator[tuple[int, int]]:
    for pattern in (_IPV4, _IPV6):
        for match in pattern.finditer(text):
            value = match.group()
            if pattern is _IPV6 and value.count(":") < 2:
                continue
            try:
                ipaddress.ip_address(value)
            except ValueError:
                continue
            # "version 10.0.19041.1" and "v1.2.3.4" parse as addresses; the word before says they are not
            if _VERSION_BEFORE.search(text[max(0, match.start() - 12):match.start()]):
                continue
            yield match.span()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_scheme(digits: str) -> bool:
    """Whether the number starts and is as long as a payment card scheme's (Visa, Mastercard, Amex, ...)."""
    n, p2, p4 = len(digits), int(digits[:2]), int(digits[:4])
    return ((digits[0] == "4" and n in (13, 16, 19)) or (51 <= p2 <= 55 and n == 16) or (2221 <= p4 <= 2720 and n == 16)
            or (p2 in (34, 37) and n == 15) or ((p4 == 6011 or p2 == 65 or 644 <= int(digits[:3]) <= 649) and n >= 16)
            or (p2 in (36, 38, 39) and n >= 14) or (300 <= int(digits[:3]) <= 305 and n >= 14)
            or (3528 <= p4 <= 3589 and n >= 16) or (p2 == 62 and n >= 16))


def _card(text: str, params: PiiParams) -> Iterator[tuple[int, int]]:
    for match in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", match.group())
        if 13 <= len(digits) <= 19 and _card_scheme(digits) and luhn_ok(digits):
            yield match.span()


def iban_ok(value: str) -> bool:
    compact = value.replace(" ", "").upper()
    expected = _IBAN_LENGTHS.get(compact[:2])
    if (expected and len(compact) != expected) or not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _iban(text: str, params: PiiParams) -> Iterator[tuple[int, int]]:
    for match in _IBAN.finditer(text):
        value = match.group()
        # the pattern is greedy: a following word of capitals can join it, so try shorter prefixes too
        for end in range(len(value), 14, -1):
            if value[end - 1] != " " and iban_ok(value[:end]):
                yield match.start(), match.start() + end
                break


def _phone(text: str, params: PiiParams) -> Iterator[tuple[int, int]]:
    import phonenumbers

    if not any(ch.isdigit() for ch in text):
        return
    codes = [m.span() for m in _IBAN.finditer(text)]  # account-like codes, valid or not, are not phone numbers
    for region in params.phone_regions:
        for match in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            raw = match.raw_string
            if (max(map(len, _DIGIT_RUNS.findall(raw)), default=0) < 3  # a score or list: "7-6 (7-5) 4-6 6-3"
                    or raw.count(".") > 2 or _DATE.fullmatch(raw.strip())  # "7.0.44653.958", "13.10.2024"
                    or _VERSION_BEFORE.search(text[max(0, match.start - 12):match.start])
                    or any(match.start < e and s < match.end for s, e in codes)):
                continue
            yield match.start, match.end


# kind -> fn(text, params) yielding (start, end); earlier kinds win where spans overlap (a card's digits are not
# also a phone number)
DETECTORS: dict[str, Callable[[str, PiiParams], Iterator[tuple[int, int]]]] = {
    "email": _email, "iban": _iban, "card": _card, "ip": _ip, "phone": _phone,
}


def check_params(params: PiiParams, where: str) -> None:
    """One line naming the key for an unknown action or kind."""
    from stages.common import StageError

    if params.action not in ACTIONS:
        raise StageError(f"params.yaml: {where}.action: {params.action!r} is not one of {list(ACTIONS)}")
    unknown = [k for k in params.kinds if k not in DETECTORS]
    if unknown:
        raise StageError(f"params.yaml: {where}.kinds: unknown kind {unknown[0]!r}; known: {sorted(DETECTORS)}")


def find(text: str, params: PiiParams) -> list[Span]:
    """Non-overlapping personal-data spans of `text`, in text order."""
    taken: list[Span] = []
    for kind in DETECTORS:
        if kind not in params.kinds:
            continue
        for start, end in DETECTORS[kind](text, params):
            if not any(start < s.end and s.start < end for s in taken):
                taken.append(Span(kind, start, end))
    return sorted(taken, key=lambda s: s.start)


def redact(text: str, spans: Sequence[Span]) -> str:
    """`text` with each span replaced by its kind's placeholder (`<EMAIL>`, `<PHONE>`, ...)."""
    out, last = [], 0
    for span in sorted(spans, key=lambda s: s.start):
        out += [text[last:span.start], PLACEHOLDERS[span.kind]]
        last = span.end
    return "".join(out) + text[last:]
