"""Personal-data detection: ours (stages/modalities/pii.py) vs presidio-analyzer, precision and recall per kind.

Plants e-mail addresses, phone numbers (UK and US, national and international formats, from allocated ranges),
IPv4 and IPv6 addresses, payment card numbers (Visa, Mastercard, Amex; spaced, dashed, plain) and IBANs (GB, DE,
FR, NL; grouped and compact) into the bundled BBC News articles, one sentence each, beside look-alikes that are not personal data:
version numbers, dates, times, sports scores, prices, Luhn-failing order numbers, ISBNs, IBANs with a bad
checksum, @handles. A detected span counts as correct when it overlaps a planted span of its kind.

Articles in which either detector finds anything before planting are left out (a handful: real helpline
numbers), so the ground truth is exactly what was planted. The baseline is what a user would pick instead:
presidio-analyzer's AnalyzerEngine with its default recognizers, run offline on a blank spaCy pipeline (no
model download; only its NER-based PERSON/LOCATION need a model) and tldextract on its bundled suffix list.

    .venv/bin/python benchmarks/pii.py [--articles 800] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import string
import tempfile
import time
from collections import Counter
from pathlib import Path

from stages.modalities.pii import PiiParams, find

KINDS = ("email", "phone", "ip", "card", "iban")
PRESIDIO = {"EMAIL_ADDRESS": "email", "PHONE_NUMBER": "phone", "IP_ADDRESS": "ip", "CREDIT_CARD": "card",
            "IBAN_CODE": "iban"}
FIRST = ["james", "olivia", "amir", "chen", "sophie", "liam", "fatima", "noah", "ewa", "kofi"]
LAST = ["smith", "jones", "khan", "nguyen", "brown", "garcia", "okafor", "novak", "taylor", "murphy"]
DOMAINS = ["bbc.co.uk", "gmail.com", "example.org", "mail.ox.ac.uk", "outlook.com", "company-news.co.uk"]


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    local = rng.choice([f"{first}.{last}", f"{first[0]}{last}{rng.randint(1, 99)}", f"{first}_{last}+press",
                        f"{last}.{first}"])
    return f"{local}@{rng.choice(DOMAINS)}"


def phone(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    return rng.choice([
        f"020 7{d(3)} {d(4)}", f"+44 20 3{d(3)} {d(4)}", f"(020) 8{d(3)} {d(4)}", f"0161 {rng.randint(200, 999)} {d(4)}",
        f"+44 (0)113 {rng.randint(200, 499)} {d(4)}", f"07{rng.choice('45789')}{d(2)} {d(6)}",
        f"+44 7{rng.choice('45789')}{d(2)} {d(6)}", f"({rng.choice(['212', '415', '617', '312'])}) "
        f"{rng.randint(200, 999)}-{d(4)}", f"+1 {rng.choice(['202', '646', '503'])}-{rng.randint(200, 999)}-{d(4)}",
        f"{rng.choice(['213', '305', '720'])}.{rng.randint(200, 999)}.{d(4)}"])


def ip(rng: random.Random) -> str:
    r = lambda: rng.randint(1, 254)  # noqa: E731
    return rng.choice([f"192.168.{r()}.{r()}", f"10.{r()}.{r()}.{r()}", f"203.0.113.{r()}", f"81.{r()}.{r()}.{r()}",
                       f"2001:db8::{rng.randint(1, 65535):x}:{rng.randint(1, 65535):x}",
                       f"fe80::{rng.randint(1, 65535):x}:{rng.randint(1, 65535):x}:{rng.randint(1, 65535):x}"])


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def card(rng: random.Random) -> str:
    scheme = rng.choice(["visa", "mc", "amex"])
    if scheme == "amex":
        digits = luhn_complete(rng.choice(["34", "37"]), 15, rng)
        groups = [digits[:4], digits[4:10], digits[10:]]
    else:
        digits = luhn_complete("4" if scheme == "visa" else str(rng.randint(51, 55)), 16, rng)
        groups = [digits[i:i + 4] for i in range(0, 16, 4)]
    return rng.choice([" ", "-", ""]).join(groups)


def iban(rng: random.Random, *, valid: bool = True) -> str:
    country, bban = rng.choice([
        ("GB", "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits)
                                                                                      for _ in range(14))),
        ("DE", "".join(rng.choice(string.digits) for _ in range(18))),
        ("FR", "".join(rng.choice(string.digits) for _ in range(23))),
        ("NL", "".join(rng.choice(string.ascii_uppercase) for _ in range(4)) + "".join(rng.choice(string.digits)
                                                                                      for _ in range(10)))])
    number = int("".join(str(int(ch, 36)) for ch in bban + country + "00"))
    check = 98 - number % 97 if valid else (98 - number % 97) % 97 + 1
    compact = f"{country}{check:02d}{bban}"
    return rng.choice([compact, " ".join(compact[i:i + 4] for i in range(0, len(compact), 4))])


TEMPLATES = {
    "email": ["Readers can write to {} with their views.", "Contact {} for a copy of the report."],
    "phone": ["Anyone with information should call {} in confidence.", "Tickets are available on {} from Monday."],
    "ip": ["The attack came from the address {}, investigators said.", "Logs showed the server {} was reached."],
    "card": ["The card {} was used at the shop.", "Police said {} had been cloned."],
    "iban": ["Donations can be sent to {} by bank transfer.", "The fund's account is {} at the bank."],
}


def look_alike(rng: random.Random) -> str:
    d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))  # noqa: E731
    order = luhn_complete("4", 16, rng)
    order = order[:-1] + str((int(order[-1]) + 1) % 10)  # a 16-digit number that fails Luhn
    return rng.choice([
        f"Version {rng.randint(1, 12)}.{rng.randint(0, 20)}.{rng.randint(0, 99)} of the software was released.",
        f"The update, version {rng.randint(6, 11)}.0.{d(5)}.{rng.randint(1, 999)}, fixed the flaw.",
        f"Firmware v{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(1, 200)} is out.",
        f"The match finished {rng.randint(0, 5)}-{rng.randint(0, 5)} on "
        f"{rng.randint(1, 28)}.{rng.randint(1, 12):02d}.20{rng.randint(10, 24)}.",
        f"He won 7-6 (7-{rng.randint(2, 5)}) 4-6 6-{rng.randint(0, 4)} 6-{rng.randint(0, 4)} in the final.",
        f"Profits rose to £{rng.randint(1, 999)},{d(3)},{d(3)} "
        f"between 19{rng.randint(80, 99)}-20{rng.randint(10, 24)}.",
        f"Order {' '.join(order[i:i + 4] for i in range(0, 16, 4))} was never delivered.",
        f"The ISBN is 978-0-{d(3)}-{d(5)}-{rng.randint(0, 9)} and the event starts at "
        f"{rng.randint(10, 23)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}.",
        f"The code {iban(rng, valid=False)} failed its check.",
        f"Follow @{rng.choice(LAST)}news for updates, the station said on "
        f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/20{rng.randint(10, 24)}.",
    ])


MAKERS = {"email": email, "phone": phone, "ip": ip, "card": card, "iban": iban}


def plant(text: str, rng: random.Random) -> tuple[str, list[tuple[str, int, int]]]:
    """`text` with 3 planted items and 2 look-alike sentences appended at sentence ends; returns the spans."""
    sentences = [s for s in text.replace("\n", " ").split(". ") if s]
    inserts: list[tuple[str | None, str, str]] = []
    for kind in rng.sample(KINDS, 3):
        value = MAKERS[kind](rng)
        inserts.append((kind, rng.choice(TEMPLATES[kind]).format(value), value))
    inserts += [(None, look_alike(rng), "") for _ in range(2)]
    positions = sorted(rng.sample(range(len(sentences) + 1), k=len(inserts)))
    pieces: list[str] = []
    spans: list[tuple[str, int, int]] = []
    for i, sentence in enumerate([*sentences, ""]):
        while positions and positions[0] == i:
            positions.pop(0)
            kind, planted, value = inserts.pop(0)
            if kind:
                start = sum(len(p) + 1 for p in pieces) + planted.index(value)  # pieces are joined by one space
                spans.append((kind, start, start + len(value)))
            pieces.append(planted)
        if sentence:
            pieces.append(sentence.rstrip(".") + ".")
    return " ".join(pieces), spans


def presidio_detector():
    """presidio-analyzer's AnalyzerEngine with default recognizers, offline: a blank spaCy pipeline on disk."""
    import logging

    import spacy
    import tldextract
    import tldextract.tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    # presidio's e-mail check calls tldextract, which would fetch the public suffix list over the network;
    # its bundled snapshot is the offline configuration a user would choose
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    model_dir = tempfile.mkdtemp(prefix="blank-spacy-")
    spacy.blank("en").to_disk(model_dir)
    engine = AnalyzerEngine(nlp_engine=SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model_dir}]),
                            supported_languages=["en"])

    def detect(text: str) -> list[tuple[str, int, int]]:
        results = engine.analyze(text, language="en", entities=list(PRESIDIO))
        return [(PRESIDIO[r.entity_type], r.start, r.end) for r in results]

    return detect


def ours_detector():
    params = PiiParams(action="redact", kinds=list(KINDS), phone_regions=["GB", "US"])
    return lambda text: [(s.kind, s.start, s.end) for s in find(text, params)]


def score(found: list[list[tuple[str, int, int]]], truth: list[list[tuple[str, int, int]]]) -> dict[str, tuple]:
    """Per kind: (precision, recall, true positives, false positives, planted)."""
    tp, fp, hit, planted = Counter(), Counter(), Counter(), Counter()
    for predicted, gold in zip(found, truth):
        for kind, start, end in predicted:
            if any(k == kind and start < e and s < end for k, s, e in gold):
                tp[kind] += 1
            else:
                fp[kind] += 1
        for kind, start, end in gold:
            planted[kind] += 1
            if any(k == kind and start < e and s < end for k, s, e in predicted):
                hit[kind] += 1
    return {k: (tp[k] / (tp[k] + fp[k]) if tp[k] + fp[k] else 0.0, hit[k] / planted[k] if planted[k] else 0.0,
                tp[k], fp[k], planted[k]) for k in KINDS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--articles", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from stages.acquire import SOURCES
    from stages.modalities import get_modality

    text = get_modality("text")
    items = sorted(SOURCES["bbc_news"]({}, text, Path(".")).items, key=lambda it: it.source_ref)
    rng = random.Random(args.seed)
    detectors = {"ours (stages/modalities/pii.py)": ours_detector()}
    started = time.perf_counter()
    detectors["presidio-analyzer 2.2.366"] = presidio_detector()
    presidio_load = time.perf_counter() - started

    articles, excluded = [], 0
    for item in rng.sample(items, len(items)):
        if len(articles) == args.articles:
            break
        if any(detect(item.payload) for detect in detectors.values()):
            excluded += 1
            continue
        articles.append(item.payload)
    planted = [plant(article, rng) for article in articles]
    texts, truth = [p[0] for p in planted], [p[1] for p in planted]
    print(f"{len(texts)} BBC News articles ({excluded} left out: a detector found something before planting), "
          f"{sum(map(len, truth))} planted items, {2 * len(texts)} look-alike sentences; presidio set-up "
          f"{presidio_load:.1f} s")
    results = {}
    for name, detect in detectors.items():
        started = time.perf_counter()
        found = [detect(t) for t in texts]
        results[name] = (score(found, truth), time.perf_counter() - started)
    names = list(results)
    header = f"{'kind':6} {'planted':>7} | " + " | ".join(f"{n[:30]:>30}" for n in names)
    print(header)
    print(f"{'':6} {'':>7} | " + " | ".join(f"{'precision  recall     FP':>30}" for _ in names))
    for kind in KINDS:
        cells = []
        for name in names:
            p, r, _, fp, n = results[name][0][kind]
            cells.append(f"{p:>9.4f} {r:>7.4f} {fp:>8d}")
        print(f"{kind:6} {results[names[0]][0][kind][4]:>7d} | " + " | ".join(f"{c:>30}" for c in cells))
    print("articles/s: " + ", ".join(f"{n.split(' ')[0]} {len(texts) / s:.0f}" for n, (_, s) in results.items())
          + f" (x{results[names[1]][1] / results[names[0]][1]:.2f} ours vs baseline)")


if __name__ == "__main__":
    main()
