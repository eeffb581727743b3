"""State-dict keys are a public contract: checkpoints saved by earlier versions must keep loading and predicting.

`tests/fixtures/checkpoints/` holds tiny checkpoints saved by the code of their day, with the logits they gave on
fixed inputs (`expected.json`). `python tests/test_checkpoints.py NAME` saves a new one (never overwrite an old one).
`stage-two-5ea25b8` was saved by the first commit (a `git worktree` of it on `PYTHONPATH`; weights perturbed so that
every one matters): its config.json lacks every field added since (`mixture_space`, `standardize_inputs`, the
dropouts, `gate_holdout_fraction`, per-modality context settings, `text_layers`, ...), so it fails if a new field's
default stops giving the behaviour the model had before the field existed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mister_e import MisterEConfig, MisterEForEmotionRecognition, MisterEProcessor

from tiny import tiny_config

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"
SR = 16000


def conversation() -> dict:
    """Four utterances, one without audio and one without text, as deterministic waveforms (no RNG)."""
    time = np.arange(SR // 2) / SR
    tones = [np.sin(2 * np.pi * f * time) * (0.2 + 0.1 * i) for i, f in enumerate((220.0, 330.0, 440.0, 550.0))]
    texts = ["hello world", "oh really", None, "yes okay fine"]
    audio = [{"array": tone.astype(np.float32), "sampling_rate": SR} for tone in tones]
    audio[1] = None
    return {"utterances": [{"audio": clip, "text": text} for clip, text in zip(audio, texts)]}


def embeddings(config: MisterEConfig) -> dict:
    """Fixed stage-2 inputs: two conversations of 5 and 3 utterances, the second with its last text missing."""
    grid = torch.arange(2 * 5 * max(config.speech_embed_dim, config.text_embed_dim), dtype=torch.float32)
    values = torch.sin(grid * 0.37).reshape(2, 5, -1) * 3
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    modality_mask = attention_mask[..., None].repeat(1, 1, 2).bool()
    modality_mask[1, 2, 1] = False
    return {"speech_embeds": values[..., :config.speech_embed_dim], "text_embeds": values[..., :config.text_embed_dim],
            "attention_mask": attention_mask, "modality_mask": modality_mask}


def predict(folder: Path) -> tuple[MisterEForEmotionRecognition, dict]:
    model, info = MisterEForEmotionRecognition.from_pretrained(folder, output_loading_info=True)
    model.eval()
    with torch.no_grad():
        if (folder / "processor_config.json").is_file() or (folder / "tokenizer_config.json").is_file():
            output = model(**MisterEProcessor.from_pretrained(folder)(conversation()))
        else:
            output = model(**embeddings(model.config))
    return info, {"logits": output.logits.tolist(), "gate_weights": output.gate_weights.tolist()}


@pytest.mark.parametrize("name", sorted(path.name for path in FIXTURES.iterdir()) if FIXTURES.is_dir() else [])
def test_saved_checkpoint_loads_and_predicts_as_it_did(name):
    """Loads without missing, unexpected or resized weights and gives the logits and gate weights it gave when saved.
    A change of those values means that checkpoints users saved now predict differently: fix the code, never the
    fixture."""
    folder = FIXTURES / name
    info, outputs = predict(folder)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    expected = json.loads((folder / "expected.json").read_text())
    for key, values in expected.items():
        torch.testing.assert_close(torch.tensor(outputs[key]), torch.tensor(values), rtol=1e-4, atol=1e-5)


def test_every_fixture_was_found():
    names = {path.name for path in FIXTURES.iterdir()}
    assert {"end-to-end-v0.1", "stage-two-5ea25b8", "stage-two-small-v0.1"} <= names


def save_fixture(name: str) -> None:
    """Save the tiny end-to-end model (WavLM + BERT encoders, with processor) or a stage-2 model of the `small`
    recipe's kind (input standardisers, probability mixture), and the logits it gives now."""
    from tiny_end_to_end import tiny_model, tiny_processor

    folder = FIXTURES / name
    if folder.exists():
        raise SystemExit(f"{folder} exists: fixtures are history, never overwritten.")
    if name.startswith("end-to-end"):
        model, processor = tiny_model(), tiny_processor()
    else:
        torch.manual_seed(0)
        model = MisterEForEmotionRecognition(tiny_config(standardize_inputs=True, mixture_space="probabilities")).eval()
        model.speech_standardizer.fit(torch.linspace(-3, 5, 60).reshape(10, 6))
        model.text_standardizer.fit(torch.cos(torch.arange(50.0)).reshape(10, 5))
        processor = None
    model.save_pretrained(folder)
    if processor is not None:
        processor.save_pretrained(folder)
    for code in folder.glob("*.py"):  # remote code travels with Hub folders; the package loads these
        code.unlink()
    (folder / "expected.json").write_text(json.dumps(predict(folder)[1]))


if __name__ == "__main__":
    save_fixture(sys.argv[1])


# Public names of the flat modules before the re-layout into data/ and training/ (release 0.1): they still import.
EARLIER_PUBLIC_NAMES = {
    "mister_e.data": "BUILDERS EMBED_COLUMNS EMODB_LABELS EMODB_TRANSCRIPTS IEMOCAP_LABELS MELD_LABELS MOSI_LABELS "
                     "MOSI_LABEL_RULES SPLITS attach_embeddings build_cosmic_pickle build_emodb build_iemocap "
                     "build_meld build_meld_csv build_mosi describe dialogue_features emodb_folds load_mosi_acoustic "
                     "make_dialogue_dataset mosi_release_folds prepare save_dialogues validate_dialogues",
    "mister_e.training": "ABLATIONS CONVERSATION_TRAINING_DEFAULTS ENCODER_TRAINING_DEFAULTS MisterEDataCollator "
                         "MisterETrainer apply_ablation build_trainer drop_modalities evaluate_model "
                         "fit_functionals_statistics fit_input_statistics flatten_utterances label_names "
                         "last_checkpoint load_recipe run_ablations speech_features train_conversation_model "
                         "train_encoder train_seeds with_gate_holdout GATE_HOLDOUT_COLUMN",
    "mister_e.lora": "LORA_DEFAULTS LORA_TARGETS apply_lora load_lora lora_config merge_lora",
    "mister_e.scale": "PAPER_BACKBONES activation_bytes format_plan paper_backbone_config paper_scale_plan "
                      "parameter_sizes prepare_quantized_backbones quantization_kwargs training_memory",
    "mister_e.demo": "EMOTIONS build_demo_corpus demo_conversation",
    # Before `data/checks.py`, `data/building.py` and `require_splits` in `data/splits.py` (stop 35).
    "mister_e.data.schema": "AUDIO DIALOGUE_ID EMBED_COLUMNS LABELS SPEAKERS SPEECH_EMBEDS SPLITS TEXTS TEXT_EMBEDS "
                            "UTTERANCE_COLUMNS UTTERANCE_IDS attach_embeddings check_finite_embeddings "
                            "experts_never_given require_splits dialogue_features describe make_dialogue_dataset "
                            "validate_dialogues",
    "mister_e.evaluation": "DEFAULT_DROP_PROBABILITIES GATE_NAMES SCALAR_METRICS compute_metrics format_seed_table "
                           "load_erc_metric robustness_curve summarize_seeds write_evaluation_report",
}


@pytest.mark.parametrize("module", sorted(EARLIER_PUBLIC_NAMES))
def test_earlier_public_import_paths_still_resolve(module):
    imported = __import__(module, fromlist=["_"])
    assert [name for name in EARLIER_PUBLIC_NAMES[module].split() if not hasattr(imported, name)] == []


# --- loading options -------------------------------------------------------------------------------------------------

def test_sharded_save_and_device_map_reload_the_same_model(tmp_path):
    """`save_pretrained(max_shard_size=...)` writes shards and an index; they reload, with `device_map="cpu"` too
    (accelerate's loading path), to the same answers."""
    folder = FIXTURES / "stage-two-small-v0.1"
    model = MisterEForEmotionRecognition.from_pretrained(folder).eval()
    model.save_pretrained(tmp_path, max_shard_size="8KB")
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    reloaded = MisterEForEmotionRecognition.from_pretrained(tmp_path, device_map="cpu").eval()
    inputs = embeddings(model.config)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def far_from_zero(rows: int, width: int) -> torch.Tensor:
    """Features of unit spread around 1e5, as openSMILE's ComParE functionals have (spectral variances reach 1e11):
    beyond float16's range (65504), and 512 apart in bfloat16 at that size."""
    return 1e5 + torch.sin(torch.arange(rows * width, dtype=torch.float32) * 0.37).reshape(rows, width)


def standardized_far_from_zero() -> tuple[MisterEForEmotionRecognition, dict]:
    """A float32 model standardising its inputs, and inputs whose speech vectors lie far from zero (its statistics')."""
    torch.manual_seed(0)
    model = MisterEForEmotionRecognition(tiny_config(standardize_inputs=True)).eval()
    inputs = embeddings(model.config)
    inputs["speech_embeds"] = far_from_zero(10, 6).reshape(2, 5, 6)
    model.speech_standardizer.fit(inputs["speech_embeds"].reshape(-1, 6))
    model.text_standardizer.fit(inputs["text_embeds"].reshape(-1, 5))
    return model, inputs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_load_keeps_the_input_statistics_in_float32(tmp_path, dtype):
    """`from_pretrained(dtype=...)` casts every weight; it cast the input standardizers' mean and std with them, and the
    inputs before them, so features far from zero lost their spread to rounding (bf16: every logit of the reloaded
    model far off) or overflowed to inf (fp16: NaN logits). The statistics and the standardisation stay float32."""
    model, inputs = standardized_far_from_zero()
    model.save_pretrained(tmp_path)
    half = MisterEForEmotionRecognition.from_pretrained(tmp_path, dtype=dtype).eval()
    with torch.no_grad():
        torch.testing.assert_close(half(**inputs).logits.float(), model(**inputs).logits, rtol=0.05, atol=0.05)
    assert half.dtype == dtype and half.speech_standardizer.mean.dtype == torch.float32


@pytest.mark.parametrize("dtype, cast", [(torch.bfloat16, lambda model: model.to(torch.bfloat16)),
                                         (torch.float16, lambda model: model.half())])
def test_a_cast_after_loading_keeps_the_input_statistics_in_float32(tmp_path, dtype, cast):
    """`model.to(torch.bfloat16)` / `.half()` after loading cast the statistics too (every bf16 logit far off, fp16
    NaN): cast, the model now answers as `from_pretrained(dtype=...)` loads it, saves the same keys and dtypes, and
    still moves to another device with its statistics."""
    model, inputs = standardized_far_from_zero()
    model.save_pretrained(tmp_path / "float32")
    loaded = MisterEForEmotionRecognition.from_pretrained(tmp_path / "float32", dtype=dtype).eval()
    cast(model)
    assert model.dtype == dtype and model.speech_standardizer.mean.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, loaded(**inputs).logits, rtol=0, atol=0)
    assert {key: value.dtype for key, value in model.state_dict().items()} == {
        key: value.dtype for key, value in loaded.state_dict().items()}
    model.to("meta")
    assert {buffer.device.type for buffer in model.speech_standardizer.buffers()} == {"meta"}
    assert model.float().text_standardizer.std.dtype == torch.float32  # and back, or finer: as any buffer
    assert model.double().text_standardizer.std.dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_load_of_a_functionals_encoder_standardizes_in_float32(tmp_path, dtype):
    """The same for the openSMILE functionals encoder of stage 1, which standardises raw functionals."""
    from mister_e import MisterEForUtteranceClassification

    torch.manual_seed(0)
    model = MisterEForUtteranceClassification.from_backbones(
        speech="opensmile:eGeMAPSv02", speech_embed_dim=8, id2label={0: "a", 1: "b", 2: "c"}).eval()
    features = far_from_zero(4, 88)
    model.speech_encoder.standardizer.fit(features)
    model.save_pretrained(tmp_path)
    half = MisterEForUtteranceClassification.from_pretrained(tmp_path, dtype=dtype).eval()
    batch = dict(attention_mask=torch.ones(1, 4, dtype=torch.long), input_features=features,
                 modality_mask=torch.tensor([[[True, False]] * 4]))
    with torch.no_grad():
        torch.testing.assert_close(half(**batch).speech_logits.float(), model(**batch).speech_logits,
                                   rtol=0.05, atol=0.05)
    assert half.speech_encoder.standardizer.std.dtype == torch.float32
