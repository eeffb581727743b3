"""Embedding extraction over MELD with the real all-MiniLM-L6-v2, against the bare encoder forward on the same batches.

    python bench/extraction_speed.py           # all 13,708 MELD utterances: bench/results/extraction_speed.json
    python bench/extraction_speed.py --quick   # ~500 utterances, one pass, harness check, nothing written

`extract_embeddings` (processor, forward, pooling + projection, safetensors shards, dataset columns) runs on the
official MELD CSVs; the "bare forward" is `AutoModel(**tokens)` alone on the same batches (same utterances, order,
batch size and padding), tokenised beforehand and untimed. The two alternate, twice each, and the faster pass of each
is kept: the machine is shared, so the ratio is the figure to read.
"""

from __future__ import annotations

import tempfile
import time

import torch
from datasets import concatenate_datasets
from transformers import AutoModel, AutoTokenizer, Wav2Vec2FeatureExtractor

from mister_e import MisterEForUtteranceClassification, MisterEProcessor
from mister_e.backbones import packaged_minilm
from mister_e.data import build_meld_csv
from mister_e.extraction import extract_embeddings

from timing import PASSES, best_of_alternating, publish, speed_arguments, speed_report

BATCH_SIZE = 64


def main() -> None:
    args = speed_arguments(__doc__.split("\n\n")[0])
    minilm = packaged_minilm()
    meld = build_meld_csv(args.data / "meld")
    dialogues = concatenate_datasets([meld[split] for split in ("train", "validation", "test")])
    if args.quick:
        dialogues = dialogues.select(range(50))
    texts = [text for row in dialogues["texts"] for text in row]

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    processor = MisterEProcessor(Wav2Vec2FeatureExtractor(), tokenizer)
    model = MisterEForUtteranceClassification.from_backbones(text=minilm, text_embed_dim=384).eval()
    bare = AutoModel.from_pretrained(minilm).eval()
    # The batches extraction makes: dataset order, BATCH_SIZE utterances, padded to the longest, truncated as there.
    batches = [tokenizer(texts[i : i + BATCH_SIZE], padding=True, truncation=True, max_length=processor.max_text_length,
                         return_tensors="pt", return_token_type_ids=False) for i in range(0, len(texts), BATCH_SIZE)]

    def extraction() -> float:
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            extract_embeddings(dialogues, model, processor, cache, batch_size=BATCH_SIZE, shard_size=512)
            return time.perf_counter() - start

    @torch.inference_mode()
    def forward() -> float:
        start = time.perf_counter()
        for batch in batches:
            bare(**batch)
        return time.perf_counter() - start

    timings, best = best_of_alternating(1 if args.quick else PASSES, extraction=extraction, bare_forward=forward)
    results = {"utterances": len(texts), "batch_size": BATCH_SIZE, "threads": torch.get_num_threads(),
               **speed_report(len(texts), "utterances", best, timings, reference="bare_forward")}
    publish(results, "extraction_speed", args.quick)


if __name__ == "__main__":
    main()
