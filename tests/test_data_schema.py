"""The dialogue schema (make_dialogue_dataset, attach_embeddings, the row-to-processor mapping) and its checks,
and saving and loading dialogue datasets atomically."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from datasets import DatasetDict, load_from_disk

from mister_e.data import SPLITS, make_dialogue_dataset, save_dialogues, validate_dialogues
from mister_e.data.storage import load_dialogues

pytestmark = pytest.mark.usefixtures("offline_hf_home")


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


# --- storage ------------------------------------------------------------------------------------------


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
