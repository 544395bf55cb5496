"""baresip (a real softphone) calls the in-process gateway; its recording of what it heard holds the reply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.wavio import read_wav, write_wav
from tests.integration.sip.helpers import (
    frame_rms,
    free_udp_port,
    require_binary,
    run_process,
    running_gateway,
    speech_8k,
)

BARESIP_MODULES = Path("/usr/lib/baresip/modules")


def baresip_config(folder: Path, caller_wav: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rec").mkdir(exist_ok=True)
    sip_port = free_udp_port()
    (folder / "config").write_text("\n".join([
        f"sip_listen 127.0.0.1:{sip_port}",
        "net_interface 127.0.0.1",
        f"audio_source aufile,{caller_wav}",
        "audio_player aubridge,dev0",
        f"module_path {BARESIP_MODULES}",
        "module g711.so", "module aufile.so", "module aubridge.so", "module sndfile.so",
        "module_app account.so", "module_app menu.so",
        f"snd_path {folder / 'rec'}",
        "rtp_ports 34000-34999",
        "",
    ]))
    (folder / "accounts").write_text("<sip:bot@127.0.0.1>;regint=0;audio_codecs=PCMU\n")
    return folder


async def test_baresip_call_records_agent_speech(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    baresip = require_binary("baresip")
    if not (BARESIP_MODULES / "sndfile.so").is_file():
        pytest.fail("baresip modules missing; install with: apt-get install -y baresip-core")
    speech = speech_8k("Good morning. I would like to book a table for two, please.")
    lead_s, speech_s = 0.5, speech.size / 8000
    pcm = np.concatenate([np.zeros(int(8000 * lead_s), np.int16), speech, np.zeros(8000 * 5, np.int16)])
    caller_wav = tmp_path / "caller-8k.wav"
    write_wav(caller_wav, pcm, 8000)
    config = baresip_config(tmp_path / "baresip", caller_wav)
    async with running_gateway(tiny_checkpoint_dir) as (gw, runtime, _):
        host, port = gw.local_address
        rc, out = await run_process([baresip, "-f", str(config), "-e", f"/dial sip:agent@{host}:{port}", "-t", "11"],
                                    timeout_s=30, cwd=tmp_path)
        summaries = list(runtime.calls.summaries)
    assert summaries, f"the call never reached the agent (baresip rc {rc}):\n{out[-3000:]}"
    recordings = sorted((config / "rec").glob("dump-*-dec.wav"))
    assert recordings, f"baresip wrote no decoded recording:\n{out[-2000:]}"
    heard, rate = read_wav(recordings[0])
    if heard.ndim > 1:
        heard = heard[:, 0]
    rms = frame_rms(heard.astype(np.int16), rate // 50)
    after_turn = int((lead_s + speech_s) * 50)
    voiced = np.flatnonzero(rms > 300)
    assert voiced.size >= 10, f"baresip heard no agent speech (max RMS {rms.max() if rms.size else 0:.0f})"
    assert voiced[0] >= after_turn - 10, f"agent speech at frame {voiced[0]}, before the caller's end ({after_turn})"
    assert summaries[-1].turns and summaries[-1].turns[0].first_audio_sent_ms is not None
