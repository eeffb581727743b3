"""A small, fully synthetic conversation corpus for `mister-e quickstart` and for tests.

It exists so that the package can train and predict end to end with no download. It is a smoke-test corpus, not a
benchmark: the numbers a model reaches on it say that the pipeline works, not how well MiSTER-E recognises emotion.

The generative story, per conversation:

1. Two speakers, each with a base pitch drawn from a female or a male range, a loudness offset and a voice
   brightness offset, and a recording gain shared by the whole conversation. Absolute pitch and loudness are
   therefore confounded by speaker and channel: a model has to judge an utterance relative to the same speaker's
   other turns, which is one reason why context helps.
2. Emotions (`neutral`, `happy`, `sad`, `angry`) follow a sticky Markov chain: each turn keeps the previous emotion
   with probability 0.7, so neighbouring turns are informative.
3. Each emotional turn is either clear in both modalities, *text-ambiguous* (a neutral sentence spoken with
   emotional prosody) or *audio-ambiguous* (an emotional sentence spoken with neutral prosody), with probability
   0.3 each, disjointly. Neither modality alone can reach the accuracy of both together.
4. Text comes from templates filled with small per-emotion lexicons; neutral turns and text-ambiguous turns use
   neutral filler sentences.
5. Speech is a harmonic voice source (a wavetable of harmonics with a spectral tilt) driven by a pitch contour, cut
   into syllables by an amplitude envelope, passed through per-syllable vowel formants, with aspiration noise and
   fricative bursts, and written as 16-bit PCM WAV files of 0.8-2.0 s. Emotion shapes the prosody with overlapping
   distributions: happy is high, lively and fast; sad is low, flat, slow, quiet and breathy; angry is loud, fast and
   harsh (flatter spectrum, more noise); neutral sits in the middle.

Everything is drawn from random generators seeded by `(seed, split, conversation)`, so two builds with the same
parameters produce the same texts, labels and WAV bytes.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
from datasets import DatasetDict, load_from_disk
from scipy.signal import sosfilt

from .building import make_dialogue_dataset
from .schema import (
    AUDIO,
    DIALOGUE_ID,
    LABELS,
    SPEAKERS,
    SPLITS,
    TEXTS,
    UTTERANCE_IDS,
)
from .storage import save_dialogues

__all__ = ["EMOTIONS", "build_demo_corpus", "demo_conversation"]

EMOTIONS = ["neutral", "happy", "sad", "angry"]

# Bump whenever the generator changes, so that cached corpora built by an older version are rebuilt.
_CORPUS_VERSION = 1
_PARAMS_FILE = "mister_e_demo.json"
_SPLIT_WEIGHTS = (5, 1, 1)
_MIN_TURNS, _MAX_TURNS = 4, 10
_MIN_DURATION, _MAX_DURATION = 0.8, 2.0

_INITIAL = np.array([0.4, 0.2, 0.2, 0.2])
_STAY = 0.7
_AMBIGUOUS_TEXT = 0.3
_AMBIGUOUS_AUDIO = 0.3

# Prosody per emotion, relative to the speaker: pitch factor, pitch range (semitones), syllable rate (per second),
# level (dBFS), spectral tilt (dB per octave) and aspiration noise (ratio to the voiced signal).
_PROSODY = {
    "neutral": {"pitch": 1.00, "range": 3.0, "rate": 4.0, "level": -22.0, "tilt": -12.0, "noise": 0.05},
    "happy": {"pitch": 1.30, "range": 8.0, "rate": 5.5, "level": -18.0, "tilt": -9.0, "noise": 0.04},
    "sad": {"pitch": 0.85, "range": 1.5, "rate": 2.7, "level": -30.0, "tilt": -17.0, "noise": 0.15},
    "angry": {"pitch": 1.15, "range": 5.0, "rate": 6.0, "level": -13.0, "tilt": -5.0, "noise": 0.25},
}

# (F1, F2, F3) in Hz of a few vowels, one drawn per syllable.
_VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (530, 1840, 2480), (570, 840, 2410), (300, 870, 2240)]

_NAMES = {
    "female": ["Alice", "Maya", "Sofia", "Grace", "Nora", "Lena"],
    "male": ["Ben", "Omar", "Hugo", "Theo", "Ravi", "Sam"],
}

_SLOTS = {
    "object": ["key", "laptop", "umbrella", "report", "car", "phone", "ticket", "jacket"],
    "place": ["office", "station", "market", "library", "kitchen", "garden", "hotel"],
    "time": ["yesterday", "this morning", "last week", "on Monday", "tonight", "today"],
    "hour": ["nine", "ten", "noon", "three", "five", "seven"],
    "friend": ["Anna", "Marc", "the neighbours", "your brother", "my aunt", "the team"],
    # Emotion lexicons.
    "joy": ["great", "wonderful", "amazing", "fantastic", "awesome", "lovely", "brilliant"],
    "glad": ["glad", "happy", "thrilled", "delighted", "excited", "overjoyed"],
    "love": ["love", "adore", "really enjoy"],
    "cheer": ["Wow", "Yay", "Hooray", "Oh nice"],
    "down": ["sad", "lonely", "down", "miserable", "heartbroken", "gloomy", "hopeless"],
    "miss": ["miss", "keep thinking about", "lost"],
    "sigh": ["Oh no", "Sigh", "I am sorry", "It hurts"],
    "mad": ["furious", "livid", "outraged", "fed up", "so annoyed", "sick of this"],
    "awful": ["ridiculous", "unacceptable", "outrageous", "absurd", "a disgrace"],
    "hate": ["hate", "despise", "cannot stand"],
    "yell": ["Enough", "Seriously", "Unbelievable", "Stop it"],
}

_TEMPLATES = {
    "neutral": [
        "I went to the {place} {time}.",
        "Can you pass me the {object}?",
        "The {object} is on the table.",
        "We should leave at {hour}.",
        "Did you call {friend} {time}?",
        "I think the {place} opens at {hour}.",
        "Let me check the {object} first.",
        "She said the bus comes at {hour}.",
        "Okay, I will bring the {object}.",
        "We talked about the {place} {time}.",
        "Where did you put the {object}?",
        "It is near the {place}.",
    ],
    "happy": [
        "{cheer}, the {place} was {joy}!",
        "I {love} the new {object}, it is {joy}!",
        "I am so {glad} you called {time}!",
        "That is {joy} news, I am {glad}!",
        "{cheer}, {friend} is coming at {hour}, how {joy}!",
    ],
    "sad": [
        "I {miss} {friend} so much.",
        "The {place} feels so {down} now.",
        "{sigh}, I feel {down} {time}.",
        "Nothing helps, I am just {down}.",
        "{sigh}, I {miss} my old {object}.",
    ],
    "angry": [
        "{yell}, this is {awful}!",
        "I {hate} this {object}, I am {mad}!",
        "Why is the {place} closed again? This is {awful}!",
        "{yell}, I am {mad} with {friend}!",
        "You lost the {object} again? I am {mad}!",
    ],
}


def build_demo_corpus(
    output_dir: str | os.PathLike,
    num_conversations: int = 84,
    seed: int = 0,
    sampling_rate: int = 16000,
) -> DatasetDict:
    """Builds (or reuses) the demo corpus under `output_dir` and returns it.

    Args:
        output_dir: Directory that receives `audio/` (the WAV files) and `dataset/` (the `save_to_disk` output).
        num_conversations: Total number of conversations, split 5:1:1 into train, validation and test
            (84 gives 60/12/12).
        seed: Seed of every random draw; the same parameters give byte-identical files.
        sampling_rate: Sampling rate of the WAV files.

    Returns:
        A `DatasetDict` with one row per conversation and the columns `dialogue_id`, `utterance_ids`, `texts`,
        `audio` (absolute WAV paths), `labels` (class labels over `EMOTIONS`) and `speakers`. A corpus that already
        exists with the same parameters is loaded instead of rebuilt.
    """
    if num_conversations < len(SPLITS):
        raise ValueError(f"`num_conversations` must be at least {len(SPLITS)}, got {num_conversations}.")
    output_dir = Path(output_dir).resolve()
    dataset_dir = output_dir / "dataset"
    params = {
        "version": _CORPUS_VERSION,
        "output_dir": str(output_dir),
        "num_conversations": num_conversations,
        "seed": seed,
        "sampling_rate": sampling_rate,
    }
    if _is_reusable(dataset_dir, params):
        return load_from_disk(str(dataset_dir))

    # Stale WAVs from other parameters would linger next to the new ones, so the audio folder starts empty.
    audio_dir = output_dir / "audio"
    shutil.rmtree(audio_dir, ignore_errors=True)
    rows = {split: [] for split in SPLITS}
    for split_index, (split, count) in enumerate(zip(SPLITS, _split_sizes(num_conversations))):
        for index in range(count):
            rng = np.random.default_rng([seed, split_index, index])
            plan = _plan_conversation(rng)
            rows[split].append(_render_conversation(rng, plan, f"demo-{split}-{index:03d}", audio_dir, sampling_rate))
    corpus = DatasetDict({split: make_dialogue_dataset(split_rows, EMOTIONS) for split, split_rows in rows.items()})
    (dataset_dir / _PARAMS_FILE).unlink(missing_ok=True)  # the replaced corpus's; the save keeps nothing else
    save_dialogues(corpus, dataset_dir, overwrite=True)
    # Written last, so that a build interrupted before it is rebuilt rather than reused.
    (dataset_dir / _PARAMS_FILE).write_text(json.dumps(params, indent=2))
    return load_from_disk(str(dataset_dir))


def demo_conversation(output_dir: str | os.PathLike, seed: int = 0, sampling_rate: int = 16000) -> dict:
    """Synthesises one unseen conversation, for the quickstart's printed example.

    The conversation comes from a random stream that no corpus split uses, and is redrawn until it shows at least
    three different emotions so that the example is worth printing. Its WAVs go to `output_dir/example/`, outside
    the corpus's `audio/` folder, which a rebuild empties.

    Returns:
        `{"utterances": [{"audio": path, "text": str}, ...], "labels": [emotion, ...], "speakers": [name, ...]}`,
        where `utterances` is the pipeline's input format and `labels` the true emotions.
    """
    attempt = 0
    while True:
        rng = np.random.default_rng([seed, len(SPLITS), attempt])
        plan = _plan_conversation(rng)
        if len(set(plan["labels"])) >= 3:
            break
        attempt += 1
    row = _render_conversation(rng, plan, "example", Path(output_dir).resolve(), sampling_rate)
    return {
        "utterances": [{"audio": audio, "text": text} for audio, text in zip(row[AUDIO], row[TEXTS])],
        "labels": [EMOTIONS[label] for label in row[LABELS]],
        "speakers": row[SPEAKERS],
    }


def _is_reusable(dataset_dir: Path, params: dict) -> bool:
    params_file = dataset_dir / _PARAMS_FILE
    if not params_file.is_file():
        return False
    try:
        if json.loads(params_file.read_text()) != params:
            return False
    except json.JSONDecodeError:
        return False
    # The WAVs live outside the dataset folder and may have been deleted on their own.
    first_audio = load_from_disk(str(dataset_dir))["train"][0][AUDIO][0]
    return Path(first_audio).is_file()


def _split_sizes(total: int) -> list[int]:
    sizes = [max(1, total * weight // sum(_SPLIT_WEIGHTS)) for weight in _SPLIT_WEIGHTS[1:]]
    return [total - sum(sizes), *sizes]


def _plan_conversation(rng: np.random.Generator) -> dict:
    """Draws speakers, turn order and the sticky emotion chain; no audio yet."""
    num_turns = int(rng.integers(_MIN_TURNS, _MAX_TURNS + 1))
    # Mostly mixed-sex pairs, whose pitch ranges barely overlap; same-sex pairs keep pitch from identifying a speaker.
    if rng.random() < 0.7:
        sexes = [str(sex) for sex in rng.permutation(["female", "male"])]
    else:
        sexes = [str(rng.choice(["female", "male"]))] * 2
    speakers = []
    for sex in sexes:
        base_pitch = rng.uniform(180, 240) if sex == "female" else rng.uniform(95, 135)
        candidates = [name for name in _NAMES[sex] if name not in {s["name"] for s in speakers}]
        speakers.append(
            {
                "name": str(rng.choice(candidates)),
                "pitch": base_pitch,
                "level": rng.normal(0.0, 2.5),
                "tilt": rng.normal(0.0, 1.5),
            }
        )
    turns, labels = [], []
    speaker = int(rng.integers(2))
    label = int(rng.choice(len(EMOTIONS), p=_INITIAL))
    for turn in range(num_turns):
        if turn > 0:
            speaker = 1 - speaker if rng.random() < 0.8 else speaker
            if rng.random() >= _STAY:
                others = [e for e in range(len(EMOTIONS)) if e != label]
                weights = _INITIAL[others] / _INITIAL[others].sum()
                label = int(rng.choice(others, p=weights))
        turns.append(speaker)
        labels.append(label)
    return {"speakers": speakers, "turns": turns, "labels": labels, "gain": rng.normal(0.0, 2.0)}


def _render_conversation(
    rng: np.random.Generator, plan: dict, dialogue_id: str, audio_dir: Path, sampling_rate: int
) -> dict:
    """Writes the WAVs and texts of a planned conversation and returns its corpus row."""
    conversation_dir = audio_dir / dialogue_id
    conversation_dir.mkdir(parents=True, exist_ok=True)
    row = {DIALOGUE_ID: dialogue_id, **{column: [] for column in (UTTERANCE_IDS, TEXTS, AUDIO, LABELS, SPEAKERS)}}
    for index, (speaker_index, label) in enumerate(zip(plan["turns"], plan["labels"])):
        emotion = EMOTIONS[label]
        text_emotion, audio_emotion = emotion, emotion
        if emotion != "neutral":
            draw = rng.random()
            if draw < _AMBIGUOUS_TEXT:
                text_emotion = "neutral"
            elif draw < _AMBIGUOUS_TEXT + _AMBIGUOUS_AUDIO:
                audio_emotion = "neutral"
        speaker = plan["speakers"][speaker_index]
        text = _sentence(rng, text_emotion)
        waveform = _speech(rng, speaker, audio_emotion, plan["gain"], len(text.split()), sampling_rate)
        utterance_id = f"{dialogue_id}-{index:02d}"
        path = conversation_dir / f"{utterance_id}.wav"
        sf.write(path, waveform, sampling_rate, subtype="PCM_16")
        row[UTTERANCE_IDS].append(utterance_id)
        row[TEXTS].append(text)
        row[AUDIO].append(str(path))
        row[LABELS].append(label)
        row[SPEAKERS].append(speaker["name"])
    return row


def _sentence(rng: np.random.Generator, emotion: str) -> str:
    template = str(rng.choice(_TEMPLATES[emotion]))
    fills = {slot: str(rng.choice(words)) for slot, words in _SLOTS.items() if "{" + slot + "}" in template}
    return template.format(**fills)


def _speech(
    rng: np.random.Generator, speaker: dict, emotion: str, gain: float, num_words: int, sampling_rate: int
) -> np.ndarray:
    """Synthesises one utterance: a harmonic voice with emotion-dependent prosody, syllables, vowels and noise."""
    prosody = _PROSODY[emotion]
    pitch = speaker["pitch"] * prosody["pitch"] * np.exp(rng.normal(0.0, 0.06))
    pitch_range = max(0.5, prosody["range"] + rng.normal(0.0, 1.0))
    rate = prosody["rate"] * np.exp(rng.normal(0.0, 0.12))
    level = prosody["level"] + speaker["level"] + gain + rng.normal(0.0, 2.5)
    tilt = min(-3.0, prosody["tilt"] + speaker["tilt"] + rng.normal(0.0, 2.0))
    noise = prosody["noise"] * np.exp(rng.normal(0.0, 0.3))

    duration = (0.5 + 0.11 * num_words) * np.sqrt(4.0 / rate) + rng.normal(0.0, 0.1)
    num_samples = int(np.clip(duration, _MIN_DURATION, _MAX_DURATION) * sampling_rate)
    lead, trail = (int(rng.uniform(0.04, 0.1) * sampling_rate) for _ in range(2))
    voiced = num_samples - lead - trail

    # Syllables: jittered slot lengths, each a raised-sine nucleus followed by a short gap.
    num_syllables = max(2, round(rate * voiced / sampling_rate))
    slots = rng.uniform(0.7, 1.3, num_syllables)
    edges = np.cumsum(slots)
    bounds = np.concatenate([[0], edges / edges[-1] * voiced]).astype(int)
    envelope = np.zeros(voiced)
    for start, end, stress in zip(bounds[:-1], bounds[1:], rng.uniform(0.55, 1.0, num_syllables)):
        nucleus = int((end - start) * rng.uniform(0.7, 0.9))
        envelope[start : start + nucleus] = stress * np.sin(np.linspace(0, np.pi, nucleus)) ** 0.7

    # Pitch contour in semitones: declination across the utterance, one accent per syllable, and fast jitter.
    t = np.arange(voiced) / voiced
    centres = (bounds[:-1] + bounds[1:]) / 2
    accents = rng.normal(0.0, pitch_range / 3, num_syllables)
    semitones = pitch_range / 2 * (1 - 2 * t) + np.interp(np.arange(voiced), centres, accents)
    running = np.cumsum(np.concatenate([[0.0], rng.normal(0.0, 0.3, voiced + 79)]))
    semitones += (running[80:] - running[:-80]) / 80 * (1 + 4 * noise)
    f0 = pitch * 2.0 ** (semitones / 12)

    # Harmonic source from a one-period wavetable; harmonics stop below Nyquist at the highest pitch.
    num_harmonics = int(min(60, 0.45 * sampling_rate / f0.max()))
    harmonics = np.arange(1, num_harmonics + 1)
    # Half the tilt in dB per octave of the harmonic index (and a light aspiration, below): steeper spectra read as
    # noise to a voice activity detector trained on real speech (Silero VAD missed most sad voices).
    amplitudes = 10.0 ** (0.5 * tilt * np.log2(harmonics) / 20)
    table_phase = np.linspace(0.0, 2 * np.pi, 2049)
    table = (amplitudes[:, None] * np.sin(harmonics[:, None] * table_phase[None, :])).sum(0)
    phase = np.cumsum(f0 / sampling_rate) % 1.0
    source = np.interp(phase * 2048, np.arange(2049), table)

    # Vowel formants, one vowel per syllable; the filter state carries across syllables.
    filtered = np.empty(voiced)
    state = np.zeros((3, 2))
    radii = np.exp(-np.pi * np.array([90.0, 110.0, 170.0]) / sampling_rate)
    for start, end in zip(bounds[:-1], bounds[1:]):
        formants = np.array(_VOWELS[rng.integers(len(_VOWELS))]) * rng.uniform(0.92, 1.08)
        a1, a2 = -2 * radii * np.cos(2 * np.pi * formants / sampling_rate), radii**2
        # Resonators with unit gain at 0 Hz, so that the vowel shapes the spectrum without changing the level.
        sections = np.stack([1 + a1 + a2, np.zeros(3), np.zeros(3), np.ones(3), a1, a2], axis=1)
        filtered[start:end], state = sosfilt(sections, source[start:end], zi=state)
    filtered /= np.sqrt(_mean_square(filtered)) + 1e-9

    # Aspiration noise rides on the voice; a fricative burst opens some syllables.
    hiss = np.diff(rng.normal(0.0, 1.0, voiced + 1))
    signal = envelope * (filtered + noise * 0.5 * hiss)
    for start in bounds[:-1][rng.random(num_syllables) < 0.4]:
        end = min(voiced, start + int(rng.uniform(0.02, 0.05) * sampling_rate))
        signal[start:end] += 0.25 * hiss[start:end] * np.hanning(end - start)

    active = np.sqrt(_mean_square(signal[envelope > 0.1]))
    signal *= 10.0 ** (level / 20) / active
    peak = np.abs(signal).max()
    if peak > 0.95:
        signal *= 0.95 / peak
    waveform = np.concatenate([np.zeros(lead), signal, np.zeros(trail)])
    waveform += rng.normal(0.0, 10.0 ** (-60 / 20), num_samples)
    return waveform.astype(np.float32)


def _mean_square(x: np.ndarray) -> float:
    """Mean square, summed strictly in order.

    `np.mean` and `np.dot` let SIMD and BLAS kernels reorder the additions depending on memory alignment; the last
    bit then differs between runs, sometimes enough to flip a 16-bit sample and break byte-identical rebuilds.
    """
    return float(np.cumsum(x * x)[-1] / len(x))
