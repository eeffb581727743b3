"""The CMU-MOSI builder on miniature fake releases: the release's own files, score tables, and MMSA's layout."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from mister_e.cli import main
from mister_e.data import MOSI_LABELS, SPLITS, build_mosi, load_mosi_acoustic, mosi_release_folds
from mister_e.data.storage import load_dialogues

from release_files import fake_ffmpeg, labels_of, write_csv, write_wav

pytestmark = pytest.mark.usefixtures("offline_hf_home")


MOSI_FOLDS = {"train": ["vidA", "vid_B"], "valid": ["vidC"], "test": ["vidD"]}
# segment id, text, score; vid_B has an underscore in its id, and clip 10 must follow clip 2.
MOSI_SEGMENTS = [("vidA_10", "IT WAS BAD", -1.4), ("vidA_2", "I LIKED IT", 2.0), ("vid_B_1", "MEH", 0.0),
                 ("vid_B_2", "GOOD", 0.6), ("vidC_1", "AWFUL", -2.8), ("vidD_1", "FINE", 0.0),
                 ("vidD_3", "GREAT", 3.0)]  # fmt: skip
MOSI_HEADER = ["segment_id", "video_id", "clip", "text", "sentiment"]


def make_mosi_release(root: Path) -> Path:
    rows = [[segment, text, 1, int(score >= 0)] for segment, text, score in MOSI_SEGMENTS]
    write_csv(root / "transcripts.csv", rows)
    (root / "mosi_standard_folds.json").write_text(json.dumps(MOSI_FOLDS))
    rng = np.random.default_rng(0)
    for part, rows_of_part in (("train", [0, 2, 4, 6]), ("test", [1, 3, 5])):
        write_csv(root / f"text_{part}.csv", [[row, *rng.normal(size=3)] for row in rows_of_part])
        acoustic = [[*np.full(73, row, float), int(MOSI_SEGMENTS[row][2] >= 0)] for row in rows_of_part]
        write_csv(root / f"audio_{part}0.csv", acoustic)
    return root


def make_mosi_scores(root: Path, audio: bool = False) -> Path:
    rows = []
    for segment, text, score in MOSI_SEGMENTS:
        video, _, clip = segment.rpartition("_")
        rows.append([segment, video, clip, text.lower(), score] + ([f"wav/{segment}.wav"] if audio else []))
        if audio:
            write_wav(root / "wav" / f"{segment}.wav")
    write_csv(root / "mosi.csv", rows, MOSI_HEADER + (["audio"] if audio else []))
    (root / "mosi_standard_folds.json").write_text(json.dumps(MOSI_FOLDS))
    return root


def test_mosi_release_with_acoustic_vectors(tmp_path):
    root = make_mosi_release(tmp_path / "mosi")
    dialogues = build_mosi(root, acoustic=True)
    assert {split: len(dialogues[split]) for split in SPLITS} == {"train": 2, "validation": 1, "test": 1}
    row = dialogues["train"][0]
    assert row["dialogue_id"] == "vidA" and row["utterance_ids"] == ["vidA_2", "vidA_10"]
    assert labels_of(dialogues["train"]) == ["positive", "negative"] and row["speakers"] == ["vidA", "vidA"]
    assert dialogues["train"][1]["utterance_ids"] == ["vid_B_1", "vid_B_2"]
    assert row["speech_embeds"] == [[1.0] * 73, [0.0] * 73]  # vidA_2, vidA_10: rows 1 and 0 of transcripts.csv
    assert dialogues["test"].features["labels"].feature.names == MOSI_LABELS
    assert len(load_mosi_acoustic(root)) == len(MOSI_SEGMENTS)
    with pytest.raises(ValueError, match="binary labels only"):
        build_mosi(root, label_rule="nonzero")


def test_mosi_release_folds(tmp_path):
    root = make_mosi_release(tmp_path / "mosi")
    with pytest.raises(ValueError, match=r"videos in both text_train\.csv and text_test\.csv \(first: vidA, vidD"):
        mosi_release_folds(root)  # the fixture's release mixes videos across its parts
    write_csv(root / "text_train.csv", [[row, 0.0] for row in (0, 1, 2, 3, 4)])
    write_csv(root / "text_test.csv", [[row, 0.0] for row in (5, 6)])
    folds = mosi_release_folds(root, validation_every=2)
    assert folds == {"train": ["vidC"], "test": ["vidD"], "valid": ["vidA", "vid_B"]}
    (root / "release_folds.json").write_text(json.dumps(folds))
    dialogues = build_mosi(root, folds=root / "release_folds.json")
    assert [dialogues[split]["dialogue_id"] for split in SPLITS] == [["vidC"], ["vidA", "vid_B"], ["vidD"]]
    write_csv(root / "text_test.csv", [[9, 0.0]])
    with pytest.raises(ValueError, match=r"text_test\.csv: a row number is outside transcripts\.csv"):
        mosi_release_folds(root)


@pytest.mark.parametrize(
    ("rule", "test_labels"), [("nonnegative", ["positive", "positive"]), ("nonzero", ["positive"])]
)
def test_mosi_scores_label_rules(tmp_path, rule, test_labels):
    dialogues = build_mosi(make_mosi_scores(tmp_path / "mosi", audio=True) / "mosi.csv", label_rule=rule)
    assert labels_of(dialogues["test"]) == test_labels
    assert labels_of(dialogues["train"], 1) == (["positive", "positive"] if rule == "nonnegative" else ["positive"])
    assert all(Path(path).is_file() for path in dialogues["test"][0]["audio"])


def test_mosi_bad_layouts(tmp_path):
    root = make_mosi_scores(tmp_path / "mosi")
    audio = tmp_path / "segments"
    write_wav(audio / "vidA_2.wav")
    with pytest.raises(FileNotFoundError, match=r"6 of 7 utterances have no audio"):
        build_mosi(root, audio_dir=audio)
    assert build_mosi(root, audio_dir=audio, allow_missing_audio=True)["train"][0]["audio"][0].endswith("vidA_2.wav")
    with pytest.raises(ValueError, match="label_rule"):
        build_mosi(root, label_rule="positive")
    (root / "mosi_standard_folds.json").write_text(json.dumps({**MOSI_FOLDS, "test": []}))
    with pytest.raises(ValueError, match=r"1 videos are in no fold of .*mosi_standard_folds\.json \(first: vidD"):
        build_mosi(root)
    write_csv(root / "mosi.csv", [["vidA_1", "vidA", 1, "hi", 4.5]], MOSI_HEADER)
    with pytest.raises(ValueError, match=r"mosi\.csv row 1: sentiment must be a number in \[-3, 3\]"):
        build_mosi(root)
    write_csv(root / "mosi.csv", [["vidA_1", "vidA", 1, "hi"]], MOSI_HEADER[:-1])
    with pytest.raises(ValueError, match=r"mosi\.csv lacks column\(s\) \['sentiment'\]"):
        build_mosi(root)
    with pytest.raises(FileNotFoundError, match="transcripts.csv"):
        build_mosi(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("folds", "message"),
    [
        ('[["vidA"], ["vidC"], ["vidD"]]', r"folds\.json: expected a JSON object of train/valid/test lists"),
        ('{"train": ["vidA", "vid_B"], "valid": [["vidC"]], "test": ["vidD"]}', r"folds\.json: key 'valid' must be"),
        ('{"train": ["vidA", "vid_B"], "valid": [7], "test": ["vidD"]}', r"folds\.json: key 'valid' must be a list"),
        ('{"train": ["vidA", "vid_B"],\n', r"folds\.json is not valid JSON: Expecting"),
        ('{"train": ["vidA", "vid_B", "vidC"], "valid": [], "test": ["vidD"]}',
         r"mosi\.csv: no segment falls in the validation split of .*folds\.json"),
    ],
)  # fmt: skip
def test_mosi_bad_folds_are_named(tmp_path, folds, message):
    root = make_mosi_scores(tmp_path / "mosi")
    (root / "folds.json").write_text(folds)
    with pytest.raises(ValueError, match=message):
        build_mosi(root, folds=root / "folds.json")


def test_mosi_bad_release_files_are_named(tmp_path, capsys):
    root = make_mosi_release(tmp_path / "mosi")
    acoustic = (root / "audio_train0.csv").read_text()
    for bad in ("nan", "-inf"):
        (root / "audio_train0.csv").write_text(acoustic.replace('"2.0"', f'"{bad}"', 1))  # row 2: segment 2
        with pytest.raises(ValueError, match=r"audio_train0\.csv row 2: non-finite value"):
            build_mosi(root, acoustic=True)
    assert main(["prepare", "mosi", str(root), str(tmp_path / "out"), "--acoustic"]) == 2
    assert "audio_train0.csv row 2" in capsys.readouterr().err and not (tmp_path / "out").exists()
    make_mosi_release(root)
    (root / "text_test.csv").write_text("")
    with pytest.raises(ValueError, match=r"text_test\.csv has no rows"):
        build_mosi(root, acoustic=True)
    make_mosi_release(root)
    (root / "transcripts.csv").write_bytes((root / "transcripts.csv").read_bytes().replace(b"MEH", b"M\xe9H"))
    with pytest.raises(ValueError, match=r"transcripts\.csv is not UTF-8"):
        build_mosi(root)
    (root / "mosi.csv").write_bytes(b"segment_id,video_id,clip,text,sentiment\nvidA_1,vidA,1,caf\xe9,1.0\n")
    with pytest.raises(ValueError, match=r"mosi\.csv is not UTF-8"):
        build_mosi(root)
    (root / "mosi.csv").unlink()
    make_mosi_release(root)
    (root / "audio_test0.csv").write_bytes(b"\xff" + (root / "audio_test0.csv").read_bytes())  # a traceback
    with pytest.raises(ValueError, match=r"audio_test0\.csv is not UTF-8 text \(line 1, byte 0"):
        build_mosi(root, acoustic=True)


# --- MMSA ---------------------------------------------------------------------------------------------


# MMSA's CMU-MOSI folder (thuiar/MMSA, MMSA-FET): label.csv in this column order, clips Raw/<video_id>/<clip_id>.mp4.
MMSA_HEADER = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
MMSA_MODES = {video: mode for mode, videos in MOSI_FOLDS.items() for video in videos}


def make_mmsa(root: Path, clips: bool = False) -> Path:
    """Upper-case text and empty unimodal labels, as in MMSA's MOSI; rows in file order (vidA_10 before vidA_2)."""
    rows = []
    for segment, text, score in MOSI_SEGMENTS:
        video, _, clip = segment.rpartition("_")
        annotation = "Positive" if score > 0 else "Negative" if score < 0 else "Neutral"
        rows.append([video, clip, text, score, "", "", "", annotation, MMSA_MODES[video]])
        if clips:
            (root / "Raw" / video).mkdir(parents=True, exist_ok=True)
            (root / "Raw" / video / f"{clip}.mp4").write_bytes(b"not really a video")
    write_csv(root / "label.csv", rows, MMSA_HEADER)
    return root


@pytest.mark.parametrize(
    ("rule", "vid_b", "vid_d"),
    [("nonnegative", (["vid_B_1", "vid_B_2"], ["positive", "positive"]), ["positive", "positive"]),
     ("nonzero", (["vid_B_2"], ["positive"]), ["positive"])],
)  # fmt: skip
def test_mosi_mmsa_label_csv(tmp_path, rule, vid_b, vid_d):
    root = make_mmsa(tmp_path / "MOSI")
    # a folds file beside it is not MMSA's: the mode column decides unless --folds names one
    (root / "mosi_standard_folds.json").write_text(json.dumps({"train": ["vidD"], "valid": ["vidC"],
                                                               "test": ["vidA", "vid_B"]}))  # fmt: skip
    for source in (root, root / "label.csv"):
        dialogues = build_mosi(source, label_rule=rule)
        assert [dialogues[split]["dialogue_id"] for split in SPLITS] == [["vidA", "vid_B"], ["vidC"], ["vidD"]]
        row = dialogues["train"][0]
        assert row["utterance_ids"] == ["vidA_2", "vidA_10"] and row["texts"] == ["I LIKED IT", "IT WAS BAD"]
        assert labels_of(dialogues["train"]) == ["positive", "negative"] and row["speakers"] == ["vidA", "vidA"]
        assert (dialogues["train"][1]["utterance_ids"], labels_of(dialogues["train"], 1)) == (*vid_b,)
        assert labels_of(dialogues["test"]) == vid_d and labels_of(dialogues["validation"]) == ["negative"]
        assert row["audio"] == [None, None]  # no Raw/ and no audio_dir: text only
    folded = build_mosi(root, folds=root / "mosi_standard_folds.json")
    assert [folded[split]["dialogue_id"] for split in SPLITS] == [["vidD"], ["vidC"], ["vidA", "vid_B"]]


def test_mosi_mmsa_audio_dir(tmp_path, capsys):
    root, audio = make_mmsa(tmp_path / "MOSI"), tmp_path / "wavs"
    for segment, _, _ in MOSI_SEGMENTS:
        write_wav(audio / f"{segment}.wav")
    out = tmp_path / "out"
    assert main(["prepare", "mosi", str(root), str(out), "--audio-dir", str(audio), "--label-rule", "nonzero"]) == 0
    dialogues = load_dialogues(out)
    assert dialogues["train"][0]["audio"] == [str((audio / f"{s}.wav").resolve()) for s in ("vidA_2", "vidA_10")]
    assert dialogues["test"][0]["utterance_ids"] == ["vidD_3"]
    (audio / "vidC_1.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 7 utterances have no audio file in .*wavs \(first: validation"):
        build_mosi(root, audio_dir=audio)
    assert build_mosi(root, audio_dir=audio, audio=False)["train"][0]["audio"] == [None, None]


def test_mosi_mmsa_raw_clips_are_converted_once(tmp_path, monkeypatch):
    root = make_mmsa(tmp_path / "MOSI", clips=True)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match=r"7 CMU-MOSI clips .*needs FFmpeg.*<video_id>_<clip_id>\.wav.*--text-only"):
        build_mosi(root)
    assert build_mosi(root, audio=False)["test"][0]["audio"] == [None, None]
    commands = fake_ffmpeg(monkeypatch)
    dialogues = build_mosi(root, num_workers=2)
    assert len(commands) == 7 and "16000" in commands[0]
    assert str(root / "Raw" / "vidA" / "10.mp4") in [command[command.index("-i") + 1] for command in commands]
    wavs = [str((root / "wav16k" / f"{segment}.wav").resolve()) for segment in ("vidA_2", "vidA_10")]
    assert dialogues["train"][0]["audio"] == wavs
    build_mosi(root)  # a rerun converts nothing
    assert len(commands) == 7
    (root / "Raw" / "vidD" / "3.mp4").unlink()
    elsewhere = build_mosi(root, extract_to=tmp_path / "converted", allow_missing_audio=True)
    assert len(commands) == 13 and elsewhere["test"][0]["audio"][1] is None


@pytest.mark.parametrize(
    ("row", "message"),
    [(["vidA", "2", "I LIKED IT", "3.5", "", "", "", "Positive", "train"],
      r"label\.csv row 2: label must be a number in \[-3, 3\], got '3\.5'"),
     (["vidA", "2", "I LIKED IT", "", "", "", "", "Positive", "train"], r"label\.csv row 2: label must be a number"),
     (["vidA", "2", "I LIKED IT", "2.0", "", "", "", "Positive", "dev"],
      r"label\.csv row 2: mode must be one of train, valid, validation, test, got 'dev'"),
     (["vidA", "two", "I LIKED IT", "2.0", "", "", "", "Positive", "train"],
      r"label\.csv row 2: clip_id must be an integer, got 'two'"),
     (["vidA", "10", "AGAIN", "2.0", "", "", "", "Positive", "train"],
      r"label\.csv row 2: segment vidA_10 \(video_id and clip_id\) is also row 1; each segment has one row"),
     (["vidA", "2", "I LIKED IT", "2.0", "", "", "", "Positive", "test"],
      r"label\.csv row 2: mode 'test' of video vidA differs from 'train' in row 1")],
)  # fmt: skip
def test_mosi_mmsa_bad_rows_are_named(tmp_path, capsys, row, message):
    root = make_mmsa(tmp_path / "MOSI")
    rows = list(csv.reader((root / "label.csv").open(newline="", encoding="utf-8")))
    write_csv(root / "label.csv", [rows[1], row, *rows[3:]], MMSA_HEADER)
    with pytest.raises(ValueError, match=message):
        build_mosi(root)
    assert main(["prepare", "mosi", str(root), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert re.search(message, error) and len(error.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_mosi_mmsa_and_sdk_layouts_refused_with_a_reason(tmp_path, capsys):
    root = make_mmsa(tmp_path / "MOSI")
    write_csv(root / "label.csv", [["vidA", "2", "I LIKED IT", "2.0", "", "", "", "Positive"]], MMSA_HEADER[:-1])
    with pytest.raises(ValueError, match=r"label\.csv lacks column\(s\) \['mode'\]"):
        build_mosi(root)
    make_mmsa(root)
    write_csv(root / "label.csv", [["vidA", "2", "I LIKED IT", "2.0", "", "", "", "Positive", "train"]], MMSA_HEADER)
    with pytest.raises(ValueError, match=r"label\.csv: no segment falls in the validation split of its mode column"):
        build_mosi(root)
    sdk = tmp_path / "cmumosi"
    sdk.mkdir()
    (sdk / "CMU_MOSI_Opinion_Labels.csd").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(FileNotFoundError, match=r"no mosi\.csv .*label\.csv .* in .*cmumosi; .*\(\.csd, HDF5\)"):
        build_mosi(sdk)
    assert main(["prepare", "mosi", str(sdk / "CMU_MOSI_Opinion_Labels.csd"), str(tmp_path / "out")]) == 2
    assert "h5py" in capsys.readouterr().err
