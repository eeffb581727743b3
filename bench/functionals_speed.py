"""openSMILE functionals through `mister-e extract` against calling `opensmile` directly on the same files (EmoDB).

    python bench/functionals_speed.py           # all 339 EmoDB files, both feature sets: bench/results/functionals_speed.json
    python bench/functionals_speed.py --quick   # 20 files, one pass, harness check, nothing written

"Direct" is `opensmile.Smile(feature_set, Functionals).process_file(path)` per file, at the file's own rate (22.05 kHz
here). "Extract" is `extract_embeddings` with a functionals speech encoder, the code `mister-e extract` runs: the
processor reads the file with soundfile, resamples it to 16 kHz with soxr, computes the functionals, the encoder
standardises and projects them, and the shards and dataset columns are written. The per-process memo of functionals
is emptied before every pass, so each pass computes every file. The two alternate, twice each; the faster pass of
each is kept (the machine is shared, so the ratio is the figure to read).
"""

from __future__ import annotations

import tempfile
import time

import opensmile
import torch
from datasets import concatenate_datasets
from transformers import BertTokenizerFast

from mister_e import MisterEForUtteranceClassification, MisterEFunctionalsFeatureExtractor, MisterEProcessor
from mister_e import feature_extraction_mister_e
from mister_e.data import build_emodb
from mister_e.extraction import extract_embeddings

from timing import PASSES, best_of_alternating, publish, speed_arguments, speed_report

FEATURE_SETS = ("eGeMAPSv02", "ComParE_2016")


def main() -> None:
    args = speed_arguments(__doc__.split("\n\n")[0])
    emodb = build_emodb(args.data / "emodb", conversation_size=10)
    dialogues = concatenate_datasets([emodb[split] for split in ("train", "validation", "test")])
    if args.quick:
        dialogues = dialogues.select(range(2))
    paths = [path for row in dialogues["audio"] for path in row]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]"])})

    results = {"files": len(paths), "threads": torch.get_num_threads()}
    for feature_set in FEATURE_SETS:
        smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                                feature_level=opensmile.FeatureLevel.Functionals)
        processor = MisterEProcessor(MisterEFunctionalsFeatureExtractor(feature_set), tokenizer)
        model = MisterEForUtteranceClassification.from_backbones(speech=f"opensmile:{feature_set}").eval()

        def direct() -> float:
            start = time.perf_counter()
            for path in paths:
                smile.process_file(path)
            return time.perf_counter() - start

        def extraction() -> float:
            feature_extraction_mister_e._cache.clear()
            with tempfile.TemporaryDirectory() as cache:
                start = time.perf_counter()
                extract_embeddings(dialogues, model, processor, cache, batch_size=16, shard_size=512)
                return time.perf_counter() - start

        direct()  # warm-up: the first call loads openSMILE's configuration
        timings, best = best_of_alternating(1 if args.quick else PASSES, extraction=extraction, direct=direct)
        results[feature_set] = speed_report(len(paths), "files", best, timings, reference="direct")
    publish(results, "functionals_speed", args.quick)


if __name__ == "__main__":
    main()
