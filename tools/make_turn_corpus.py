"""Make the labelled end-of-turn corpus: WAV calls of one espeak-ng caller each, plus labels.csv.

    python tools/make_turn_corpus.py OUT_DIR [--calls 40] [--seed 14]

Each call is one caller (an espeak-ng voice and variant, a rate, a pause habit, sometimes pink
noise) taking three turns with 3.5 s of silence between them. A turn is spoken as ONE espeak-ng
utterance with SSML breaks where the caller pauses, so the words before a pause keep their real
mid-sentence intonation (the audio is cut by the pause, not synthesised as a fragment). Turn kinds:

- complete: a statement or a question, no pause;
- broken: a sentence with one pause at a word boundary, then finished;
- digits: a phone, account or card number read in groups, pauses between the groups;
- address: street, town and postcode with pauses;
- filler: a sentence with "um", "uh" or "er" before a pause;
- short: a one- or two-word answer.

Pauses inside turns are 0.3-1.6 s. ``labels.csv`` has one row per turn end (the end of the turn's
last speech): ``file,turn_end_s,kind,voice,rate_wpm,pauses_s,noise_snr_db,text``; ``lfm-call
turn-eval`` needs only the first two columns. The same seed and espeak-ng version give the same files.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.caller_voice import _espeak_version, espeak_binary, render_ssml
from agent.wavio import write_wav

RATE = 16000
GAP_S = 3.5
LEAD_S = 0.5
VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-rp", "en-gb-x-gbcwmd",
          "en-us+f2", "en-gb+f3", "en-us+f4", "en-gb-scotland+m3"]

STATEMENTS = [
    "I would like to book a table for two tomorrow evening.",
    "My internet connection has been dropping all morning.",
    "I need to change the delivery address on my order.",
    "The package arrived yesterday but the box was damaged.",
    "I want to cancel my subscription at the end of the month.",
    "We are planning to travel to Lisbon in the spring.",
    "My card was charged twice for the same purchase.",
    "I have been waiting for a refund for three weeks now.",
    "The heating in our flat stopped working last night.",
    "I would like to speak to someone about my contract.",
]
QUESTIONS = [
    "Could you tell me when the store opens on Sunday?",
    "Is it possible to move my appointment to Friday?",
    "How long does the delivery usually take?",
    "Do you have any rooms available next weekend?",
    "What documents do I need to bring with me?",
]
# (before the pause, after it): one sentence, broken at a word boundary
BROKEN = [
    ("I would like to change my address to", "twelve Main Street in Springfield."),
    ("The thing is that the last invoice", "was sent to the wrong department."),
    ("Can you check whether my order", "has already left the warehouse?"),
    ("I called last week because the printer", "kept jamming every few pages."),
    ("We were hoping to get a quote for", "painting the whole house."),
    ("My daughter is starting school in", "September and needs a new laptop."),
    ("I am not sure whether I should", "upgrade now or wait until next year."),
    ("The problem started when I tried to", "log in from my new phone."),
]
FILLERS = [
    ("I would like to order, um,", "two large pizzas please."),
    ("My account number is, uh,", "let me find it for you."),
    ("The appointment was on, er,", "Tuesday afternoon I think."),
    ("I was wondering if, um,", "you could help me with my bill."),
    ("We need a room for, uh,", "three nights starting Friday."),
]
SHORT = ["Yes.", "No, thanks.", "That's right.", "Sure.", "Okay, thank you.", "Not really.", "Exactly."]
STREETS = ["Main Street", "Oak Avenue", "Station Road", "Church Lane", "Park Drive", "Mill Road"]
TOWNS = ["Springfield", "Riverside", "Oxford", "Bristol", "Fairview", "Kingston"]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits(rng: random.Random, n: int) -> str:
    return " ".join(DIGIT_WORDS[rng.randrange(10)] for _ in range(n))


def make_turn(kind: str, rng: random.Random, pause: tuple[float, float]) -> tuple[list[str], list[float]]:
    """The turn's parts (spoken in one utterance, a pause between consecutive parts) and the pauses."""
    if kind == "complete":
        parts = [rng.choice(STATEMENTS if rng.random() < 0.7 else QUESTIONS)]
    elif kind == "short":
        parts = [rng.choice(SHORT)]
    elif kind == "broken":
        parts = list(rng.choice(BROKEN))
    elif kind == "filler":
        parts = list(rng.choice(FILLERS))
    elif kind == "digits":
        groups = rng.choice([(3, 3, 4), (4, 4, 4, 4), (2, 4, 4), (3, 4)])
        lead = rng.choice(["My number is", "The account number is", "It's", "The card number is"])
        parts = [f"{lead} {digits(rng, groups[0])}"] + [digits(rng, g) for g in groups[1:]]
        parts[-1] += "."
    elif kind == "address":
        parts = [f"It's {rng.randint(2, 99)} {rng.choice(STREETS)}", rng.choice(TOWNS),
                 f"postcode {digits(rng, 2)} {digits(rng, 3)}."]
    else:
        raise ValueError(kind)
    pauses = [round(rng.uniform(*pause), 2) for _ in parts[1:]]
    return parts, pauses


def render_turn(parts: list[str], pauses: list[float], voice: str, rate_wpm: int) -> np.ndarray:
    ssml = parts[0]
    for text, p in zip(parts[1:], pauses, strict=True):
        ssml += f' <break time="{int(p * 1000)}ms"/> {text}'
    return render_ssml(ssml, voice, rate_wpm, RATE).astype(np.float64)


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spec / np.sqrt(f), n)
    return np.asarray(noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--seed", type=int, default=14)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    nrng = np.random.default_rng(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    kinds = ["complete", "complete", "broken", "digits", "address", "filler", "short"]
    rows = []
    for c in range(args.calls):
        voice = VOICES[c % len(VOICES)]
        rate_wpm = rng.randint(130, 220)
        pause = (0.3, 0.9) if rng.random() < 0.5 else (0.7, 1.6)
        snr = round(rng.uniform(12, 25), 1) if rng.random() < 1 / 3 else None
        pieces = [np.zeros(int(LEAD_S * RATE))]
        t = LEAD_S
        name = f"call_{c:03d}.wav"
        for _ in range(3):
            kind = rng.choice(kinds)
            parts, pauses = make_turn(kind, rng, pause)
            audio = render_turn(parts, pauses, voice, rate_wpm)
            pieces.append(audio)
            t += audio.size / RATE
            rows.append({"file": name, "turn_end_s": f"{t:.3f}", "kind": kind, "voice": voice, "rate_wpm": rate_wpm,
                         "pauses_s": " ".join(f"{p:.2f}" for p in pauses),
                         "noise_snr_db": "" if snr is None else snr, "text": " | ".join(parts)})
            gap = np.zeros(int(GAP_S * RATE))
            pieces.append(gap)
            t += GAP_S
        x = np.concatenate(pieces)
        if snr is not None:
            level = 10 ** (-26 / 20) * 32768
            x = x + pink_noise(nrng, x.size) * level * 10 ** (-snr / 20)
        write_wav(args.out_dir / name, np.clip(x, -32768, 32767).astype(np.int16), RATE)
        print(f"{name}: {voice} {rate_wpm} wpm", file=sys.stderr)
    with open(args.out_dir / "labels.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (args.out_dir / "corpus.json").write_text(json.dumps(
        {"seed": args.seed, "calls": args.calls, "espeak_ng": _espeak_version(espeak_binary())}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
