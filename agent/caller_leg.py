"""The caller's end of a simulated call, over any transport.

The simulator (`agent.simulator`) drives a scripted caller through a `CallerLeg`: it sends 20 ms
packets of caller audio at 16 kHz, collects the agent's audio as the caller hears it (16 kHz),
sends DTMF and hangs up. `InprocLeg` connects straight to a CallSession in this process; the
WebRTC leg (an aiortc client peer) and the SIP leg (a SIP UAC with RTP) call a running server.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]

LEG_RATE = 16000
LEG_PACKET_SAMPLES = 320  # 20 ms at 16 kHz


class CallerLeg(Protocol):
    async def connect(self) -> None:
        """Place the call; returns when it is answered (raises on failure)."""
        ...

    def send_audio(self, samples: Int16Array) -> None:
        """One 20 ms packet of caller audio (320 samples at 16 kHz)."""
        ...

    def receive_audio(self) -> list[Int16Array]:
        """Agent audio that reached the caller since the last call (16 kHz packets, in order)."""
        ...

    def send_dtmf(self, digit: str, duration_ms: int) -> None:
        ...

    async def hang_up(self) -> None:
        ...

    @property
    def remote_hung_up(self) -> bool:
        """The agent ended the call."""
        ...

    @property
    def description(self) -> str:
        """e.g. 'inproc', 'webrtc http://127.0.0.1:8080', 'sip sip:agent@127.0.0.1:5080 (PCMU)'."""
        ...
