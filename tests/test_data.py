"""Dialogue schema and release builders, on miniature fake releases (plus the real files when `shared/` is there)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from datasets import DatasetDict, load_from_disk

from mister_e import data
from mister_e.cli import build_parser, main
from mister_e.data import PREPARE_DATASETS
from mister_e.data.storage import load_dialogues
from mister_e.data import (
    BUILDERS,
    COSMIC_SOURCES,
    DAILYDIALOG_LABELS,
    EMODB_LABELS,
    EMORYNLP_LABELS,
    EMODB_TRANSCRIPTS,
    IEMOCAP_LABELS,
    MELD_LABELS,
    MOSI_LABELS,
    SPLITS,
    build_cosmic_pickle,
    build_emodb,
    build_iemocap,
    build_meld,
    build_meld_csv,
    build_mosi,
    emodb_folds,
    load_mosi_acoustic,
    make_dialogue_dataset,
    mosi_release_folds,
    prepare,
    save_dialogues,
    validate_dialogues,
)

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def write_wav(path: Path) -> None:
    """0.1 s of noise at 16 kHz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(0).uniform(-0.1, 0.1, 1600).astype(np.float32), 16000)


def fake_ffmpeg(monkeypatch) -> list[list[str]]:
    """Stand in for FFmpeg (none is installed here): each call writes its WAV, and is recorded in the list returned."""
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        write_wav(Path(command[-1]))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/ffmpeg")
    monkeypatch.setattr(subprocess, "run", run)
    return commands


def write_csv(path: Path, rows: list[list], header: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, quoting=csv.QUOTE_ALL)
        writer.writerows([header, *rows] if header else rows)


def labels_of(dataset, row=0) -> list[str]:
    names = dataset.features["labels"].feature.names
    return [names[label] for label in dataset[row]["labels"]]


# --- schema -------------------------------------------------------------------------------------------


def test_make_dialogue_dataset_fills_defaults_and_keeps_label_names():
    dataset = make_dialogue_dataset(
        [{"dialogue_id": "d1", "texts": ["hi", None], "audio": [None, "/a.wav"], "labels": ["sad", 1]}], ["hap", "sad"]
    )
    assert dataset.features["labels"].feature.names == ["hap", "sad"]
    assert dataset[0] == {
        "dialogue_id": "d1",
        "utterance_ids": ["d1_0", "d1_1"],
        "texts": ["hi", None],
        "audio": [None, "/a.wav"],
        "labels": [1, 1],
        "speakers": [None, None],
    }
    validate_dialogues(dataset)


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ({"dialogue_id": "d1", "texts": [], "labels": []}, "'d1' is empty"),
        ({"dialogue_id": "d1", "texts": ["a"], "speakers": ["A", "B"], "labels": [0]}, "speakers has 2 entries"),
        ({"dialogue_id": "d1", "texts": ["a", None], "labels": [0, 1]}, "'d1_1' has neither audio nor text"),
        ({"dialogue_id": "d1", "texts": ["a"], "labels": [2]}, "label 2, outside 0..1"),
        ({"dialogue_id": "d1", "texts": ["a"], "labels": ["joy"]}, "unknown label 'joy'"),
    ],
)
def test_bad_dialogues_are_named(conversation, message):
    with pytest.raises(ValueError, match=message):
        make_dialogue_dataset([conversation], ["hap", "sad"])


def test_an_integer_label_that_is_also_a_class_name_is_refused():
    """Integer labels are indices: with classes named "1".."5" the ratings 1, 2, 3 were stored as "2", "3", "4"."""
    ratings = [{"dialogue_id": "d1", "texts": ["a", "b"], "labels": [1, 2]}]
    with pytest.raises(ValueError, match="label 1 is read as an index into label_names, yet it is also the name of "
                                         "class 0, '1'"):
        make_dialogue_dataset(ratings, ["1", "2", "3", "4", "5"])
    assert make_dialogue_dataset(ratings, ["0", "1", "2"])[0]["labels"] == [1, 2]  # index and name agree
    assert make_dialogue_dataset(ratings, ["neg", "neu", "pos"])[0]["labels"] == [1, 2]


def test_duplicate_ids_are_named():
    """Embeddings are matched to utterances by id, so a repeated id would give two utterances one vector."""
    first = {"dialogue_id": "d1", "texts": ["a", "b"], "labels": [0, 1]}
    with pytest.raises(ValueError, match="dialogue 'd1' appears twice"):
        make_dialogue_dataset([first, first], ["hap", "sad"])
    clash = {"dialogue_id": "d2", "utterance_ids": ["x", "d1_1"], "texts": ["c", "d"], "labels": [0, 0]}
    with pytest.raises(ValueError, match="utterance id 'd1_1' appears twice \\(dialogues 'd1' and 'd2'\\)"):
        make_dialogue_dataset([first, clash], ["hap", "sad"])


def test_attach_embeddings_names_the_split_of_a_repeated_or_missing_utterance_id():
    """Vectors are matched to utterances by id: an id that repeats in one split of several named no split."""
    from mister_e.data import attach_embeddings

    def split(prefix, lengths):
        return make_dialogue_dataset([{"dialogue_id": f"{prefix}{i}", "texts": ["a"] * length, "labels": [0] * length}
                                      for i, length in enumerate(lengths)], ["hap"])

    positions = split("d", [2, 1]).map(lambda row: {"utterance_ids": [str(i) for i in range(len(row["labels"]))]})
    vectors = {name: np.zeros(2) for name in ("t0_0", "t0_1", "v0_0", "0", "1")}
    dialogues = DatasetDict(train=split("t", [2]), validation=split("v", [1]), test=positions)
    with pytest.raises(ValueError, match="^split 'test': utterance id '0' appears twice: text_embeds vectors are "
                                         "matched to utterances by id; give every utterance of the split its own id$"):
        attach_embeddings(dialogues, "text_embeds", vectors)
    with pytest.raises(ValueError, match="^split 'validation': no text_embeds vector for 1 utterances "
                                         "\\(first: v0_0\\)$"):
        attach_embeddings(dialogues, "text_embeds", {name: vectors[name] for name in ("t0_0", "t0_1")})
    attached = attach_embeddings(DatasetDict(train=dialogues["train"]), "text_embeds", vectors)
    assert attached["train"][0]["text_embeds"] == [[0.0, 0.0], [0.0, 0.0]]


def test_embeddings_are_float32_lists_and_required_everywhere():
    conversation = {"dialogue_id": "d1", "labels": [0], "speech_embeds": [np.ones(3)]}
    dataset = make_dialogue_dataset([conversation], ["hap"])
    assert dataset.features["speech_embeds"].feature.feature.dtype == "float32"
    assert dataset[0]["speech_embeds"] == [[1.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="'d2' lacks speech_embeds"):
        make_dialogue_dataset([conversation, {"dialogue_id": "d2", "texts": ["a"], "labels": [0]}], ["hap"])


def test_a_text_of_invisible_characters_is_no_text_in_every_check():
    """The processor reads a zero-width space as no text; the data side (per value and over Arrow columns) counted it
    as text, so extraction and stage 1 failed at the batch holding it instead of leaving it out up front."""
    from mister_e.data.checks import check_experts_can_answer
    from mister_e.data.releases import clean_text
    from mister_e.data.schema import is_present
    from mister_e.training.collator import flatten_utterances

    assert not is_present("\u200b \u00a0\ufeff") and is_present("hi\u200b")
    assert not is_present("\x00\x92") and clean_text("\x00 ") is None  # control characters: a release's NUL
    dialogues = make_dialogue_dataset([{"dialogue_id": "d", "texts": ["hi", "\u200b\u3000\x00"], "labels": [0, 0]}],
                                      ["x"])
    assert len(flatten_utterances(dialogues, "text")) == 1
    with pytest.raises(ValueError, match="dialogue 'd': utterance 'd_1' lacks every modality"):
        check_experts_can_answer(["text"], dialogues, ["text"], raw=True)


def test_a_string_where_a_list_of_utterances_belongs_is_refused():
    """`texts="hello"` was read as five utterances' texts, one per character."""
    with pytest.raises(ValueError, match="dialogue 'd': texts is one string; give a list, one entry per utterance"):
        make_dialogue_dataset([{"dialogue_id": "d", "texts": "hi", "labels": [0, 0]}], ["x"])


def test_save_round_trip_is_atomic(tmp_path, monkeypatch):
    conversation = {"texts": ["a"], "labels": [0]}
    dialogues = DatasetDict(
        {split: make_dialogue_dataset([{"dialogue_id": split, **conversation}], ["x"]) for split in SPLITS}
    )
    target = tmp_path / "out" / "ds"
    save_dialogues(dialogues, target)
    loaded = load_from_disk(str(target))
    for split in SPLITS:
        assert loaded[split].to_list() == dialogues[split].to_list()
    assert loaded["train"].features == dialogues["train"].features
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_dialogues(dialogues, target)
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileExistsError, match="not a saved dialogue dataset"):
        save_dialogues(dialogues, tmp_path / "notes", overwrite=True)
    (target / "runs").mkdir()  # a run saved inside the data set's folder went with the replaced copy
    with pytest.raises(FileExistsError, match="holds runs besides its saved dataset"):
        save_dialogues(dialogues, target, overwrite=True)
    (target / "runs").rmdir()
    (tmp_path / "link").symlink_to(tmp_path / "gone")  # failed after the save: "Not a directory: '.link...partial'"
    with pytest.raises(FileExistsError, match=f"link is a broken symbolic link \\(to {tmp_path / 'gone'}\\)"):
        save_dialogues(dialogues, tmp_path / "link")

    def crash(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(DatasetDict, "save_to_disk", crash)
    with pytest.raises(OSError, match="disk full"):
        save_dialogues(dialogues, target, overwrite=True)
    assert load_from_disk(str(target))["train"][0]["dialogue_id"] == "train"  # the old copy survives
    assert sorted(path.name for path in target.parent.iterdir()) == ["ds"]  # no staging folder left behind

    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == 0o777 & ~mask  # the umask's mode, not mkdtemp's owner-only 0700
    # Killed between overwrite's two renames: the old copy sits under a hidden name, and loading says where.
    retired = target.with_name(".ds.abc123.old")
    target.rename(retired)
    with pytest.raises(FileNotFoundError, match=re.escape(f"{retired} holds the dataset it replaced")):
        load_dialogues(target)


def test_a_save_removes_the_staging_folder_of_a_killed_save(tmp_path):
    dialogues = DatasetDict({split: make_dialogue_dataset([{"dialogue_id": split, "texts": ["a"], "labels": [0]}],
                                                          ["x"]) for split in SPLITS})
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    abandoned = tmp_path / f".ds.{finished.stdout.strip()}@{host}.k1ll3d00.partial"  # its process is gone
    live = tmp_path / f".ds.{os.getpid()}@{host}.l1ve0000.partial"  # a save in progress
    elsewhere = tmp_path / f".ds.{finished.stdout.strip()}@not-{host}.rem0te00.partial"  # cannot be checked here
    other_name = tmp_path / f".ds2.{finished.stdout.strip()}@{host}.k1ll3d00.partial"  # another data set's
    recent = tmp_path / f".ds.{finished.stdout.strip()}@{host}.rec3nt00.partial"  # another container's, maybe
    for folder in (abandoned, live, elsewhere, other_name, recent):
        folder.mkdir()
    hour_ago = time.time() - 3700
    for folder in (abandoned, live, elsewhere, other_name):
        os.utime(folder, (hour_ago, hour_ago))
    save_dialogues(dialogues, tmp_path / "ds")
    assert not abandoned.exists() and live.is_dir() and elsewhere.is_dir() and other_name.is_dir() and recent.is_dir()
    assert load_dialogues(tmp_path / "ds")["train"][0]["dialogue_id"] == "train"


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


def test_meld_clips_need_ffmpeg(tmp_path, monkeypatch):
    root = make_meld(tmp_path / "MELD")
    for split, folder in data._MELD_CLIP_FOLDERS.items():
        for stem in meld_stems({"validation": "dev"}.get(split, split)):
            (root / folder).mkdir(exist_ok=True)
            (root / folder / f"{stem}.mp4").write_bytes(b"not really a video")
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
    for split, folder in data._MELD_CLIP_FOLDERS.items():
        for stem in meld_stems({"validation": "dev"}.get(split, split)):
            (root / folder).mkdir(exist_ok=True)
            (root / folder / f"{stem}.mp4").write_bytes(b"plain")
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


# --- CMU-MOSI -----------------------------------------------------------------------------------------

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

# --- EmoDB -------------------------------------------------------------------------------------------

EMODB_LETTERS = {"W": "anger", "L": "boredom", "E": "disgust", "A": "fear", "F": "happiness", "N": "neutral",
                 "T": "sadness"}  # fmt: skip
# Three speakers, all seven letters; each speaker reads a01Fa a01Wa a01Wb a05Ld b01Ea b10Nb (listed out of order).
EMODB_STEMS = [f"{speaker}{rest}" for speaker in ("03", "08", "16")
               for rest in ("b10Nb", "a01Wb", "a05Ld", "a01Wa", "b01Ea", "a01Fa")] + ["08a02Ac", "16b03Ta"]  # fmt: skip


def make_emodb(root: Path, layout: str = "flat") -> Path:
    folder = root / "wav" if layout == "wav" else root
    for stem in EMODB_STEMS:
        write_wav(folder / f"{stem}.wav")
    (folder / "notes.txt").write_text("not audio")
    return root


def flat(dataset, column: str) -> list:
    return [value for values in dataset[column] for value in values]


@pytest.mark.parametrize("layout", ["flat", "wav"])
def test_emodb_reads_everything_from_file_names(tmp_path, layout):
    root = make_emodb(tmp_path / "emodb", layout)
    folder = (root / "wav" if layout == "wav" else root).resolve()
    dialogues = build_emodb(root)
    assert dialogues["test"].features["labels"].feature.names == EMODB_LABELS
    # defaults: the first speaker is test, the next one validation; one conversation per speaker at size 10
    assert [dialogues[split]["dialogue_id"] for split in SPLITS] == [["16-000"], ["08-000"], ["03-000"]]
    assert sorted(dialogues["test"][0]["utterance_ids"]) == ["03a01Fa", "03a01Wa", "03a01Wb", "03a05Ld", "03b01Ea",
                                                              "03b10Nb"]
    ids = [utterance for split in SPLITS for utterance in flat(dialogues[split], "utterance_ids")]
    assert sorted(ids) == sorted(EMODB_STEMS)
    for split in SPLITS:
        names = dialogues[split].features["labels"].feature.names
        for utterance, label, text, audio, speaker in zip(
            *(flat(dialogues[split], column) for column in ("utterance_ids", "labels", "texts", "audio", "speakers"))
        ):
            assert names[label] == EMODB_LETTERS[utterance[5]]
            assert text == EMODB_TRANSCRIPTS[utterance[2:5]] and speaker == utterance[:2]
            assert audio == str(folder / f"{utterance}.wav")
    assert "Der Lappen liegt auf dem Eisschrank." in dialogues["test"][0]["texts"]
    assert EMODB_TRANSCRIPTS["b01"] == "Was sind denn das für Tüten, die da unter dem Tisch stehen?"
    assert len(EMODB_TRANSCRIPTS) == 10
    assert {label for split in SPLITS for label in flat(dialogues[split], "labels")} == set(range(7))


def test_emodb_speaker_independent_folds(tmp_path):
    root = make_emodb(tmp_path / "emodb")
    assert emodb_folds(["16", "03", "08", "03"]) == [("03", "08"), ("08", "16"), ("16", "03")]
    for test, validation in emodb_folds(["03", "08", "16"]):
        dialogues = build_emodb(root, test_speaker=test, validation_speaker=validation)
        speakers = {split: set(flat(dialogues[split], "speakers")) for split in SPLITS}
        assert speakers["test"] == {test} and speakers["validation"] == {validation}
        assert speakers["train"] == {"03", "08", "16"} - {test, validation}
    explicit = build_emodb(root, test_speaker="16", validation_speaker="03")
    assert set(flat(explicit["train"], "speakers")) == {"08"}
    assert set(flat(build_emodb(root, test_speaker="16")["validation"], "speakers")) == {"03"}  # cyclic
    with pytest.raises(ValueError, match="at least 3 speakers"):
        emodb_folds(["03", "08"])


def test_emodb_conversations_are_chunks_of_one_speaker(tmp_path):
    root = make_emodb(tmp_path / "emodb")
    validation = build_emodb(root, conversation_size=3)["validation"]
    assert validation["dialogue_id"] == ["08-000", "08-001", "08-002"]
    assert [len(ids) for ids in validation["utterance_ids"]] == [3, 3, 1]
    assert sorted(flat(validation, "utterance_ids")) == sorted(stem for stem in EMODB_STEMS if stem.startswith("08"))
    alone = build_emodb(root, conversation_size=1)["validation"]
    assert alone["dialogue_id"] == [f"08-{index:03d}" for index in range(7)]
    assert alone["utterance_ids"] == [[utterance] for utterance in flat(validation, "utterance_ids")]
    with pytest.raises(ValueError, match="conversation_size must be at least 1, got 0"):
        build_emodb(root, conversation_size=0)


def test_emodb_order_is_drawn_not_the_labels(tmp_path):
    """Sorted by file name, each sentence's recordings came in the emotion letters' order, so a context model read the
    labels from positions; the order is a seeded draw (the same for a seed), and `.WAV` files count."""
    root = tmp_path / "emodb"
    stems = [f"03{text}{letter}a" for text in ("a01", "a02", "a04", "a05") for letter in EMODB_LETTERS]
    for stem in stems:
        write_wav(root / f"{stem}.wav")
    (root / "08a01Wa.wav").write_bytes((root / "03a01Wa.wav").read_bytes())
    (root / "16a01Wa.WAV").write_bytes((root / "03a01Wa.wav").read_bytes())
    order = flat(build_emodb(root)["test"], "utterance_ids")
    assert sorted(order) == sorted(stems) and order != sorted(stems)
    assert order == flat(build_emodb(root, seed=0)["test"], "utterance_ids")
    assert order != flat(build_emodb(root, seed=1)["test"], "utterance_ids")
    assert flat(build_emodb(root)["train"], "utterance_ids") == ["16a01Wa"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("03a01F.wav", r"03a01F\.wav is not named SSTTTEv\.wav"),
        ("03a01Xa.wav", r"03a01Xa\.wav has unknown emotion letter 'X'"),
        ("03c01Wa.wav", r"03c01Wa\.wav has unknown text code 'c01'"),
    ],
)
def test_emodb_bad_file_names_are_named(tmp_path, name, message):
    root = make_emodb(tmp_path / "emodb")
    write_wav(root / name)
    with pytest.raises(ValueError, match=message):
        build_emodb(root)


def test_emodb_bad_speakers_and_empty_folders(tmp_path):
    root = make_emodb(tmp_path / "emodb")
    with pytest.raises(ValueError, match=r"unknown --test-speaker '99'; .* has speakers 03, 08, 16"):
        build_emodb(root, test_speaker="99")
    with pytest.raises(ValueError, match="unknown --validation-speaker '3'"):
        build_emodb(root, validation_speaker="3")
    with pytest.raises(ValueError, match="--test-speaker and --validation-speaker are both '08'"):
        build_emodb(root, test_speaker="08", validation_speaker="08")
    (tmp_path / "empty" / "wav").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no WAV files in .*empty/wav"):
        build_emodb(tmp_path / "empty")



def test_emodb_every_speaker_choice_builds_three_splits_or_is_one_named_line(tmp_path, capsys):
    """Each --test-speaker/--validation-speaker combination: three disjoint non-empty splits, or one line naming the
    option and the speakers. --validation-speaker 03 alone clashed with the default test speaker 03, and the refusal
    named neither option; a folder of two speakers said 'at least 3 speakers' without naming the folder."""
    root = make_emodb(tmp_path / "emodb")
    for test, validation in itertools.product([None, "03", "08", "16", "3"], repeat=2):
        options = {"test_speaker": test, "validation_speaker": validation}
        try:
            dialogues = build_emodb(root, **options)
        except ValueError as error:
            assert re.search(r"--(test|validation)-speaker .*has speakers 03, 08, 16$", str(error)), (options, error)
            continue
        speakers = {split: set(flat(dialogues[split], "speakers")) for split in SPLITS}
        assert all(speakers.values()) and set.union(*speakers.values()) == {"03", "08", "16"}, options
        assert sum(map(len, speakers.values())) == 3 and speakers["test"] == {test or "03"}, options
    arguments = ["prepare", "emodb", str(root), str(tmp_path / "out"), "--validation-speaker", "03"]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(
        r"--validation-speaker '03' is the default test speaker .*pass --test-speaker too, e.g. '16'", error), error
    assert main([*arguments, "--test-speaker", "16"]) == 0
    (tmp_path / "two").mkdir()
    for stem in ("03a01Fa", "08a01Wa"):
        write_wav(tmp_path / "two" / f"{stem}.wav")
    with pytest.raises(ValueError, match=r"two has speakers 03, 08; speaker-independent splits need at least 3"):
        build_emodb(tmp_path / "two", test_speaker="03", validation_speaker="08")


def test_emodb_reads_a_recording_once_under_names_differing_in_case(tmp_path, caplog, capsys):
    """``x.wav`` beside ``x.WAV`` (copies between file systems): a byte-identical twin is read once, with a warning,
    and the build is that without it; twins that differ are refused in one line. Both were refused as an utterance id
    appearing twice, naming neither file."""
    root = make_emodb(tmp_path / "emodb")
    alone = build_emodb(root)
    shutil.copy(root / "08a01Wa.wav", root / "08a01Wa.WAV")
    shutil.copy(root / "16a05Ld.wav", root / "16a05Ld.Wav")
    with caplog.at_level("WARNING", logger="mister_e.data.emodb"):
        twinned = build_emodb(root)
    assert re.search(r"left out 2 WAVs that are byte-identical copies .*08a01Wa\.WAV", caplog.text)
    for split in SPLITS:
        assert twinned[split].to_list() == alone[split].to_list()
    (root / "16a05Ld.Wav").unlink()
    caplog.clear()
    with caplog.at_level("WARNING", logger="mister_e.data.emodb"):
        build_emodb(root)
    assert re.search(r"left out 1 WAV that is a byte-identical copy of one whose name .* \(\S*08a01Wa\.WAV\)",
                     caplog.text), caplog.text
    write_wav(root / "03a01Fa.WAV")
    (root / "03a01Fa.WAV").write_bytes((root / "03a01Fa.WAV").read_bytes()[:-2])
    assert main(["prepare", "emodb", str(root), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and re.search(
        r"03a01Fa\.wav and 03a01Fa\.WAV name one recording .* contents differ", error), error


def test_emodb_zip_or_file_as_root_is_one_line(tmp_path, capsys):
    """The corpus is downloaded as a zip; given as ROOT it failed with 'Not a directory'. It is not read in place: the
    dataset keeps each recording's path, which a zip member lacks."""
    root = make_emodb(tmp_path / "emodb", "wav")
    with zipfile.ZipFile(tmp_path / "emodb.zip", "w") as archive:
        for path in (root / "wav").iterdir():
            archive.write(path, f"wav/{path.name}")
    for given, says in [
        (tmp_path / "emodb.zip", r"emodb\.zip is a zip archive; unzip it \(unzip emodb\.zip -d emodb\)"),
        (root / "wav" / "notes.txt", r"notes\.txt is not a folder"),
        (tmp_path / "nowhere", r"EmoDB: .*nowhere not found"),
    ]:
        assert main(["prepare", "emodb", str(given), str(tmp_path / "out")]) == 2
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and re.search(says, error), error
    assert not (tmp_path / "out").exists()

def test_emodb_skips_macos_metadata_and_audbs_ambiguous_recordings(tmp_path, caplog):
    """macOS leaves ``._<name>.wav`` metadata beside each WAV (its tar, copies to exFAT or SMB); audb's emodb 2.0.0
    adds to wav/ the recordings that fewer than 80% of listeners recognised, which the corpus's own 535 leave out:
    neither is a recording of the corpus, and the one refused the build while the other passed unnoticed."""
    root = make_emodb(tmp_path / "emodb", "wav")
    (root / "wav" / "._03a01Fa.wav").write_bytes(b"\x00\x05\x16\x07")
    for stem in ("03a01Fb", "08a04Lb"):
        write_wav(root / "wav" / f"{stem}.wav")
        write_wav(root / "laryngo" / f"{stem}.wav")  # 2.0.0's laryngograms, beside wav/
    write_csv(root / "db.emotion.categories.ambiguous.csv",
              [["wav/03a01Fb.wav", "happiness", "0.45"], ["wav/08a04Lb.wav", "boredom", "0.3"]],
              ["file", "emotion", "emotion.confidence"])
    for folder in (root, root / "wav"):
        with caplog.at_level("WARNING", logger="mister_e.data.emodb"):
            dialogues = build_emodb(folder)
        assert sorted(u for split in SPLITS for u in flat(dialogues[split], "utterance_ids")) == sorted(EMODB_STEMS)
        assert re.search(r"left out 2 of 22 WAVs that .*db\.emotion\.categories\.ambiguous\.csv lists", caplog.text)
        caplog.clear()


def test_emodb_through_the_cli(tmp_path, capsys):
    assert PREPARE_DATASETS == tuple(sorted(BUILDERS))
    root = make_emodb(tmp_path / "emodb", "wav")
    arguments = ["--test-speaker", "08", "--validation-speaker", "16", "--conversation-size", "2"]
    assert main(["prepare", "emodb", str(root), str(tmp_path / "out"), *arguments]) == 0
    dialogues = load_from_disk(str(tmp_path / "out"))
    assert [len(ids) for ids in dialogues["test"]["utterance_ids"]] == [2, 2, 2, 1]
    assert set(flat(dialogues["test"], "speakers")) == {"08"} and set(flat(dialogues["train"], "speakers")) == {"03"}
    assert "happiness" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "emodb", str(tmp_path / "empty"), str(tmp_path / "out2")]) == 2
    assert "empty" in capsys.readouterr().err and not (tmp_path / "out2").exists()


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


def test_real_meld_and_mosi():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    meld = build_meld_csv(SHARED_DATA / "meld")
    utterances = {split: sum(len(labels) for labels in meld[split]["labels"]) for split in SPLITS}
    assert utterances == {"train": 9989, "validation": 1109, "test": 2610}
    assert {split: len(meld[split]) for split in SPLITS} == {"train": 1038, "validation": 114, "test": 280}
    test_counts = np.bincount([label for labels in meld["test"]["labels"] for label in labels], minlength=7)
    assert test_counts.tolist() == [1256, 281, 50, 208, 402, 68, 345]
    train_counts = np.bincount([label for labels in meld["train"]["labels"] for label in labels], minlength=7)
    assert train_counts.tolist() == [4710, 1205, 268, 683, 1743, 271, 1109]

    cosmic = build_cosmic_pickle(SHARED_DATA / "meld" / "cosmic_meld.pkl", trust_pickle=True)
    for split in SPLITS:
        assert cosmic[split].select_columns(["dialogue_id", "texts", "labels"]).to_list() == (
            meld[split].select_columns(["dialogue_id", "texts", "labels"]).to_list()
        )

    mosi = build_mosi(SHARED_DATA / "mosi", acoustic=True)
    assert {split: len(mosi[split]) for split in SPLITS} == {"train": 52, "validation": 10, "test": 31}
    counts = {split: np.bincount([l for labels in mosi[split]["labels"] for l in labels]).tolist() for split in SPLITS}
    assert counts == {"train": [552, 732], "validation": [92, 137], "test": [379, 307]}
    assert len(mosi["test"][0]["speech_embeds"][0]) == 73
    release = mosi_release_folds(SHARED_DATA / "mosi")
    assert {fold: len(videos) for fold, videos in release.items()} == {"train": 51, "test": 31, "valid": 11}


def test_real_emodb():
    if not (SHARED_DATA / "emodb").is_dir():
        pytest.skip(f"{SHARED_DATA / 'emodb'} not present")
    dialogues = build_emodb(SHARED_DATA / "emodb")
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
        fold = build_emodb(SHARED_DATA / "emodb", test, validation)
        seen = {split: set(flat(fold[split], "speakers")) for split in SPLITS}
        assert seen["test"] == {test} and seen["validation"] == {validation}
        assert seen["train"] == set(speakers) - {test, validation}


def test_processor_utterances_is_the_one_row_to_processor_mapping():
    from mister_e.data.schema import processor_utterances

    row = {"dialogue_id": "d", "utterance_ids": ["a", "b", "c"], "audio": ["a.wav", None, "c.wav"],
           "texts": ["hi", "oh", None]}
    assert processor_utterances(row) == [{"audio": "a.wav", "text": "hi"}, {"text": "oh"}, {"audio": "c.wav"}]
    assert processor_utterances(row, ["speech"]) == [{"audio": "a.wav"}, {}, {"audio": "c.wav"}]
    dropped = [[False, True], [False, True], [True, False]]  # the collator's modality dropout removed a's audio
    assert processor_utterances(row, present=dropped) == [{"text": "hi"}, {"text": "oh"}, {"audio": "c.wav"}]
    assert processor_utterances({"utterance_ids": ["x"], "texts": ["t"]}) == [{"text": "t"}]  # no audio column
    assert processor_utterances({"utterance_ids": ["x"], "texts": [" "], "audio": ["x.wav"]}) == [{"audio": "x.wav"}]
