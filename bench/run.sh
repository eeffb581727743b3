#!/usr/bin/env bash
# Every CPU benchmark of BENCHMARKS.md. `bench/run.sh` refreshes bench/results/ (hours on 2 cores: the accuracy runs);
# `bench/run.sh --quick` only checks that the harnesses still run (a few minutes) and writes nothing.
# Needs ../shared/data (MELD CSVs, CMU-MOSI release, EmoDB) beside the project, or pass nothing and set DATA=<folder>.
# AUTHORS=<path to the authors' hierarchical_moe.py> adds the side-by-side stage-2 speed figures.
set -euo pipefail
cd "$(dirname "$0")"
export HF_HUB_OFFLINE=1
data=(--data "${DATA:-../../shared/data}")
python stage2_speed.py "${data[@]}" ${AUTHORS:+--authors "$AUTHORS"} "$@"
python streaming_latency.py "$@"
python pipeline_latency.py "$@"
python recording.py "$@"
python quickstart_time.py "$@"
python extraction_speed.py "${data[@]}" "$@"
python functionals_speed.py "${data[@]}" "$@"
python accuracy.py "${data[@]}" "$@"
python meld_sentiment.py "${data[@]}" "$@"
