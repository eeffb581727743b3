"""The training tests' tiny corpus (a learnable task) and its text processor, as fixtures and helpers.

conftest.py loads this module as a plugin: its `data`, `tokenizer` and `processor` fixtures reach every test module.
The training, scale and distributed tests import its helpers by name."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import DatasetDict
from transformers import BertTokenizerFast, Wav2Vec2FeatureExtractor

from mister_e.data import make_dialogue_dataset
from mister_e.processing_mister_e import MisterEProcessor

from tiny import tiny_sizes

LABELS = ["calm", "happy", "sad", "angry"]
SPEECH_DIM, TEXT_DIM = 10, 6
SIZES = tiny_sizes(layers=2, attention_dim=6)
# Fast settings: the paper's lr 1e-5 over 100 epochs would take too long here.
FAST = dict(learning_rate=3e-3, num_train_epochs=2, disable_tqdm=True, use_cpu=True)
WORDS = ["hello", "world", "yes", "no", "oh", "okay", "really", "fine"]


def conversations(count: int, seed: int, prefix: str, lengths=(3, 8), missing: bool = False) -> list[dict]:
    """Conversations whose label is the argmax of a fixed projection of the text embedding plus half the previous
    utterance's score (context). Speech embeddings are noise; with `missing`, the first utterance lacks speech and
    the last lacks text."""
    projection = np.random.default_rng(123).standard_normal((len(LABELS), TEXT_DIM))
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        size = int(rng.integers(*lengths))
        text = rng.standard_normal((size, TEXT_DIM)).astype(np.float32)
        scores = text @ projection.T
        scores[1:] += 0.5 * scores[:-1]
        rows.append(dict(
            dialogue_id=f"{prefix}{index}", labels=scores.argmax(1).tolist(),
            speakers=[("A", "B")[i % 2] for i in range(size)],
            texts=[" ".join(rng.choice(WORDS, 3)) for _ in range(size)],
            text_embeds=list(text), speech_embeds=list(rng.standard_normal((size, SPEECH_DIM)).astype(np.float32)),
        ))  # fmt: skip
        if missing:
            rows[-1]["speech_embeds"][0] = rows[-1]["text_embeds"][-1] = None
    return rows


def dialogues(count: int, seed: int, prefix: str, lengths=(3, 8)):
    return make_dialogue_dataset(conversations(count, seed, prefix, lengths), LABELS)


def corpus(train=32, validation=12, test=12, **kwargs) -> DatasetDict:
    return DatasetDict(
        train=dialogues(train, 0, "train", **kwargs),
        validation=dialogues(validation, 1, "validation", **kwargs),
        test=dialogues(test, 2, "test", **kwargs),
    )


@pytest.fixture(scope="module")
def data() -> DatasetDict:
    return corpus()


@pytest.fixture(scope="module")
def tokenizer():
    # a vocabulary dict: transformers 5 ignores `vocab_file=` here, leaving only the special tokens (every word [UNK])
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={token: index for index, token in enumerate(tokens)})


@pytest.fixture(scope="module")
def processor(tokenizer):
    return MisterEProcessor(Wav2Vec2FeatureExtractor(return_attention_mask=True), tokenizer)
