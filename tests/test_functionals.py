"""The openSMILE functionals speech encoder: features, standardisation held in the model, the CLI end to end."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from datasets import load_from_disk
from transformers import BertTokenizerFast, pipeline

from mister_e import (
    MisterEForUtteranceClassification,
    MisterEFunctionalsFeatureExtractor,
    MisterEProcessor,
    feature_extraction_mister_e,
)
from mister_e.assembly import join_stages
from mister_e.cli import main
from mister_e.data import build_emodb
from mister_e.training import fit_functionals_head, train_encoder

from tiny import tiny_sizes

opensmile = pytest.importorskip("opensmile")  # the extra `mister-e[opensmile]`, installed by the test command

SR = 16000


def voice(sampling_rate: int, seconds: float = 1.5, f0: float = 180.0, loudness: float = 0.2) -> np.ndarray:
    """A harmonic tone with vibrato and a loudness contour: voiced enough for pitch and spectral descriptors."""
    t = np.arange(int(sampling_rate * seconds)) / sampling_rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))) / sampling_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2
    return (loudness * envelope * sum(np.sin(k * phase) / k for k in range(1, 8))).astype(np.float32)


def tokenizer() -> BertTokenizerFast:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "der", "lappen", "das", "will", "sie"]
    return BertTokenizerFast(vocab={word: i for i, word in enumerate(words)})


def functionals_processor(feature_set: str = "eGeMAPSv02") -> MisterEProcessor:
    return MisterEProcessor(MisterEFunctionalsFeatureExtractor(feature_set), tokenizer())


def features(processor: MisterEProcessor, path) -> np.ndarray:
    return processor({"utterances": [{"audio": str(path)}]}, return_tensors="np")["input_features"][0]


@pytest.mark.parametrize("feature_set, width", [("eGeMAPSv02", 88), ("ComParE_2016", 6373)])
def test_functionals_equal_opensmile_on_the_same_file(tmp_path, feature_set, width):
    sf.write(tmp_path / "a.wav", voice(SR), SR)
    ours = features(functionals_processor(feature_set), tmp_path / "a.wav")
    smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                            feature_level=opensmile.FeatureLevel.Functionals)
    reference = smile.process_file(str(tmp_path / "a.wav")).to_numpy(np.float32)[0]
    assert ours.shape == (width,)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("feature_set", ["eGeMAPSv02", "ComParE_2016"])
def test_stereo_44k_file_gives_nearly_the_features_of_its_16k_mono_version(tmp_path, feature_set):
    sf.write(tmp_path / "mono16k.wav", voice(SR), SR)
    wave = voice(44100)
    sf.write(tmp_path / "stereo44k.wav", np.stack([wave, 0.9 * wave], axis=1), 44100)
    processor = functionals_processor(feature_set)
    mono, stereo = features(processor, tmp_path / "mono16k.wav"), features(processor, tmp_path / "stereo44k.wav")
    assert not np.array_equal(mono, stereo)  # really two different files
    assert np.corrcoef(np.log1p(np.abs(mono)), np.log1p(np.abs(stereo)))[0, 1] > 0.995
    relative = np.abs(mono - stereo) / (np.abs(mono) + np.abs(stereo) + 1e-6)
    assert np.median(relative) < 0.02


def test_in_memory_arrays_and_files_agree(tmp_path):
    sf.write(tmp_path / "a.wav", voice(SR), SR, subtype="FLOAT")  # no 16-bit rounding between the two
    processor = functionals_processor()
    from_array = processor({"utterances": [{"audio": {"array": voice(SR), "sampling_rate": SR}}]},
                           return_tensors="np")["input_features"][0]
    np.testing.assert_allclose(from_array, features(processor, tmp_path / "a.wav"), rtol=1e-4, atol=1e-4)


def test_without_the_extra_the_error_names_it(tmp_path, monkeypatch, capsys):
    sf.write(tmp_path / "a.wav", voice(SR), SR)
    monkeypatch.setitem(sys.modules, "opensmile", None)  # `import opensmile` now raises ImportError
    monkeypatch.setattr(feature_extraction_mister_e, "_smiles", {})
    monkeypatch.setattr(feature_extraction_mister_e, "_cache", type(feature_extraction_mister_e._cache)())
    with pytest.raises(ImportError, match=r'pip install "mister-e\[opensmile\]"'):
        features(functionals_processor(), tmp_path / "a.wav")
    dataset = tmp_path / "emodb"
    write_emodb(tmp_path / "release")
    assert main(["prepare", "emodb", str(tmp_path / "release"), str(dataset)]) == 0
    code = main(["train-encoder", "--dataset", str(dataset), "--modality", "speech",
                 "--backbone", "opensmile:eGeMAPSv02", "--output-dir", str(tmp_path / "encoder")])
    assert code == 2 and "mister-e[opensmile]" in capsys.readouterr().err


def test_unknown_feature_set_is_named():
    with pytest.raises(ValueError, match="opensmile:GeMAPS"):
        MisterEForUtteranceClassification.from_backbones(speech="opensmile:GeMAPS")
    with pytest.raises(ValueError, match="feature_set"):
        MisterEFunctionalsFeatureExtractor("GeMAPS")


def test_too_short_audio_is_an_error_not_nan():
    extractor = MisterEFunctionalsFeatureExtractor("eGeMAPSv02")
    with pytest.raises(ValueError, match="waveform 1: .*undefined for 100 samples"):
        extractor([voice(SR), voice(SR)[:100]], sampling_rate=SR)
    # through the processor, the error names the caller's utterance rather than its place among the waveforms
    processor = MisterEProcessor(extractor, tokenizer(), min_audio_seconds=0)
    conversation = {"utterances": [{"text": "hi"}, {"audio": {"array": voice(SR), "sampling_rate": SR}},
                                   {"audio": {"array": voice(SR)[:100], "sampling_rate": SR}, "id": "short"}]}
    with pytest.raises(ValueError, match=r"^conversation 0, utterance 2 \(id='short'\): openSMILE .*undefined"):
        processor(conversation)


def test_save_load_keeps_standardisation_and_predictions_bit_identical(tmp_path):
    paths = []
    for i, f0 in enumerate((120.0, 180.0, 260.0)):
        paths.append(str(tmp_path / f"{i}.wav"))
        sf.write(paths[-1], voice(SR, f0=f0, loudness=0.05 * (i + 1)), SR)
    processor = functionals_processor()
    torch.manual_seed(0)
    model = MisterEForUtteranceClassification.from_backbones(speech="opensmile:eGeMAPSv02", speech_embed_dim=16)
    batch = processor([{"utterances": [{"audio": path}]} for path in paths])
    model.speech_encoder.standardizer.fit(batch["input_features"])
    standardized = model.speech_encoder.standardizer(batch["input_features"])
    assert torch.allclose(standardized.mean(0), torch.zeros(88), atol=1e-4)
    model.eval().save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")

    reloaded = MisterEForUtteranceClassification.from_pretrained(tmp_path / "model").eval()
    reloaded_batch = MisterEProcessor.from_pretrained(tmp_path / "model")([{"utterances": [{"audio": p}]} for p in paths])
    for name in ("mean", "std"):
        assert torch.equal(getattr(reloaded.speech_encoder.standardizer, name),
                           getattr(model.speech_encoder.standardizer, name))
    assert not torch.equal(reloaded.speech_encoder.standardizer.std, torch.ones(88))  # fitted, not defaults
    with torch.no_grad():
        assert torch.equal(model(**batch).speech_logits, reloaded(**reloaded_batch).speech_logits)


# --- the CLI end to end on WAV files ---------------------------------------------------------------------------------

EMOTIONS = {"W": (260.0, 0.3), "T": (110.0, 0.05), "N": (170.0, 0.12)}  # letter -> (pitch, loudness)


def write_emodb(folder, speakers=("03", "08", "09", "10"), texts=("a01", "a02")) -> None:
    """A miniature EmoDB release: pitch and loudness tell the three emotions apart."""
    folder.mkdir(parents=True, exist_ok=True)
    for s, speaker in enumerate(speakers):
        for text in texts:
            for letter, (f0, loudness) in EMOTIONS.items():
                for version in "ab":
                    wave = voice(SR, seconds=1.2, f0=f0 * (1 + 0.05 * s), loudness=loudness)
                    sf.write(folder / f"{speaker}{text}{letter}{version}.wav", wave, SR)


def test_cli_train_encoder_extract_train_predict_on_wavs(tmp_path, capsys):
    write_emodb(tmp_path / "release")
    dataset = tmp_path / "emodb"
    assert main(["prepare", "emodb", str(tmp_path / "release"), str(dataset), "--conversation-size", "4"]) == 0
    assert main(["train-encoder", "--dataset", str(dataset), "--modality", "speech",
                 "--backbone", "opensmile:eGeMAPSv02", "--output-dir", str(tmp_path / "encoder"),
                 "--set", "speech_embed_dim=16"]) == 0
    encoder_dir = tmp_path / "encoder" / "merged"
    encoder = MisterEForUtteranceClassification.from_pretrained(encoder_dir)
    results = json.loads((tmp_path / "encoder" / "results.json").read_text())
    assert results["solver"] == "lbfgs" and results["validation"]["weighted_f1"] > 0.9  # pitch and loudness separate
    assert not list((tmp_path / "encoder").glob("checkpoint-*"))
    # The statistics are the training split's, computed once by stage 1 and saved with the model.
    train = load_from_disk(str(dataset))["train"]
    processor = MisterEProcessor.from_pretrained(encoder_dir)
    train_features = torch.cat([
        processor([{"utterances": [{"audio": path}]} for path in row])["input_features"] for row in train["audio"]
    ]).double()
    assert torch.allclose(encoder.speech_encoder.standardizer.mean.double(), train_features.mean(0), rtol=1e-4)

    assert main(["extract", "--dataset", str(dataset), "--model", str(encoder_dir),
                 "--output-dir", str(tmp_path / "embedded")]) == 0
    embedded = load_from_disk(str(tmp_path / "embedded"))
    assert np.asarray(embedded["train"][0]["speech_embeds"]).shape == (4, 16)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({
        "dataset": str(tmp_path / "embedded"), "output_dir": str(tmp_path / "runs"), "seeds": [0],
        "modalities": ["speech"],
        "config": {"experts": ["speech"], "context_dim": 8, "gru_layers": 1, "standardize_inputs": True},
        "training": {"num_train_epochs": 10, "learning_rate": 1e-2},
    }))
    assert main(["train", "--recipe", str(recipe)]) == 0

    wavs = tmp_path / "conversation"
    wavs.mkdir()
    for i, letter in enumerate("WTN"):
        sf.write(wavs / f"utt{i}.wav", voice(44100, f0=EMOTIONS[letter][0], loudness=EMOTIONS[letter][1]), 44100)
    capsys.readouterr()
    assert main(["predict", "--model", str(tmp_path / "runs" / "seed_0"), "--encoder", str(encoder_dir),
                 str(wavs)]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert [p["id"] for p in predictions] == ["utt0", "utt1", "utt2"]
    assert all(p["label"] in ("anger", "sadness", "neutral") and p["expert_weights"]["speech"] == 1.0
               for p in predictions)

    # The joined model saved as one folder answers through the pipeline, as `predict` did.
    model, joined = join_stages(tmp_path / "runs" / "seed_0", [encoder_dir])
    model.save_pretrained(tmp_path / "end-to-end")
    joined.save_pretrained(tmp_path / "end-to-end")
    pipe = pipeline("emotion-recognition-in-conversation", model=str(tmp_path / "end-to-end"))
    answers = pipe({"utterances": [{"audio": str(wavs / f"utt{i}.wav")} for i in range(3)]})
    assert [a["label"] for a in answers] == [p["label"] for p in predictions]
    assert [a["score"] for a in answers] == pytest.approx([p["score"] for p in predictions], abs=1e-6)


# --- stage 1 of a functionals encoder: the full-batch L-BFGS fit (default) and the Trainer's epochs ------------------


def separable_features(rows: int = 60, width: int = 88, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    """Three classes of unequal size, apart along a few of many noisy dimensions."""
    generator = torch.Generator().manual_seed(seed)
    labels = [0] * (rows // 2) + [1] * (rows // 3) + [2] * (rows - rows // 2 - rows // 3)
    features = torch.randn(rows, width, generator=generator) * 3 + 10
    features[:, :3] += 4 * torch.nn.functional.one_hot(torch.tensor(labels), 3)
    return features, labels


def functionals_encoder(features: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    encoder = MisterEForUtteranceClassification.from_backbones(
        speech="opensmile:eGeMAPSv02", speech_embed_dim=8, id2label={0: "a", 1: "b", 2: "c"}).speech_encoder
    encoder.standardizer.fit(features)
    return encoder


@pytest.mark.parametrize("l2", [0.01, 0.03])
def test_lbfgs_fits_the_head_to_convergence_deterministically(l2):
    features, labels = separable_features()
    encoders = [functionals_encoder(features), functionals_encoder(features)]
    objectives = [fit_functionals_head(encoder, features, labels, l2=l2) for encoder in encoders]
    assert objectives[0] == objectives[1]  # no randomness: dropout is off and the batch is everything
    assert all(torch.equal(a, b) for a, b in zip(encoders[0].state_dict().values(), encoders[1].state_dict().values()))
    assert encoders[0].training  # its mode is given back
    with torch.no_grad():
        predicted = encoders[0].eval()(features, None)[1].argmax(-1)
    assert predicted.tolist() == labels
    # Converged: another round of L-BFGS from the fitted weights barely lowers the objective.
    assert fit_functionals_head(encoders[0], features, labels, l2=l2) == pytest.approx(objectives[0], rel=5e-3)


def test_a_larger_l2_gives_smaller_weights_and_a_negative_one_is_refused():
    features, labels = separable_features()
    norms = []
    for l2 in (0.01, 0.3):
        encoder = functionals_encoder(features)
        fit_functionals_head(encoder, features, labels, l2=l2)
        norms.append(float((encoder.projection.weight.norm() * encoder.classifier[-1].weight.norm()).detach()))
    assert norms[1] < norms[0] / 2
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="`l2` must be a finite number >= 0"):
            fit_functionals_head(encoder, features, labels, l2=bad)


def test_trainer_solver_still_trains_functionals_in_epochs_and_settings_are_checked(tmp_path):
    write_emodb(tmp_path / "release")
    dataset = build_emodb(tmp_path / "release", conversation_size=4)
    common = dict(backbone="opensmile:eGeMAPSv02", config_overrides={"speech_embed_dim": 8})
    results = train_encoder(dataset, "speech", tmp_path / "trainer", functionals_processor(), solver="trainer",
                            training_overrides={"num_train_epochs": 2, "learning_rate": 1e-2}, **common)
    assert results["solver"] == "trainer" and results["best_step"] is not None
    with pytest.raises(ValueError, match=r"\['num_train_epochs'\] set the Trainer's epochs.*--solver trainer"):
        train_encoder(dataset, "speech", tmp_path / "lbfgs", functionals_processor(),
                      training_overrides={"num_train_epochs": 2}, **common)
    with pytest.raises(ValueError, match="`l2` is the L2 strength of solver 'lbfgs'"):
        train_encoder(dataset, "speech", tmp_path / "lbfgs", functionals_processor(), solver="trainer", l2=0.1,
                      **common)
    with pytest.raises(ValueError, match="L-BFGS fits the head of openSMILE functionals encoders only"):
        # refused before the (here missing) backbone would load
        train_encoder(dataset, "text", tmp_path / "lbfgs", None, backbone=tmp_path / "missing", solver="lbfgs")


def test_cli_training_fields_without_the_trainer_solver_are_one_named_line(tmp_path, capsys):
    write_emodb(tmp_path / "release", speakers=("03", "08", "09"))
    assert main(["prepare", "emodb", str(tmp_path / "release"), str(tmp_path / "emodb")]) == 0
    capsys.readouterr()
    assert main(["train-encoder", "--dataset", str(tmp_path / "emodb"), "--modality", "speech",
                 "--backbone", "opensmile:eGeMAPSv02", "--output-dir", str(tmp_path / "encoder"),
                 "--set", "num_train_epochs=3"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "num_train_epochs" in error and "--solver trainer" in error, error
    assert not (tmp_path / "encoder").exists()
    assert main(["train-encoder", "--dataset", str(tmp_path / "emodb"), "--modality", "speech",
                 "--backbone", "opensmile:eGeMAPSv02", "--output-dir", str(tmp_path / "encoder"), "--l2", "nan"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "`l2` must be a finite number >= 0, got nan" in error, error
    assert not (tmp_path / "encoder").exists()


REMOTE_SCRIPT = """
import json, sys
sys.modules["mister_e"] = None  # only the folder's code files
import numpy as np, torch
from transformers import AutoModel, AutoProcessor

folder, wavs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
assert type(processor.feature_extractor).__module__.startswith("transformers_modules.")
assert "opensmile" not in sys.modules  # loading needs no extra; computing features does
with torch.no_grad():
    logits = model(**processor({"utterances": [{"audio": w, "text": "der lappen"} for w in wavs]})).logits
np.save(out, logits[0].numpy())
"""


def test_functionals_model_loads_as_remote_code_without_the_package(tmp_path):
    import subprocess

    from transformers import BertConfig

    from mister_e import MisterEConfig, MisterEForEmotionRecognition, MisterEOpenSmileConfig

    wavs = []
    for i, f0 in enumerate((120.0, 240.0)):
        wavs.append(str(tmp_path / f"{i}.wav"))
        sf.write(wavs[-1], voice(SR, f0=f0), SR)
    torch.manual_seed(0)
    config = MisterEConfig(
        speech_config=MisterEOpenSmileConfig(feature_set="eGeMAPSv02"),
        text_config=BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                               vocab_size=10),
        speech_embed_dim=8, text_embed_dim=8, id2label={0: "a", 1: "b"}, **tiny_sizes(),
    )
    model = MisterEForEmotionRecognition(config).eval()
    processor = functionals_processor()
    inputs = processor({"utterances": [{"audio": w, "text": "der lappen"} for w in wavs]})
    model.speech_encoder.standardizer.fit(inputs["input_features"] + torch.randn(2, 88))
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "feature_extraction_mister_e.py").is_file()

    done = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(tmp_path / "model"), json.dumps(wavs),
                           str(tmp_path / "logits.npy")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with torch.no_grad():
        expected = model(**inputs).logits[0].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), expected, rtol=1e-5, atol=1e-6)


def test_ctrl_c_inside_opensmile_is_an_interrupt_not_short_audio():
    """openSMILE's C code swallows a KeyboardInterrupt and returns NaN functionals (then reported as audio too
    short): the interrupt is held while it runs and raised once it returns."""
    import os
    import signal

    from mister_e.feature_extraction_mister_e import _interruptible

    with pytest.raises(KeyboardInterrupt):
        with _interruptible():
            os.kill(os.getpid(), signal.SIGINT)
            reached_the_end = True
    assert reached_the_end and signal.getsignal(signal.SIGINT) is signal.default_int_handler
