"""The simple model every accuracy table is measured against: a plain one-layer BiGRU over a conversation's utterance
embeddings, trained in the same run on the same embeddings as MiSTER-E.

Inputs are the utterance's embedding columns concatenated (speech then text), standardised with the training split's
statistics, with dropout; one bidirectional GRU layer (or a causal one-directional GRU when asked) and a linear head;
cross-entropy, Adam lr 1e-3, one conversation batch of `BATCH_SIZE`, the epoch with the best validation weighted F1
kept (early stopping after `PATIENCE` epochs without a better one). Nothing here is tuned on test.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from datasets import DatasetDict
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from torch import nn

EMBED_COLUMNS = ("speech_embeds", "text_embeds")
HIDDEN_SIZE = 128
DROPOUT = 0.3
LEARNING_RATE = 1e-3
BATCH_SIZE = 8
MAX_EPOCHS = 60
PATIENCE = 10


class BiGRUClassifier(nn.Module):
    def __init__(self, input_size: int, num_labels: int, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.dropout = nn.Dropout(DROPOUT)
        self.gru = nn.GRU(input_size, HIDDEN_SIZE, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * HIDDEN_SIZE, num_labels)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        inputs = self.dropout((inputs - self.mean) / self.std)
        packed = nn.utils.rnn.pack_padded_sequence(inputs, lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True,
                                                     total_length=inputs.shape[1])
        return self.head(self.dropout(hidden))


def conversations(split, columns) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(utterances x features, labels) per conversation, the columns concatenated per utterance."""
    rows = []
    for row in split:
        features = np.concatenate([np.asarray(row[column], dtype=np.float32) for column in columns], axis=-1)
        rows.append((torch.from_numpy(features), torch.as_tensor(row["labels"])))
    return rows


def batches(rows, generator: np.random.Generator | None):
    order = generator.permutation(len(rows)) if generator is not None else np.arange(len(rows))
    for start in range(0, len(rows), BATCH_SIZE):
        chunk = [rows[i] for i in order[start:start + BATCH_SIZE]]
        inputs = nn.utils.rnn.pad_sequence([features for features, _ in chunk], batch_first=True)
        labels = nn.utils.rnn.pad_sequence([labels for _, labels in chunk], batch_first=True, padding_value=-100)
        yield inputs, torch.tensor([len(labels) for _, labels in chunk]), labels


@torch.no_grad()
def scores(model: BiGRUClassifier, rows) -> dict:
    model.eval()
    predicted, references = [], []
    for inputs, lengths, labels in batches(rows, None):
        mask = labels != -100
        predicted.append(model(inputs, lengths).argmax(-1)[mask])
        references.append(labels[mask])
    predicted, references = torch.cat(predicted).numpy(), torch.cat(references).numpy()
    return {"weighted_f1": float(f1_score(references, predicted, average="weighted")),
            "accuracy": float(accuracy_score(references, predicted)),
            "confusion_matrix": confusion_matrix(references, predicted, labels=range(model.head.out_features)).tolist()}


def train_bigru(dataset: DatasetDict, seed: int, max_epochs: int = MAX_EPOCHS) -> dict:
    """Train on `train`, keep the best validation epoch, score `validation` and `test` (the `train_conversation_model`
    results layout, so `summarize_seeds` reads both)."""
    torch.manual_seed(seed)
    generator = np.random.default_rng(seed)
    columns = [column for column in EMBED_COLUMNS if column in dataset["train"].column_names]
    splits = {name: conversations(part, columns) for name, part in dataset.items()}
    train = torch.cat([features for features, _ in splits["train"]])
    num_labels = dataset["train"].features["labels"].feature.num_classes
    model = BiGRUClassifier(train.shape[1], num_labels, train.mean(0), train.std(0) + 1e-6)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    best, best_state, since_best = -1.0, None, 0
    for _ in range(max_epochs):
        model.train()
        for inputs, lengths, labels in batches(splits["train"], generator):
            loss = nn.functional.cross_entropy(model(inputs, lengths).flatten(0, 1), labels.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        validation = scores(model, splits["validation"])["weighted_f1"]
        if validation > best:
            best, best_state, since_best = validation, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
            if since_best >= PATIENCE:
                break
    model.load_state_dict(best_state)
    return {"seed": seed, **{name: scores(model, rows) for name, rows in splits.items() if name != "train"}}


def run_bigru(dataset: DatasetDict, output_dir: Path, seed: int, quick: bool = False) -> dict:
    """`train_bigru` once into `output_dir/results.json` (a rerun reads it back); one epoch for a harness check."""
    path = Path(output_dir) / "results.json"
    if not path.is_file():
        result = train_bigru(dataset, seed, max_epochs=1 if quick else MAX_EPOCHS)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    return json.loads(path.read_text())
