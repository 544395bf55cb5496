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

from model.backbone import BackboneState
from model.config import LfmConfig
from model.errors import GenerationError
from model.slots import SlotPool


class SlotState(BackboneState):
    """One slot of a ``BackbonePool``, with the ``BackboneState`` interface (batch 1): save, truncate,
    reset and the backbone's in-place writes act on the slot's rows of the pool."""

    def __init__(self, pool: BackbonePool, slot: int) -> None:  # views of the pool, not own buffers: no super()
        self.pool = pool
        self.slot = slot
        self.batch_size = 1
        s = slice(slot, slot + 1)
        # views made with grad mode on (nothing here requires grad): they may then be written in place
        # under no_grad (the engine's worker) as well as outside it
        with torch.enable_grad():
            self.keys = [None if k is None else k[s] for k in pool.keys]
            self.values = [None if v is None else v[s] for v in pool.values]
            self.conv = [None if c is None else c[s] for c in pool.conv]
        self._position = 0
        self.reset()

    @property  # type: ignore[override]
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
        return self.pool.context - 1  # the last position is the batched step's write-off row

    def reserve(self, total: int) -> None:
        if total > self.kv_capacity:
            raise GenerationError(f"slot context is {self.kv_capacity} positions; {total} asked for")


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
