"""Static per-call backbone state: every call's K/V and conv state live in slots of fixed-shape tensors.

``BackbonePool(config, slots, context)`` holds, per attention layer, K and V of shape
``[slots, Hkv, context, head_dim]``; per conv layer the last ``conv_L_cache - 1`` conv inputs
``[slots, hidden, L - 1]``; and every slot's length in ``positions`` ``[slots]`` on the device.
Nothing is re-allocated while calls come and go: a call takes a slot (lowest free first, so the
active slots stay packed at the front and one batched step covers rows ``0 .. B-1``), and its
``SlotState`` is the familiar ``BackboneState`` interface over views of that slot's rows, so a
call's prefill, save/truncate and compaction run exactly as with a private state (the backbone
writes K/V into the views in place).

Positions exist twice: the host keeps each slot's length (``SlotState.position``) for the
conversation's bookkeeping, and ``positions`` on the device is what the batched step reads and
advances, so a step needs no host-to-device transfer of lengths. A slot's rows past its length are
stale and always masked.
"""

from __future__ import annotations

import torch

from model.config import LfmConfig
from model.errors import GenerationError
from model.slots import SlotPool


class SlotState:
    """One slot of a ``BackbonePool``, with the ``BackboneState`` interface (batch 1)."""

    batch_size = 1

    def __init__(self, pool: BackbonePool, slot: int) -> None:
        self.pool = pool
        self.slot = slot
        s = slice(slot, slot + 1)
        # views made with grad mode on (nothing here requires grad): they may then be written in place
        # under no_grad (the engine's worker) as well as outside it
        with torch.enable_grad():
            self.keys: list[torch.Tensor | None] = [None if k is None else k[s] for k in pool.keys]
            self.values: list[torch.Tensor | None] = [None if v is None else v[s] for v in pool.values]
            self.conv: list[torch.Tensor | None] = [None if c is None else c[s] for c in pool.conv]
        self._position = 0
        self._saved: dict[int, list[torch.Tensor | None]] = {}
        self.reset()

    @property
    def position(self) -> int:
        return self._position

    @position.setter
    def position(self, value: int) -> None:
        self._position = value
        self.pool.positions[self.slot] = value

    def advanced(self, steps: int = 1) -> None:
        """The batched step moved this slot on the device; follow on the host (no transfer)."""
        self._position += steps

    @property
    def kv_capacity(self) -> int:
        return self.pool.context

    def reserve(self, total: int) -> None:
        if total > self.pool.context:
            raise GenerationError(f"slot context is {self.pool.context} positions; {total} asked for")

    def reset(self) -> None:
        """An empty conversation in this slot."""
        for c in self.conv:
            if c is not None:
                c.zero_()
        self.position = 0
        self._saved = {0: self._snapshot()}

    def _snapshot(self) -> list[torch.Tensor | None]:
        return [None if c is None else c.clone() for c in self.conv]

    def save(self) -> int:
        self._saved[self.position] = self._snapshot()
        return self.position

    @property
    def saved_positions(self) -> list[int]:
        return sorted(self._saved)

    def truncate(self, position: int) -> None:
        if position == self.position:
            return
        if position > self.position or position not in self._saved:
            raise GenerationError(
                f"cannot truncate backbone state to position {position}: current {self.position}, "
                f"saved {self.saved_positions}"
            )
        for current, saved in zip(self.conv, self._saved[position], strict=True):
            if current is not None and saved is not None:
                current.copy_(saved)
        self.position = position
        self._saved = {p: s for p, s in self._saved.items() if p <= position}

    def forget_saves_before(self, position: int) -> None:
        self._saved = {p: s for p, s in self._saved.items() if p >= position}


class BackbonePool(SlotPool):
    """Fixed-shape K/V, conv state and positions for ``slots`` calls of at most ``context`` positions."""

    def __init__(self, config: LfmConfig, slots: int, context: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        super().__init__()
        if slots < 1 or context < 2:
            raise ValueError(f"a backbone pool needs slots >= 1 and context >= 2, got {slots}, {context}")
        self.config = config
        self.context = context
        device = torch.device(device)
        hd, kvh, d = config.head_dim, config.num_key_value_heads, config.hidden_size
        width = config.conv_L_cache - 1
        attn = [t == "full_attention" for t in config.layer_types]
        self.keys = [torch.zeros(slots, kvh, context, hd, device=device, dtype=dtype) if a else None for a in attn]
        self.values = [torch.zeros(slots, kvh, context, hd, device=device, dtype=dtype) if a else None for a in attn]
        self.conv = [None if a else torch.zeros(slots, d, width, device=device, dtype=dtype) for a in attn]
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)
        self.states: dict[int, SlotState] = {}
        super()._grow(slots)

    @property
    def slots(self) -> int:
        return self.capacity

    def _grow(self, capacity: int) -> None:
        raise GenerationError(f"all {self.capacity} engine slots are taken")

    def reset(self, slots: list[int]) -> None:
        for slot in slots:
            if slot in self.states:
                self.states[slot].reset()

    def open_state(self) -> SlotState:
        """A free slot's state, emptied."""
        slot = self.open()
        state = self.states.get(slot)
        if state is None:
            state = self.states[slot] = SlotState(self, slot)
        state.reset()
        return state

    def close_state(self, state: SlotState) -> None:
        self.close(state.slot)

    @property
    def active_rows(self) -> int:
        """1 + the highest slot in use (0 when none): the rows a batched step must cover."""
        used = set(range(self.capacity)) - set(self.free)
        return max(used) + 1 if used else 0
