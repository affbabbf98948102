"""Code tests for the audio modality: synthesis, every clean rule on bad input, duplicates, augment, models,
review and serving; FSDD's real recordings through the folder source (skipped when ../shared/data/fsdd is absent)."""

from __future__ import annotations

import io
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stages.augment import augment
from stages.clean import clean
from stages.modalities import get_modality
from stages.modalities.audio import pcm, spoken_words, synthesise

REPO = Path(__file__).resolve().parents[2]
FSDD = REPO.parent / "shared" / "data" / "fsdd" / "recordings"
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
AUDIO = get_modality("audio")
CLEAN = AUDIO.clean_params(PARAMS["clean"]["by_modality"]["audio"])
RATE = CLEAN.sample_rate


def tone(seconds: float = 0.5, rate: int = RATE, *, freq: float = 440.0, level: float = 0.3,
         channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = level * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def wav(samples: np.ndarray, rate: int = RATE, *, fmt: str = "WAV", subtype: str | None = "PCM_16") -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def huge_declared_length() -> bytes:
    """A WAV whose RIFF and data chunk headers claim 2 GiB; the file holds 0.5 s."""
    raw = wav(tone())
    at = raw.find(b"data")
    raw = raw[:at + 4] + struct.pack("<I", 0x7FFFFFF0) + raw[at + 8:]
    return raw[:4] + struct.pack("<I", 0x7FFFFFF8) + raw[8:]


BAD_INPUT = {  # name -> (payload, expected reason or None for a kept, converted row)
    "zero_bytes": (b"", "empty_file"),
    "truncated_wav": (wav(tone())[:30], "corrupt_audio"),
    "text_named_wav": (b"this is a text file, not a recording\n" * 4, "corrupt_audio"),
    "unsupported_container": (wav(tone(), fmt="AIFF"), "format_not_allowed"),
    "zero_samples": (wav(np.zeros(0)), "too_short"),
    "too_short": (wav(tone(0.05)), "too_short"),
    "one_hour": (wav(np.zeros(3600 * 100), 100), "too_long"),  # 1 h at 100 Hz: refused from the header alone
    "silence": (wav(np.zeros(RATE)), "silent"),
    "clipped_square_wave": (wav(np.sign(np.sin(2 * np.pi * 200 * np.arange(RATE) / RATE)) * 1.0), "clipped"),
    "not_bytes": ("a string", "not_bytes"),
    "eight_bit": (wav(tone(), subtype="PCM_U8"), None),
    "float32": (wav(tone(), subtype="FLOAT"), None),
    "stereo": (wav(tone(channels=2)), None),
    "8_khz": (wav(tone(rate=8000), 8000), None),
    "48_khz": (wav(tone(rate=48000), 48000), None),
    "flac": (wav(tone(), fmt="FLAC"), None),
    "ogg": (wav(tone(), fmt="OGG", subtype="VORBIS"), None),
    "huge_declared_length": (huge_declared_length(), None),  # libsndfile reads what is there: 0.5 s
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_each_bad_input_is_converted_or_quarantined_with_a_reason(name):
    payload, expected = BAD_INPUT[name]
    out, reason = AUDIO.normalise(payload, CLEAN)
    assert reason == expected
    if expected is None:
        samples, rate = pcm(out)
        assert rate == RATE and samples.ndim == 1 and 0.4 < len(samples) / rate < 0.6
        assert out[:4] == b"RIFF" and abs(20 * np.log10(np.sqrt(np.mean(samples ** 2))) - CLEAN.target_rms_db) < 1.0
        assert AUDIO.normalise(out, CLEAN) == (out, None) or AUDIO.normalise(out, CLEAN)[1] is None


def frame(payloads: list, labels: list | None = None) -> pd.DataFrame:
    labels = labels or ["one"] * len(payloads)
    return pd.DataFrame([{"id": f"r{i:03d}", "modality": "audio", "audio": p, "label": lab, "source": "test"}
                         for i, (p, lab) in enumerate(zip(payloads, labels))])


def test_clean_conserves_rows_and_counts_each_reason():
    names = sorted(BAD_INPUT)
    result = clean(frame([BAD_INPUT[n][0] for n in names]), AUDIO, CLEAN, exact_dedup=True, near_dedup="mark")
    assert len(result.kept) + len(result.quarantine) == len(names)
    expected = pd.Series([r for r in (BAD_INPUT[n][1] for n in names) if r]).value_counts().to_dict()
    # the kept conversions are the same tone: one survives, the rest are exact or near duplicates of it
    counts = result.quarantine["quarantine_reason"].value_counts().to_dict()
    for reason, count in expected.items():
        assert counts.pop(reason) == count, reason
    assert set(counts) <= {"exact_duplicate", "near_duplicate"}


def test_gain_changed_trimmed_and_flac_copies_are_duplicates_other_words_are_not():
    original, rate = synthesise("seven", voice="en-us+m3", rate=150, pitch=50)
    samples = original.astype(np.float32) / 32768
    other, _ = synthesise("three", voice="en-us+m3", rate=150, pitch=50)
    copies = [wav(samples, rate), wav(samples * 0.5, rate), wav(samples[: -int(0.05 * rate)], rate),
              wav(samples, rate, fmt="FLAC"), wav(other.astype(np.float32) / 32768, rate)]
    result = clean(frame(copies), AUDIO, CLEAN, exact_dedup=True, near_dedup="quarantine")
    assert list(result.kept["id"]) == ["r000", "r004"]
    assert set(result.quarantine["quarantine_reason"]) <= {"exact_duplicate", "near_duplicate"}
    assert result.metrics["quarantined_by_reason"].get("near_duplicate", 0) >= 1


def test_spoken_words_are_seeded_synthetic_speech_with_provenance():
    spec = {"kind": "spoken_words", "words": ["one", "two"], "voices": ["en-us+m3", "en+f2"], "rates": [120, 170],
            "pitches": [30], "license": "CC0-1.0"}
    made = spoken_words(spec, seed=1)
    assert len(made.rows) == 2 * 2 * 2 and made.license == "CC0-1.0"
    assert made.source_name.startswith("espeak-ng:")
    assert {r["voice"] for r in made.rows} == {"en-us+m3", "en+f2"} and {r["rate"] for r in made.rows} == {120, 170}
    assert [r["payload"] for r in spoken_words(spec, seed=1).rows] == [r["payload"] for r in made.rows]
    samples, rate = pcm(made.rows[0]["payload"])
    assert rate == 22050 and 0.2 < len(samples) / rate < 1.5 and np.abs(samples).max() > 0.1
    slow = next(r for r in made.rows if r["rate"] == 120 and r["label"] == "one" and r["voice"] == "en+f2")
    fast = next(r for r in made.rows if r["rate"] == 170 and r["label"] == "one" and r["voice"] == "en+f2")
    assert len(pcm(slow["payload"])[0]) > len(pcm(fast["payload"])[0])
    with pytest.raises(Exception, match="no voice"):
        spoken_words({**spec, "voices": ["xx-nonexistent"]}, seed=1)


def test_augment_copies_train_rows_only_keeping_their_parent():
    rows = frame([AUDIO.normalise(wav(tone(freq=f)), CLEAN)[0] for f in (300, 500, 700, 900)])
    rows["split"] = ["train", "train", "val", "test"]
    params = AUDIO.augment_params(PARAMS["augment"]["by_modality"]["audio"])
    out = augment(rows, AUDIO, params, copies=2, seed=3)
    copies = out[out["augmented"]]
    assert len(copies) == 4 and set(copies["split"]) == {"train"}
    assert set(copies["parent_id"]) == {"r000", "r001"}
    for payload in copies["audio"]:
        samples, rate = pcm(payload)
        assert rate == RATE and np.abs(samples).max() <= 1.0 and len(samples) > 0
    again = augment(rows, AUDIO, params, copies=2, seed=3)
    assert list(again["audio"]) == list(out["audio"])
    assert list(copies["audio"]) != list(rows["audio"][:2]) * 2


def test_backbones_baseline_input_review_and_serving():
    import torch

    payloads = [AUDIO.normalise(wav(tone(s, freq=300 + 100 * i)), CLEAN)[0] for i, s in enumerate((0.3, 1.4))]
    for section in (PARAMS["train"]["scratch_model"]["audio"], PARAMS["train"]["model"]["audio"]):
        backbone = AUDIO.build_backbone(section, pretrained=False).eval()
        batch = AUDIO.to_batch(payloads, section, backbone)
        assert batch.shape == (2, int(section["clip_seconds"] * section["sample_rate"]))
        with torch.no_grad():
            assert backbone(batch).shape == (2, backbone.feature_dim)
    assert AUDIO.baseline_input(payloads).shape == (2, 1, 32, 32)
    assert AUDIO.review_value(payloads[0]).startswith("data:audio/wav;base64,UklGR")
    from stages.inference import screen

    accepted, reasons = screen([wav(tone()), b"", wav(np.zeros(RATE))], AUDIO, CLEAN)
    assert reasons == [None, "empty_file", "silent"] and pcm(accepted[0])[1] == RATE


def test_label_studio_config_uses_the_modality_tag():
    from stages.labeling.review import label_config

    assert "<Audio name=\"audio\"" in label_config(["one", "two"], payload_column="audio",
                                                   tag=AUDIO.label_studio_tag)


def test_no_stage_outside_modalities_names_a_modality_or_tests_a_payload_type():
    """The contract: stages ask the modality, never test its name or its payload's Python type."""
    import re

    names = {m.name for m in __import__("stages.modalities", fromlist=["registered"]).registered()}
    quoted = re.compile("|".join(rf"[\"']{n}[\"']" for n in sorted(names)))
    payload_type = re.compile(r"isinstance\([^)]*(payload|value|texts?|frame\[)[^)]*\b(bytes|bytearray)\b")
    # generic type checks that are not about a modality: the contracts' declared kinds, a null test on any cell
    allowed = {"stages/contracts.py": "return isinstance(value, (bytes, bytearray))",
               "stages/labeling/review.py":
                   "if value is None or (not isinstance(value, (str, bytes)) and pd.isna(value)):"}
    offenders = []
    for path in sorted((REPO / "stages").rglob("*.py")):
        if "modalities" in path.relative_to(REPO / "stages").parts:
            continue
        for no, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if allowed.get(str(path.relative_to(REPO))) == line.strip():
                continue
            if quoted.search(code) or payload_type.search(code) or re.search(r"modality\.name\s*[=!]=", code):
                offenders.append(f"{path.relative_to(REPO)}:{no}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_fsdd_recordings_read_from_class_folders_and_clean(tmp_path):
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD} (see ../shared/data/fsdd/ABOUT.md)")
    from stages.acquire import SOURCES, acquire

    files = sorted(FSDD.glob("*_jackson_[0-2].wav")) + sorted(FSDD.glob("*_theo_[0-2].wav"))
    assert len(files) == 60, len(files)
    for path in files:  # one subfolder per class, in a temporary folder: the recordings are never copied into the repo
        (tmp_path / path.name.split("_")[0]).mkdir(exist_ok=True)
        shutil.copyfile(path, tmp_path / path.name.split("_")[0] / path.name)
    collected = SOURCES["folder"]({"kind": "folder", "license": "CC-BY-SA-4.0"}, AUDIO, tmp_path)
    raw = acquire(collected.items, modality=AUDIO, source_name=collected.source_name, license=collected.license,
                  max_per_class=None, seed=1)
    assert len(raw) == 60 and set(raw["label"]) == {str(d) for d in range(10)}
    result = clean(raw, AUDIO, CLEAN, exact_dedup=True, near_dedup="mark")
    assert len(result.kept) + len(result.quarantine) == 60
    assert len(result.kept) >= 57, result.metrics["quarantined_by_reason"]
    assert all(pcm(p)[1] == RATE for p in result.kept["audio"])


def test_predict_reads_inputs_through_the_modality(tmp_path):
    """`predict` asks the model's modality to read its input: a CSV column for text, a folder of files otherwise."""
    from stages.common import StageError
    from tests.conftest import png_bytes

    (tmp_path / "texts.csv").write_text('body\n"hello there"\n"second row"\n')
    texts = get_modality("text").read_inputs(tmp_path / "texts.csv", column="body")
    assert list(texts["text"]) == ["hello there", "second row"] and "file" not in texts
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes())
    (tmp_path / "images" / "notes.txt").write_text("skipped")
    images = get_modality("image").read_inputs(tmp_path / "images", column="image")
    assert list(images["file"]) == [str(tmp_path / "images" / "a.png")]
    (tmp_path / "clips").mkdir()
    for name in ("a.wav", "b.flac"):
        (tmp_path / "clips" / name).write_bytes(wav(tone(), fmt="FLAC" if name.endswith("flac") else "WAV"))
    clips = AUDIO.read_inputs(tmp_path / "clips", column="audio")
    assert len(clips) == 2 and all(isinstance(p, bytes) for p in clips["audio"])
    with pytest.raises(StageError, match="no audio files"):
        AUDIO.read_inputs(tmp_path / "images", column="audio")
