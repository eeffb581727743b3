"""Conversation release builders on miniature fake releases: IEMOCAP, MELD, the COSMIC / DialogueRNN pickles,
`prepare`; and the real MELD, MOSI and EmoDB files when `shared/` is there."""

from __future__ import annotations

import csv
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import load_from_disk

from mister_e import data
from mister_e.cli import build_parser, main
from mister_e.data import (
    COSMIC_SOURCES,
    DAILYDIALOG_LABELS,
    EMODB_LABELS,
    EMORYNLP_LABELS,
    IEMOCAP_LABELS,
    MELD_LABELS,
    SPLITS,
    build_cosmic_pickle,
    build_emodb,
    build_iemocap,
    build_meld,
    build_meld_csv,
    build_mosi,
    emodb_folds,
    mosi_release_folds,
    prepare,
)

from release_files import fake_ffmpeg, flat, labels_of, write_csv, write_wav

pytestmark = pytest.mark.usefixtures("offline_hf_home")


# --- IEMOCAP ------------------------------------------------------------------------------------------


# (start, utterance suffix, label, text); listed out of time order on purpose.
IEMOCAP_TURNS = [(4.0, "F001", "ang", "Leave me alone."), (1.0, "F000", "neu", "Excuse me."),
                 (2.5, "M000", "xxx", "Yeah?"), (3.0, "M001", "exc", "Great news!")]  # fmt: skip


def make_iemocap(root: Path, dialogues_per_session: int = 1) -> Path:
    for session in range(1, 6):
        folder = root / f"Session{session}"
        for index in range(dialogues_per_session):
            dialogue = f"Ses0{session}F_impro0{index + 1}"
            evaluation = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            transcript = []
            for start, suffix, label, text in IEMOCAP_TURNS:
                utterance = f"{dialogue}_{suffix}"
                evaluation.append(f"[{start:.4f} - {start + 0.5:.4f}]\t{utterance}\t{label}\t[2.5, 2.5, 2.5]")
                evaluation.append(f"C-E1:\t{label};\t()")
                transcript.append(f"{utterance} [{start:08.4f}-{start + 0.5:08.4f}]: {text}")
                write_wav(folder / "sentences" / "wav" / dialogue / f"{utterance}.wav")
            (folder / "dialog" / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
            (folder / "dialog" / "transcriptions").mkdir(parents=True, exist_ok=True)
            (folder / "dialog" / "EmoEvaluation" / f"{dialogue}.txt").write_text("\n".join(evaluation))
            (folder / "dialog" / "transcriptions" / f"{dialogue}.txt").write_text("\n".join(transcript))
    return root


def test_iemocap(tmp_path):
    root = make_iemocap(tmp_path / "IEMOCAP")
    dialogues = build_iemocap(root, validation_dialogues=1, seed=3)
    assert {split: len(dialogues[split]) for split in SPLITS} == {"train": 3, "validation": 1, "test": 1}
    assert dialogues["test"][0]["dialogue_id"] == "Ses05F_impro01"
    assert dialogues["test"].features["labels"].feature.names == IEMOCAP_LABELS
    row = dialogues["test"][0]
    # by start time, with the xxx turn left out
    assert row["utterance_ids"] == ["Ses05F_impro01_F000", "Ses05F_impro01_M001", "Ses05F_impro01_F001"]
    assert labels_of(dialogues["test"]) == ["neu", "exc", "ang"]
    assert row["texts"] == ["Excuse me.", "Great news!", "Leave me alone."]
    assert row["speakers"] == ["F", "M", "F"]
    assert all(Path(path).is_file() for path in row["audio"])
    again = build_iemocap(root, validation_dialogues=1, seed=3)
    assert again["validation"]["dialogue_id"] == dialogues["validation"]["dialogue_id"]
    with pytest.raises(ValueError, match="validation_dialogues=4"):
        build_iemocap(root, validation_dialogues=4)


def test_iemocap_bad_layouts(tmp_path):
    root = make_iemocap(tmp_path / "IEMOCAP")
    (root / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F001.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 15 utterances have no audio .*Ses01F_impro01_F001"):
        build_iemocap(root, validation_dialogues=1)
    kept = build_iemocap(root, validation_dialogues=0, allow_missing_audio=True)
    assert kept["train"][0]["audio"][2] is None and kept["train"][0]["texts"][2] == "Leave me alone."

    labels = root / "Session2/dialog/EmoEvaluation/Ses02F_impro01.txt"
    original = labels.read_text()
    labels.write_text(original.replace("\tang\t", "\tbored\t"))
    with pytest.raises(ValueError, match=r"Ses02F_impro01\.txt:\d+: unknown label 'bored'"):
        build_iemocap(root, allow_missing_audio=True)
    labels.write_text(original)
    shutil.rmtree(root / "Session5")
    with pytest.raises(FileNotFoundError, match="Session5"):
        build_iemocap(root)


def test_iemocap_release_transcript_quirks(tmp_path, capsys):
    root = make_iemocap(tmp_path / "IEMOCAP")
    transcript = root / "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    lines = transcript.read_text().splitlines()
    # real transcripts also hold untimed "M: ..." lines and unlabelled MXX/FXX turns: ignored
    lines[1:1] = ["M: Yeah.", "Ses01F_impro01_MXX0 [151.2551-153.4251]: [LAUGHTER], That's what they say."]
    transcript.write_bytes("\n".join(lines).replace("Great news!", "It\x92s great!").encode("latin-1"))
    dialogues = build_iemocap(root, validation_dialogues=0)
    row = next(row for row in dialogues["train"] if row["dialogue_id"] == "Ses01F_impro01")
    assert row["texts"] == ["Excuse me.", "It\u2019s great!", "Leave me alone."]  # cp1252 byte read, not U+FFFD

    transcript.write_text("\n".join(line for line in lines if "_F001 " not in line))
    with pytest.raises(ValueError, match=r"Ses01F_impro01\.txt has no line for Ses01F_impro01_F001, labelled in"):
        build_iemocap(root, validation_dialogues=0)  # was kept silently without its text
    assert main(["prepare", "iemocap", str(root), str(tmp_path / "out"), "--validation-dialogues", "1"]) == 2
    err = capsys.readouterr().err
    assert "no line for Ses01F_impro01_F001" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1

    make_iemocap(root)
    (root / "Session2/sentences/wav/Ses02F_impro01/Ses02F_impro01_F000.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"first: train Ses02F_impro01_F000\).*--allow-missing-audio"):
        build_iemocap(root, validation_dialogues=0)


# --- MELD ---------------------------------------------------------------------------------------------


MELD_HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
               "Episode", "StartTime", "EndTime"]  # fmt: skip
MELD_ROWS = {  # (Dialogue_ID, Utterance_ID, Speaker, Emotion, Utterance); rows out of order, train dia1 has a gap
    "train": [(1, 2, "Ross", "anger", "No!"), (0, 0, "Chandler", "neutral", "my company’s transition"),
              (0, 1, "Interviewer", "joy", "Great."), (1, 0, "Rachel", "sadness", "Oh.")],
    "dev": [(0, 0, "Monica", "surprise", "What?"), (0, 1, "Joey", "fear", "Run.")],
    "test": [(0, 0, "Phoebe", "disgust", "Eww."), (0, 1, "Ross", "neutral", "Hi.")],
}  # fmt: skip


def make_meld(root: Path) -> Path:
    for split, rows in MELD_ROWS.items():
        lines = [[n, text, speaker, emotion, "neutral", d, u, 1, 1, "00:00:01,000", "00:00:02,000"]
                 for n, (d, u, speaker, emotion, text) in enumerate(rows, start=1)]  # fmt: skip
        write_csv(root / f"{split}_sent_emo.csv", lines, MELD_HEADER)
    return root


def meld_stems(split: str) -> list[str]:
    return [f"dia{d}_utt{u}" for d, u, *_ in MELD_ROWS[split]]


def test_meld_text_only(tmp_path):
    dialogues = build_meld(make_meld(tmp_path / "MELD"))
    assert {split: len(dialogues[split]) for split in SPLITS} == {"train": 2, "validation": 1, "test": 1}
    row = dialogues["train"][0]
    assert row["dialogue_id"] == "dia0" and row["utterance_ids"] == ["dia0_utt0", "dia0_utt1"]
    assert row["texts"] == ["my company’s transition", "Great."]  # mojibake repaired
    assert row["audio"] == [None, None] and row["speakers"] == ["Chandler", "Interviewer"]
    assert dialogues["train"][1]["utterance_ids"] == ["dia1_utt0", "dia1_utt2"]
    assert labels_of(dialogues["train"], 1) == ["sadness", "anger"]
    assert dialogues["validation"].features["labels"].feature.names == MELD_LABELS


def test_meld_without_the_speaker_column_builds_the_same_conversations(tmp_path):
    root = make_meld(tmp_path / "MELD")
    for path in root.glob("*.csv"):  # speaker names are metadata only
        with path.open(newline="", encoding="utf-8") as file:
            rows = [{k: v for k, v in row.items() if k != "Speaker"} for row in csv.DictReader(file)]
        write_csv(path, [list(row.values()) for row in rows], [h for h in MELD_HEADER if h != "Speaker"])
    dialogues, reference = build_meld(root), build_meld(make_meld(tmp_path / "reference"))
    assert dialogues["train"][0]["speakers"] == [None, None]
    for split in SPLITS:
        for field in ("dialogue_id", "utterance_ids", "texts", "labels"):
            assert dialogues[split][field] == reference[split][field]


def test_meld_pre_extracted_wavs(tmp_path):
    root = make_meld(tmp_path / "MELD")
    audio = tmp_path / "wavs"
    for split, folder in (("train", "train"), ("dev", "dev"), ("test", "output_repeated_splits_test")):
        for stem in meld_stems(split):
            write_wav(audio / folder / f"{stem}.wav")
    dialogues = build_meld(root, audio)
    expected = [str((audio / "dev" / f"{stem}.wav").resolve()) for stem in meld_stems("dev")]
    assert dialogues["validation"][0]["audio"] == expected
    assert all(path for row in dialogues["test"] for path in row["audio"])

    (audio / "dev" / "dia0_utt1.wav").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 8 utterances have no audio .*dia0_utt1.*allow_missing_audio"):
        build_meld(root, audio)
    assert build_meld(root, audio, allow_missing_audio=True)["validation"][0]["audio"][1] is None
    assert build_meld_csv(root)["train"][0]["audio"] == [None, None]

    flat = tmp_path / "flat"
    write_wav(flat / "dia0_utt0.wav")
    with pytest.raises(ValueError, match="repeat across splits"):
        build_meld(root, flat)
    (flat / "dia0_utt0.wav").rename(flat / "dia0_utt0.flac")  # every split would read the train file of that name
    with pytest.raises(ValueError, match="repeat across splits, so the audio files directly in"):
        build_meld(root, flat)

    # FLAC re-encodes (how MELD's audio is often shared) serve as WAVs do; a WAV beside its FLAC is taken first.
    flacs = tmp_path / "flacs"
    for split, folder in (("train", "train"), ("dev", "dev"), ("test", "test")):
        for stem in meld_stems(split):
            (flacs / folder).mkdir(parents=True, exist_ok=True)
            sf.write(flacs / folder / f"{stem}.flac", np.zeros(1600, dtype=np.float32), 16000)
    write_wav(flacs / "dev" / "dia0_utt1.wav")
    paths = build_meld(root, flacs)["validation"][0]["audio"]
    assert [Path(path).name for path in paths] == ["dia0_utt0.flac", "dia0_utt1.wav"]


def write_meld_clips(root: Path, content: bytes) -> None:
    """An `.mp4` of `content` for every utterance of `make_meld`'s CSVs, in MELD.Raw's clip folder of its split."""
    for split, folder in data._MELD_CLIP_FOLDERS.items():
        for stem in meld_stems({"validation": "dev"}.get(split, split)):
            (root / folder).mkdir(exist_ok=True)
            (root / folder / f"{stem}.mp4").write_bytes(content)


def test_meld_clips_need_ffmpeg(tmp_path, monkeypatch):
    root = make_meld(tmp_path / "MELD")
    write_meld_clips(root, b"not really a video")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="needs FFmpeg.*audio_dir"):
        build_meld(root)

    commands = fake_ffmpeg(monkeypatch)
    dialogues = build_meld(root, num_workers=2)
    assert len(commands) == 8 and commands[0][:2] == ["/usr/bin/ffmpeg", "-nostdin"] and "16000" in commands[0]
    assert dialogues["test"][0]["audio"][0] == str((root / "wav16k" / "test" / "dia0_utt0.wav").resolve())
    assert not list((root / "wav16k").rglob(".*"))  # no partial files left
    build_meld(root)  # a rerun converts nothing
    assert len(commands) == 8


def test_meld_test_split_takes_the_recut_final_videos_clip(tmp_path, monkeypatch):
    # MELD.Raw's output_repeated_splits_test holds re-cut `final_videos_testdia{D}_utt{U}.mp4` clips beside
    # plain-named twins that are the wrong cut: the re-cut clip must be the one converted and used.
    root = make_meld(tmp_path / "MELD")
    write_meld_clips(root, b"plain")
    test_clips = root / data._MELD_CLIP_FOLDERS["test"]
    (test_clips / "final_videos_testdia0_utt0.mp4").write_bytes(b"recut")
    write_wav(root / "wav16k" / "test" / "dia0_utt0.wav")  # converted from the wrong twin by an earlier build
    commands = fake_ffmpeg(monkeypatch)
    dialogues = build_meld(root)
    sources = {Path(command[-1]).name.replace(".partial", ""): Path(command[command.index("-i") + 1]).name
               for command in commands}
    assert sources[".final_videos_testdia0_utt0.wav"] == "final_videos_testdia0_utt0.mp4"
    recut = str((root / "wav16k" / "test" / "final_videos_testdia0_utt0.wav").resolve())
    assert dialogues["test"][0]["audio"] == [recut, str((root / "wav16k" / "test" / "dia0_utt1.wav").resolve())]
    assert dialogues["train"][0]["audio"][0].endswith("/train/dia0_utt0.wav")  # other splits: plain names only

    wavs = tmp_path / "wavs"  # pre-extracted WAVs that kept the release's names
    for split, folder in (("train", "train"), ("dev", "dev"), ("test", "test")):
        for stem in meld_stems(split):
            write_wav(wavs / folder / f"{stem}.wav")
    write_wav(wavs / "test" / "final_videos_testdia0_utt0.wav")
    recut = str((wavs / "test" / "final_videos_testdia0_utt0.wav").resolve())
    assert build_meld(root, wavs)["test"][0]["audio"][0] == recut


def test_meld_bad_csvs(tmp_path):
    root = make_meld(tmp_path / "MELD")
    rows = list(csv.reader(open(root / "dev_sent_emo.csv", encoding="utf-8")))
    write_csv(root / "dev_sent_emo.csv", [row[:3] + row[4:] for row in rows[1:]], rows[0][:3] + rows[0][4:])
    with pytest.raises(ValueError, match=r"dev_sent_emo\.csv lacks column\(s\) \['Emotion'\]"):
        build_meld(root)
    make_meld(root)
    write_csv(root / "test_sent_emo.csv", [[1, "Hm.", "Ross", "boredom", "neutral", 0, 0, 1, 1, "", ""]], MELD_HEADER)
    with pytest.raises(ValueError, match=r"test_sent_emo\.csv row 1: unknown Emotion 'boredom'"):
        build_meld(root)
    twice = [[1, "Hm.", "Ross", "neutral", "neutral", 0, 0, 1, 1, "", ""],
             [2, "Oh.", "Ross", "joy", "positive", 0, 0, 1, 1, "", ""]]  # one utterance, two rows
    write_csv(root / "test_sent_emo.csv", twice, MELD_HEADER)
    with pytest.raises(ValueError, match=r"test_sent_emo\.csv row 2: Dialogue_ID 0, Utterance_ID 0 is also row 1"):
        build_meld(root)
    (root / "train_sent_emo.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_sent_emo\.csv not found"):
        build_meld(root)


def test_meld_empty_split_bad_encoding_and_blank_utterance_name_the_csv(tmp_path, capsys):
    root = make_meld(tmp_path / "MELD")
    write_csv(root / "dev_sent_emo.csv", [], MELD_HEADER)
    with pytest.raises(ValueError, match=r"dev_sent_emo\.csv has no utterances, so the validation split would be"):
        build_meld(root)
    assert main(["prepare", "meld", str(root), str(tmp_path / "out"), "--text-only"]) == 2
    assert "dev_sent_emo.csv" in capsys.readouterr().err and not (tmp_path / "out").exists()
    make_meld(root)
    (root / "train_sent_emo.csv").write_bytes((root / "train_sent_emo.csv").read_bytes().replace(b"Great", b"Caf\xe9"))
    with pytest.raises(ValueError, match=r"train_sent_emo\.csv is not UTF-8"):
        build_meld(root)
    make_meld(root)
    write_csv(root / "test_sent_emo.csv", [[1, " ", "Ross", "neutral", "neutral", 0, 1, 1, 1, "", ""]], MELD_HEADER)
    with pytest.raises(ValueError, match=r"test_sent_emo\.csv row 1: utterance dia0_utt1 has neither"):
        build_meld(root, audio=False)  # dia0_utt1 is in every CSV: only the file tells which one


def test_a_meld_csv_in_cp1252_names_its_line_and_a_header_with_spaces_or_a_bom_reads(tmp_path, capsys):
    """The CSV was decoded a read buffer at a time, so the byte named was the buffer's (6112 for the file's 30688)."""
    root = make_meld(tmp_path / "MELD")
    rows = [[n, f"hello there friend number {n}", "Joey", "neutral", "neutral", 0, n, 1, 1, "", ""]
            for n in range(1, 600)]
    rows[499][1] = "I\u2019m fine"  # row 500 is line 501, past the first 8 KiB
    with open(root / "train_sent_emo.csv", "w", newline="", encoding="cp1252") as file:
        csv.writer(file).writerows([MELD_HEADER, *rows])
    offset = (root / "train_sent_emo.csv").read_bytes().index(b"\x92")
    message = rf"train_sent_emo\.csv is not UTF-8 text \(line 501, byte {offset}: invalid start byte\)"
    with pytest.raises(ValueError, match=message):
        build_meld(root)
    assert main(["prepare", "meld", str(root), str(tmp_path / "out"), "--text-only"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    make_meld(root)
    csv_text = (root / "dev_sent_emo.csv").read_text(encoding="utf-8").replace('"Utterance"', '"Utterance "', 1)
    (root / "dev_sent_emo.csv").write_text("\ufeff" + csv_text.replace('"Emotion"', '" Emotion"', 1), encoding="utf-8")
    assert build_meld(root, audio=False)["validation"][0]["texts"] == ["What?", "Run."]
    (root / "dev_sent_emo.csv").write_text(csv_text.replace('"What?"', '"What?', 1), encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev_sent_emo\.csv row 1 has 10 fields where 11 are expected: a quote left"):
        build_meld(root, audio=False)  # fields shifted: `row 2: ... Utterance_ID 1 is also row 1`


# --- COSMIC / DialogueRNN pickles ---------------------------------------------------------------------


def dump(path: Path, obj) -> Path:
    path.write_bytes(pickle.dumps(obj))
    return path


def test_cosmic_meld_pickle(tmp_path):
    one_hot = [[1, 0, 0], [0, 1, 0]]
    keys = {"train": [0, 1], "validation": [1039], "test": [1153]}
    speakers = {key: one_hot for keys_ in keys.values() for key in keys_}
    labels = {0: [0, 4], 1: [3, 6], 1039: [1, 2], 1153: [5, 0]}
    sentences = {key: ["my company\x92s transition", "ok"] for key in speakers}
    splits = (keys["train"], keys["test"], keys["validation"])  # the pickle's order
    path = dump(tmp_path / "meld.pkl", (speakers, labels, labels, sentences, *splits))
    with pytest.raises(ValueError, match="trust_pickle=True"):
        build_cosmic_pickle(path)
    dialogues = build_cosmic_pickle(path, trust_pickle=True)
    assert dialogues["train"]["dialogue_id"] == ["dia0", "dia1"]
    assert dialogues["validation"][0]["dialogue_id"] == "dia0"
    assert dialogues["train"][0]["texts"] == ["my company’s transition", "ok"]
    assert labels_of(dialogues["test"]) == ["disgust", "neutral"] and dialogues["test"][0]["speakers"] == ["0", "1"]

    # The CLI's --source (formerly a TypeError: prepare() got multiple values for argument 'dataset').
    assert main(["prepare", "cosmic", str(path), str(tmp_path / "out"), "--source", "meld", "--trust-pickle"]) == 0
    assert load_from_disk(str(tmp_path / "out"))["train"]["dialogue_id"] == ["dia0", "dia1"]
    # The pickle's own validIds are the validation split: a validation option would be silently unused.
    with pytest.raises(ValueError, match=r"meld\.pkl has its own validation list .*validation_dialogues"):
        build_cosmic_pickle(path, trust_pickle=True, validation_dialogues=3)
    assert main(["prepare", "cosmic", str(path), str(tmp_path / "seeded"), "--trust-pickle", "--seed", "1"]) == 2

    del sentences[1039]
    with pytest.raises(ValueError, match=r"meld\.pkl: dialogue 1039 .* missing from sentences"):
        build_cosmic_pickle(dump(path, (speakers, labels, labels, sentences, *splits)), trust_pickle=True)
    with pytest.raises(ValueError, match=r"meld\.pkl: expected a 7-tuple \(speakers, .*\), found 4 items"):
        build_cosmic_pickle(dump(path, (speakers, labels, labels, sentences)), trust_pickle=True)
    # DialogueGCN's DailyDialog pickle is a 7-tuple too, keyed by strings ('tr_c0'): formerly a TypeError traceback.
    named = {f"tr_c{n}": value for n, value in enumerate(speakers.values())}
    with pytest.raises(ValueError, match=r"trainIds holds key 'tr_c0', expected COSMIC's integer MELD dialogue"):
        build_cosmic_pickle(dump(path, (named, named, named, named, ["tr_c0"], ["tr_c1"], ["tr_c2"])),
                            trust_pickle=True)


def test_dialoguernn_iemocap_pickle(tmp_path):
    videos = [f"Ses0{n}F_impro01" for n in range(1, 6)]
    ids = {video: [f"{video}_F000", f"{video}_M000"] for video in videos}
    per_video = lambda value: {video: value for video in videos}  # noqa: E731
    fields = (ids, per_video(["F", "M"]), per_video([2, 5]), per_video(np.ones((2, 4))), per_video(np.zeros((2, 6))),
              per_video(np.zeros((2, 8))), per_video(["Hello.", "Go away."]), videos[:4], videos[4:])  # fmt: skip
    path = dump(tmp_path / "IEMOCAP_features.pkl", fields)
    dialogues = build_cosmic_pickle(path, "iemocap", trust_pickle=True, validation_dialogues=1)
    assert {split: len(dialogues[split]) for split in SPLITS} == {"train": 3, "validation": 1, "test": 1}
    row = dialogues["test"][0]
    assert row["utterance_ids"] == ids[videos[4]] and labels_of(dialogues["test"]) == ["neu", "fru"]
    assert row["text_embeds"] == [[1.0] * 4] * 2 and row["speech_embeds"] == [[0.0] * 6] * 2
    # A given validation list (the CLI's --validation-ids FILE) instead of a held-out draw.
    (tmp_path / "valid.txt").write_text(f"{videos[0]}\n{videos[2]}\n\n")
    assert main(["prepare", "cosmic", str(path), str(tmp_path / "given"), "--source", "iemocap", "--trust-pickle",
                 "--validation-ids", str(tmp_path / "valid.txt")]) == 0
    given = load_from_disk(str(tmp_path / "given"))
    assert given["validation"]["dialogue_id"] == [videos[0], videos[2]]
    assert given["train"]["dialogue_id"] == [videos[1], videos[3]]
    with pytest.raises(ValueError, match=r"validation dialogue\(s\) \['Ses05F_impro01'\] are not training"):
        build_cosmic_pickle(path, "iemocap", trust_pickle=True, validation_ids=[videos[4]])
    bad = list(fields)
    bad[2] = per_video([2, 9])
    with pytest.raises(ValueError, match=r"IEMOCAP_features\.pkl: dialogue 'Ses0\dF_impro01'.*label 9"):
        build_cosmic_pickle(dump(path, tuple(bad)), "iemocap", trust_pickle=True, validation_dialogues=1)
    with pytest.raises(ValueError, match=r"expected a 9-tuple \(videoIDs, .*\) or a 6-tuple \(speakers, .*\), found 7"):
        build_cosmic_pickle(dump(path, fields[:7]), "iemocap", trust_pickle=True)
    with pytest.raises(ValueError, match=r"9-tuple, the layout of an IEMOCAP pickle.*pass --source iemocap"):
        build_cosmic_pickle(dump(path, fields), trust_pickle=True)  # the default source is MELD
    with pytest.raises(ValueError, match=r"pass --source iemocap"):  # not "has its own validation list"
        build_cosmic_pickle(path, trust_pickle=True, validation_dialogues=1)


def test_cosmic_iemocap_pickle_keeps_its_own_validation_list(tmp_path):
    """COSMIC's iemocap.pkl: (speakers, labels, sentences, trainIds, testIds, validIds), transcripts only."""
    videos = [f"Ses0{n}F_impro01" for n in range(1, 6)]
    per_video = lambda value: {video: value for video in videos}  # noqa: E731
    fields = (per_video([[1, 0], [0, 1]]), per_video([0, 3]), per_video(["Hi.", "Go away."]),
              videos[:3], videos[4:], videos[3:4])  # fmt: skip
    path = dump(tmp_path / "iemocap.pkl", fields)
    dialogues = build_cosmic_pickle(path, "iemocap", trust_pickle=True)
    assert {split: dialogues[split]["dialogue_id"] for split in SPLITS} == {
        "train": videos[:3], "validation": [videos[3]], "test": [videos[4]]}
    assert dialogues["test"][0]["texts"] == ["Hi.", "Go away."] and labels_of(dialogues["test"]) == ["hap", "ang"]
    assert dialogues["test"][0]["speakers"] == ["0", "1"] and "text_embeds" not in dialogues["test"].column_names
    with pytest.raises(ValueError, match="its own validation list"):
        build_cosmic_pickle(path, "iemocap", trust_pickle=True, validation_ids=[videos[0]])
    with pytest.raises(ValueError, match="its own validation list"):
        build_cosmic_pickle(path, "iemocap", trust_pickle=True, validation_dialogues=3)
    # GCNet's IEMOCAP_features_raw_6way.pkl is a 6-tuple too, (videoIDs, videoLabels, videoSpeakers, videoSentence,
    # trainVid, testVid), formerly read as this layout: every dialogue in train, "F"/"M" as texts, exit status 0.
    gcnet = (per_video(["u0", "u1"]), per_video([0, 3]), per_video(["F", "M"]), per_video(["Hi.", "Go away."]),
             set(videos[:4]), set(videos[4:]))  # fmt: skip
    with pytest.raises(ValueError, match=r"6way\.pkl: trainIds is a dict, expected a list or set of dialogue ids"):
        build_cosmic_pickle(dump(tmp_path / "IEMOCAP_features_raw_6way.pkl", gcnet), "iemocap", trust_pickle=True)


@pytest.mark.parametrize(
    ("source", "names", "speakers", "keys"),
    [  # speakers: one-hot rows (as EmoryNLP's are said to be) or '0'/'1' (what COSMIC's dataloader compares them to)
        ("emorynlp", EMORYNLP_LABELS, [[1, 0, 0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0, 0]],
         ["tr_0", "tr_1", "va_0", "te_0"]),
        ("dailydialog", DAILYDIALOG_LABELS, ["0", "1"], [0, 1, 2, 3]),
    ],
)
def test_cosmic_emorynlp_and_dailydialog_pickles(tmp_path, capsys, source, names, speakers, keys):
    """COSMIC ships emorynlp.pkl and dailydialog.pkl in iemocap.pkl's layout, ``(speakers, labels, sentences,
    train_ids, test_ids, valid_ids)`` (its roberta_init_emorynlp.py and roberta_init_dailydialog.py), with 7 classes
    (the orders of its erc-training/dataloader.py and train_dailydialog.py). They were refused as IEMOCAP pickles,
    then for a label outside IEMOCAP's 6."""
    per_key = lambda value: {key: value for key in keys}  # noqa: E731
    train, valid, test = keys[:2], keys[2:3], keys[3:]
    labels = {keys[0]: [0, 6], keys[1]: [3, 1], keys[2]: [2, 4], keys[3]: [5, 3]}
    path = dump(tmp_path / f"{source}.pkl", (per_key(speakers), labels, per_key(["Hi there.", "It\x92s me."]),
                                             train, test, valid))
    dialogues = build_cosmic_pickle(path, source, trust_pickle=True)
    assert {split: dialogues[split]["dialogue_id"] for split in SPLITS} == {
        "train": [str(key) for key in train], "validation": [str(keys[2])], "test": [str(keys[3])]}
    assert dialogues["train"].features["labels"].feature.names == names
    assert labels_of(dialogues["train"]) == [names[0], names[6]]
    assert labels_of(dialogues["test"]) == [names[5], names[3]]
    assert dialogues["test"][0]["texts"] == ["Hi there.", "It’s me."] and dialogues["test"][0]["speakers"] == ["0", "1"]
    assert main(["prepare", "cosmic", str(path), str(tmp_path / "out"), "--source", source, "--trust-pickle"]) == 0
    assert load_from_disk(str(tmp_path / "out"))["test"].features["labels"].feature.names == names
    capsys.readouterr()
    # Under another --source: one line naming what the file is and what to pass.
    for other, says in [
        ("meld", r"is a 6-tuple, the layout of COSMIC's iemocap\.pkl, emorynlp\.pkl and dailydialog"),
        ("iemocap", r"holds label 6, beyond IEMOCAP's 6 classes.*pass --source emorynlp or dailydialog"),
    ]:
        assert main(["prepare", "cosmic", str(path), str(tmp_path / other), "--source", other, "--trust-pickle"]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and re.search(says, error) and f"{source}.pkl" in error, error
    with pytest.raises(ValueError, match="has its own validation list"):
        build_cosmic_pickle(path, source, trust_pickle=True, validation_dialogues=1)
    with pytest.raises(ValueError, match=r"expected a 6-tuple \(speakers, labels, sentences, .*\), found 7 items"):
        build_cosmic_pickle(dump(path, (per_key(speakers), labels, labels, per_key(["a", "b"]), train, test, valid)),
                            source, trust_pickle=True)


def test_cosmic_iemocap_pickle_is_not_taken_for_emorynlp_or_dailydialog(tmp_path, capsys):
    """The three COSMIC 6-tuples share a layout, and IEMOCAP's 6 labels fit in the others' 7: its session ids tell."""
    videos = [f"Ses0{n}M_script01_1" for n in range(1, 4)]
    per_video = lambda value: {video: value for video in videos}  # noqa: E731
    path = dump(tmp_path / "iemocap.pkl", (per_video(["M", "F"]), per_video([0, 5]), per_video(["Hi.", "Go."]),
                                           videos[:1], videos[1:2], videos[2:]))
    assert build_cosmic_pickle(path, "iemocap", trust_pickle=True)["test"]["dialogue_id"] == [videos[1]]
    for source in ("emorynlp", "dailydialog"):
        assert main(["prepare", "cosmic", str(path), str(tmp_path / source), "--source", source, "--trust-pickle"]) == 2
        error = capsys.readouterr().err.strip()
        assert re.search(rf"iemocap\.pkl names IEMOCAP sessions .*'Ses01M_script01_1'.*not its {source}\.pkl; pass "
                         r"--source iemocap", error) and len(error.splitlines()) == 1, error


def test_cosmic_sources_are_the_cli_choices():
    source = next(action for action in build_parser()._subparsers._group_actions[0].choices["prepare"]._actions
                  if action.dest == "cosmic_dataset")
    assert tuple(source.choices) == COSMIC_SOURCES
    with pytest.raises(ValueError, match="dataset must be one of meld, iemocap, emorynlp, dailydialog, got 'emory'"):
        build_cosmic_pickle("x.pkl", "emory", trust_pickle=True)


# --- prepare ------------------------------------------------------------------------------------------


def test_prepare_saves_and_reports(tmp_path, capsys):
    root = make_meld(tmp_path / "MELD")
    dialogues = prepare("meld", root, tmp_path / "prepared")
    assert load_from_disk(str(tmp_path / "prepared"))["train"].to_list() == dialogues["train"].to_list()
    report = capsys.readouterr().out
    assert "neutral" in report and "validation" in report
    with pytest.raises(FileExistsError):
        prepare("meld", root, tmp_path / "prepared")
    with pytest.raises(ValueError, match="unknown dataset 'friends'"):
        prepare("friends", root, tmp_path / "other")


# --- real files (shared/data beside the repository) ---------------------------------------------------


def test_real_meld_and_mosi(shared_data):
    meld = build_meld_csv(shared_data / "meld")
    utterances = {split: sum(len(labels) for labels in meld[split]["labels"]) for split in SPLITS}
    assert utterances == {"train": 9989, "validation": 1109, "test": 2610}
    assert {split: len(meld[split]) for split in SPLITS} == {"train": 1038, "validation": 114, "test": 280}
    test_counts = np.bincount([label for labels in meld["test"]["labels"] for label in labels], minlength=7)
    assert test_counts.tolist() == [1256, 281, 50, 208, 402, 68, 345]
    train_counts = np.bincount([label for labels in meld["train"]["labels"] for label in labels], minlength=7)
    assert train_counts.tolist() == [4710, 1205, 268, 683, 1743, 271, 1109]

    cosmic = build_cosmic_pickle(shared_data / "meld" / "cosmic_meld.pkl", trust_pickle=True)
    for split in SPLITS:
        assert cosmic[split].select_columns(["dialogue_id", "texts", "labels"]).to_list() == (
            meld[split].select_columns(["dialogue_id", "texts", "labels"]).to_list()
        )

    mosi = build_mosi(shared_data / "mosi", acoustic=True)
    assert {split: len(mosi[split]) for split in SPLITS} == {"train": 52, "validation": 10, "test": 31}
    counts = {split: np.bincount([l for labels in mosi[split]["labels"] for l in labels]).tolist() for split in SPLITS}
    assert counts == {"train": [552, 732], "validation": [92, 137], "test": [379, 307]}
    assert len(mosi["test"][0]["speech_embeds"][0]) == 73
    release = mosi_release_folds(shared_data / "mosi")
    assert {fold: len(videos) for fold, videos in release.items()} == {"train": 51, "test": 31, "valid": 11}


def test_real_emodb(shared_data):
    if not (shared_data / "emodb").is_dir():
        pytest.skip(f"{shared_data / 'emodb'} not present")
    dialogues = build_emodb(shared_data / "emodb")
    labels = [label for split in SPLITS for label in flat(dialogues[split], "labels")]
    assert len(labels) == 339
    assert dict(zip(EMODB_LABELS, np.bincount(labels).tolist())) == {
        "anger": 84, "boredom": 50, "disgust": 22, "fear": 42, "happiness": 46, "neutral": 56, "sadness": 39
    }  # fmt: skip
    speakers = sorted({speaker for split in SPLITS for speaker in flat(dialogues[split], "speakers")})
    assert speakers == ["03", "08", "09", "10", "11", "12", "13"]
    folds = emodb_folds(speakers)
    assert len(folds) == 7 and sorted(test for test, _ in folds) == speakers
    for test, validation in folds:
        fold = build_emodb(shared_data / "emodb", test, validation)
        seen = {split: set(flat(fold[split], "speakers")) for split in SPLITS}
        assert seen["test"] == {test} and seen["validation"] == {validation}
        assert seen["train"] == set(speakers) - {test, validation}
