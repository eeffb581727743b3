"""The data tests' miniature releases: the files they hold (WAV, CSV, an FFmpeg stand-in), and a built split's
labels and columns read back."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf


def write_wav(path: Path) -> None:
    """0.1 s of noise at 16 kHz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.random.default_rng(0).uniform(-0.1, 0.1, 1600).astype(np.float32), 16000)


def fake_ffmpeg(monkeypatch) -> list[list[str]]:
    """Stand in for FFmpeg (none is installed here): each call writes its WAV, and is recorded in the list returned."""
    commands = []

    def run(command, **kwargs):
        commands.append(command)
        write_wav(Path(command[-1]))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/ffmpeg")
    monkeypatch.setattr(subprocess, "run", run)
    return commands


def write_csv(path: Path, rows: list[list], header: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, quoting=csv.QUOTE_ALL)
        writer.writerows([header, *rows] if header else rows)


def labels_of(dataset, row=0) -> list[str]:
    names = dataset.features["labels"].feature.names
    return [names[label] for label in dataset[row]["labels"]]


def flat(dataset, column: str) -> list:
    return [value for values in dataset[column] for value in values]
