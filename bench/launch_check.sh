#!/usr/bin/env bash
# The three CLI stages end to end under `accelerate launch` with examples/accelerate/single_gpu_bf16.yaml, on one GPU:
# stage 1 (bf16 backbone, gradient checkpointing, fp32 LoRA and heads), extraction, stage 2 (fp32). Data: the demo
# corpus's transcripts; backbone: a small random BERT built here (no download). Prints each stage's scores.
#
#   bench/launch_check.sh OUTPUT_DIR                 # on a GPU machine
#   LAUNCH="python" bench/launch_check.sh OUTPUT_DIR # the same stages without accelerate (e.g. on a CPU)
set -euo pipefail
out=$(realpath -m "${1:?usage: bench/launch_check.sh OUTPUT_DIR}")
config=$(dirname "$0")/../examples/accelerate/single_gpu_bf16.yaml
launch=${LAUNCH:-accelerate launch --config_file $config}
export HF_HUB_OFFLINE=1
python - "$out" <<'PY'
import sys
from pathlib import Path

from transformers import BertConfig, BertModel, BertTokenizerFast

from mister_e.demo import build_demo_corpus

out = Path(sys.argv[1])
corpus = build_demo_corpus(out / "corpus")
words = sorted({w for split in corpus.values() for texts in split["texts"] for t in texts if t for w in t.lower().split()})
tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])})
BertModel(BertConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                     vocab_size=len(tokenizer))).save_pretrained(out / "backbone")
tokenizer.save_pretrained(out / "backbone")
PY
$launch -m mister_e.cli train-encoder --dataset "$out/corpus/dataset" --modality text --backbone "$out/backbone" \
    --output-dir "$out/text" --dtype bfloat16 --gradient-checkpointing --lora-targets query value \
    --set num_train_epochs=4 learning_rate=1e-3 per_device_train_batch_size=16 text_embed_dim=64
$launch -m mister_e.cli extract --dataset "$out/corpus/dataset" --model "$out/text/merged" --output-dir "$out/embedded"
# Stage 2 in fp32: under bf16 autocast its GRUs leave cuDNN's fast path (BENCHMARKS.md).
${LAUNCH:-accelerate launch --config_file $config --mixed_precision no} -m mister_e.cli train --recipe iemocap \
    --dataset "$out/embedded" --output-dir "$out/stage2" --seeds 0 --set modalities=[text] experts=[text] \
    num_train_epochs=20 learning_rate=1e-3 context_dim=64 cross_modal_dim=64 fusion_hidden_size=64 gru_layers=1
