#!/usr/bin/env bash
# A scratch virtual environment with the OFFICIAL LFM2-Audio implementation, for making reference
# fixtures (tools/official/make_reference.py) and the full-size comparison (tools/official/fullsize_check.py).
# Never a runtime dependency of lfm-call.
#
#   bash tools/official/setup_env.sh [VENV_DIR]     (default: .official-venv, ignored by git)
#
# What it installs: torch 2.13.0 (CPU), transformers 4.57.x, accelerate, einops, safetensors,
# sentencepiece, librosa, and the liquid-audio 1.3.0 wheel without its dependencies. The wheel
# declares Python >= 3.12; on 3.11 its few PEP 695 lines (`type X = ...`, `def f[T](...)`) are
# rewritten to plain 3.11 syntax (no behaviour change). torchaudio is replaced by a stand-in whose
# `functional.resample` only accepts equal rates (fixtures are made at 16 kHz already, where the real
# function returns its input unchanged): torchaudio wheels for torch 2.13 are not on this index.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.official-venv}"
PYTHON="${PYTHON:-python3}"
LIQUID_AUDIO_VERSION="${LIQUID_AUDIO_VERSION:-1.3.0}"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==2.13.0" "transformers>=4.57,<4.58" accelerate einops safetensors \
  sentencepiece librosa numpy
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$VENV/bin/pip" download -q --no-deps --python-version 3.12 --only-binary=:all: \
  "liquid-audio==$LIQUID_AUDIO_VERSION" -d "$tmp"
"$VENV/bin/python" - "$tmp"/liquid_audio-*.whl "$site" <<'PY'
import re, sys, zipfile
from pathlib import Path

wheel, site = Path(sys.argv[1]), Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    z.extractall(site)
rewrites = 0
for path in (site / "liquid_audio").rglob("*.py"):
    text = path.read_text(encoding="utf-8")
    new = re.sub(r"^type (\w+) = (.+)$", r"\1 = \2", text, flags=re.M)           # type alias

    def generic_def(m: re.Match) -> str:  # def f[T: bound](...) -> T = TypeVar("T") before a plain def
        names = [part.split(":")[0].strip() for part in re.split(r",(?![^()]*\))", m.group(2))]
        typevars = "".join(f'{n} = __import__("typing").TypeVar("{n}")\n' for n in names)
        return f"{typevars}{m.group(1)}("

    new = re.sub(r"^(def \w+)\[(.*?)\]\(", generic_def, new, flags=re.M)
    if new != text:
        rewrites += len(re.findall(r"^type \w+ = |^def \w+\[", text, flags=re.M))
        path.write_text(new, encoding="utf-8")
stub = site / "torchaudio"
stub.mkdir(exist_ok=True)
(stub / "__init__.py").write_text("from . import functional\n")
(stub / "functional.py").write_text(
    "def resample(waveform, orig_freq, new_freq, **kwargs):\n"
    "    if int(orig_freq) != int(new_freq):\n"
    "        raise NotImplementedError('torchaudio stand-in: make fixtures at 16 kHz')\n"
    "    return waveform\n")
print(f"liquid-audio {wheel.name}: {rewrites} PEP 695 lines rewritten for Python 3.11; torchaudio stand-in")
PY
"$VENV/bin/python" -c "import liquid_audio, transformers, torch; print('official env ready:', 'transformers', transformers.__version__, 'torch', torch.__version__)"
