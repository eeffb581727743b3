"""The EmoDB builder on miniature fake releases: labels and speakers from file names, speaker-independent folds,
conversations as chunks of one speaker, and the layouts and names it refuses."""

from __future__ import annotations

import itertools
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from datasets import load_from_disk

from mister_e.cli import main
from mister_e.data import BUILDERS, EMODB_LABELS, EMODB_TRANSCRIPTS, PREPARE_DATASETS, SPLITS, build_emodb, emodb_folds

from release_files import flat, write_csv, write_wav

pytestmark = pytest.mark.usefixtures("offline_hf_home")


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
