"""End to end for audio: `dvc repro` of the spoken-digits task on a tiny profile, then the registered champion
predicts a folder of WAV files through `python -m stages.predict`, and Label Studio gets `<Audio>` tasks."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from tests.pipeline_utils import copy_repo, dvc, edit_params, run, stages_run, tiny_profile

pytestmark = pytest.mark.slow

WORDS = ["one", "two", "three"]


def audio_profile(params: dict) -> None:
    tiny_profile(params)
    params["run"] = ["digits"]
    task = params["tasks"]["digits"]
    task["labels"] = WORDS
    task["source"].update(words=WORDS, rates=[150], pitches=[30, 80],
                          voices=["en-us+m1", "en+f2", "en-gb-scotland+m4", "en-029+f4", "en-gb-x-rp+m5",
                                  "en-us-nyc+f3"])
    params["split"].update(val_ratio=0.2, test_ratio=0.2)
    params["train"]["n_trials"] = 1
    params["train"]["search"]["scratch"]["max_epochs"] = {"type": "int", "low": 2, "high": 2, "default": 2}
    params["train"]["scratch_model"]["audio"].update(width=8)
    params["evaluate"]["baselines"]["small_cnn"]["epochs"] = 1


def test_digits_task_builds_registers_and_predicts_a_folder_of_wavs(tmp_path):
    from stages.modalities.audio import encode_wav, synthesise

    repo = copy_repo(tmp_path / "repo")
    edit_params(repo, audio_profile)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny audio profile"], repo)
    result = dvc(["repro"], repo)
    assert stages_run(result.stdout) == {f"{s}@digits" for s in ("acquire", "clean", "label", "split", "augment",
                                                                 "train", "evaluate", "compress", "register")}
    raw = json.loads((repo / "metrics" / "digits" / "acquire.json").read_text())
    assert raw["rows"] == 3 * 6 * 2
    split = json.loads((repo / "metrics" / "digits" / "split.json").read_text())
    assert split["leakage"]["group"] == 0  # a voice never straddles two splits
    evaluation = json.loads((repo / "metrics" / "digits" / "eval.json").read_text())
    assert set(evaluation["baseline"]) == {"small_cnn"} and 0.0 <= evaluation["macro_f1"] <= 1.0
    registered = json.loads((repo / "models" / "digits" / "registered.json").read_text())
    assert registered["name"] == "digits-classifier" and registered["alias"] == "champion"
    tasks = json.loads((repo / "data" / "digits" / "review.json").read_text())
    assert all(t["data"]["audio"].startswith("data:audio/wav;base64,") for t in tasks)

    folder = tmp_path / "recordings"
    folder.mkdir()
    for word in WORDS:
        samples, rate = synthesise(word, voice="en-us+m3", rate=140, pitch=55)
        (folder / f"{word}.wav").write_bytes(encode_wav(samples.astype(np.float32) / 32768, rate))
    (folder / "empty.wav").write_bytes(b"")
    result = run([sys.executable, "-m", "stages.predict", "--model", "models:/digits-classifier@champion",
                  str(folder)], repo)
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("file,label,confidence,rejected") and len(lines) == 5
    assert any(line.endswith("empty_file" + "," * len(WORDS)) or ",empty_file," in line for line in lines)
