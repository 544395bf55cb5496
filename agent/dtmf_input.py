"""The keys a caller presses, gathered into one input (pure: no clock, no I/O).

"#" ends the input at once (and is part of it); otherwise it ends when no key has come for
``end_of_input_ms`` (``turn.dtmf_end_of_input_ms``). The session hands each finished input to the
model as text.
"""

from __future__ import annotations


class DtmfInput:
    def __init__(self, end_of_input_ms: int) -> None:
        if end_of_input_ms <= 0:
            raise ValueError(f"the DTMF end of input must be positive, not {end_of_input_ms} ms")
        self.end_of_input_ms = end_of_input_ms
        self.digits = ""
        self.last_ms = 0  # when the newest key came

    def key(self, digit: str, now_ms: int) -> str | None:
        """A key pressed: the finished input if it was "#", else None."""
        self.digits += digit
        self.last_ms = now_ms
        return self._take() if digit == "#" else None

    def due(self, now_ms: int) -> str | None:
        """The finished input once the keys have paused long enough, else None."""
        if self.digits and now_ms - self.last_ms >= self.end_of_input_ms:
            return self._take()
        return None

    def _take(self) -> str:
        digits, self.digits = self.digits, ""
        return digits
