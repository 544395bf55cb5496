"""One call's conversation with the model, owned by the engine's worker thread.

Theory of operation
-------------------
A conversation is a list of turns, each a list of segments: text ids, input-audio embeddings
(adapter outputs, one per 80 ms) or output-audio codes (8 per 80 ms). Everything in the turns has
been fed to the backbone: ``state.position`` always equals the number of positions in ``turns``
(plus, while a reply is being generated, the reply's consumed items). That invariant is what
makes the two hard operations exact:

* interrupt(played_frames): the reply is cut to the items the caller heard (audio frames up to
  the last played one, and the text generated before it), the backbone state is rolled back to the
  start of the reply (a saved position) and the kept items are fed again in one forward, then the
  turn is closed with ``<|im_end|>\\n``. The result equals a fresh prefill of the truncated history.
* context budget: when a turn would not fit, the oldest turns after the system prompt are dropped
  and the remaining history is fed again into a fresh state.

Input modes: ``turn`` keeps the caller's audio and encodes it all at end of turn (the official
behaviour, bit for bit); ``chunked`` encodes every ``chunk_frames`` frames with
``left_context_frames`` of earlier audio as context and feeds the new embeddings at once, so at end
of turn only the tail remains. The embedding count is the same in both modes (ceil(F / 8) for F
mel frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from model.backbone import BackboneState
from model.lfm2_audio import END_OF_AUDIO, Modality, Sampling
from model.pool import SlotState
from model.schedule import TEXT_END, InterleavedSchedule, SequentialSchedule

if TYPE_CHECKING:
    from model.checkpoint import LoadedModel

SAMPLES_PER_FRAME = 1280  # 80 ms at 16 kHz
MEL_PER_FRAME = 8  # 10 ms hop, 8x subsampling

SegmentKind = Literal["text", "audio_in", "audio_out"]


@dataclass
class Segment:
    kind: SegmentKind
    ids: list[int] = field(default_factory=list)
    embeds: torch.Tensor | None = None  # audio_in: [n, hidden]
    codes: torch.Tensor | None = None  # audio_out: [n, codebooks]

    @property
    def length(self) -> int:
        if self.kind == "text":
            return len(self.ids)
        tensor = self.embeds if self.kind == "audio_in" else self.codes
        return 0 if tensor is None else int(tensor.shape[0])


@dataclass
class Turn:
    role: str
    segments: list[Segment] = field(default_factory=list)

    @property
    def length(self) -> int:
        return sum(s.length for s in self.segments)


@dataclass
class InputSettings:
    mode: str = "chunked"  # "chunked" | "turn"
    chunk_frames: int = 8
    left_context_frames: int = 16
    right_context_frames: int = 0  # lookahead: a chunk is encoded once this many later frames exist


@dataclass
class GenJob:
    """A reply (or greeting) being generated: one per conversation at most."""

    reply_id: int
    state: BackboneState | SlotState
    schedule: InterleavedSchedule | SequentialSchedule
    text_sampling: Sampling
    audio_sampling: Sampling
    max_items: int
    start_position: int
    kind: Literal["reply", "greeting"] = "reply"
    forced: list[int] = field(default_factory=list)  # text tokens to emit instead of sampling
    last_hidden: torch.Tensor | None = None  # decides the next item without a backbone call
    pending: torch.Tensor | None = None  # [hidden] embedding of the last item, not yet consumed
    items: list[tuple[Modality, int | None, torch.Tensor | None]] = field(default_factory=list)
    text_ids: list[int] = field(default_factory=list)
    audio_frames: int = 0  # decodable frames emitted (end-of-audio frames excluded)
    chunks: int = 0  # 80 ms chunks emitted (frames, plus a decoder's tail at the end of a stretch of audio)
    decoder_slot: int | None = None  # this reply's stream in the engine's batched audio decoder
    decoder_open: bool = False  # the stream has frames whose lookahead tail is not out yet
    done: bool = False
    tag: int = 0
    turn_position: int = 0  # state position before the assistant turn (its header) began


class Conversation:
    """Worker-side state of one call. Only the engine's worker thread touches it."""

    def __init__(self, conv_id: int, loaded: LoadedModel, state: BackboneState | SlotState, input_settings: InputSettings,
                 max_context_tokens: int, reply_reserve_tokens: int) -> None:
        self.id = conv_id
        self.loaded = loaded
        self.model = loaded.model
        self.state = state
        self.input = input_settings
        self.max_context_tokens = max_context_tokens
        self.reply_reserve_tokens = reply_reserve_tokens
        self.turns: list[Turn] = []
        self.turn_audio: list[np.ndarray] = []  # this user turn's 80 ms frames (float32, 16 kHz)
        self.turn_encoded_frames = 0  # frames of turn_audio already encoded (chunked mode)
        self.user_turn_open = False
        self.job: GenJob | None = None
        self.last_finished: GenJob | None = None  # completed reply that a late barge-in may still cut
        # (state position, segment count, encoded frames, audio) of the last user turn before it closed
        self.reopen: tuple[int, int, int, list[np.ndarray]] | None = None
        self.compactions = 0
        self.next_reply_id = 1
        self._reply_turn_position = 0  # between open_reply and begin_reply
        self._closing: GenJob | None = None  # between close_reply and reply_closed
        self._deferred: list[torch.Tensor] | None = None  # embeddings appended, not fed (close_user_turn_deferred)

    # -- embeddings -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.loaded.device

    def text_ids(self, text: str) -> list[int]:
        return self.loaded.tokenizer.encode(text)

    @torch.no_grad()
    def embed_segment(self, seg: Segment) -> torch.Tensor:
        if seg.kind == "text":
            ids = torch.tensor(seg.ids, dtype=torch.long, device=self.device)
            return self.model.embed_text(ids)
        if seg.kind == "audio_in":
            assert seg.embeds is not None
            return seg.embeds
        assert seg.codes is not None
        return self.model.embed_audio_frames(seg.codes.to(self.device))

    @torch.no_grad()
    def encode_waveform(self, wave: np.ndarray) -> torch.Tensor:
        """16 kHz float32 mono -> adapter outputs [ceil(F / 8), hidden] (the official recipe)."""
        w = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).to(self.device)
        feats, _ = self.loaded.mel(w[None], torch.tensor([w.shape[0]], device=self.device))
        frames = feats.shape[-1]
        dtype = self.model.lfm.embed_tokens.weight.dtype
        adapted, _, _ = self.model.encode_audio(feats[0].to(dtype), torch.tensor([frames], device=self.device))
        return adapted

    # -- feeding the backbone ---------------------------------------------------------------------
    @torch.no_grad()
    def feed(self, embeds: torch.Tensor) -> torch.Tensor:
        """Feed [n, hidden] to the backbone; returns the last final-normed hidden [hidden]."""
        out = self.model.lfm(embeds[None], self.state)
        return out[0, -1]

    def append_segment(self, role: str, seg: Segment, new_turn: bool = False) -> torch.Tensor | None:
        """Add a segment to the history (opening a turn if asked) and feed it. Returns last hidden."""
        if seg.length == 0:
            return None
        self.ensure_room(seg.length)
        if new_turn or not self.turns or self.turns[-1].role != role:
            self.turns.append(Turn(role))
        self.turns[-1].segments.append(seg)
        embeds = self.embed_segment(seg)
        if self._deferred is not None:  # the caller feeds them (batched with other calls)
            self._deferred.append(embeds)
            return None
        return self.feed(embeds)

    @property
    def history_positions(self) -> int:
        return sum(t.length for t in self.turns)

    # -- context budget -----------------------------------------------------------------------------
    def ensure_room(self, incoming: int) -> None:
        """Drop the oldest turns (never the system turn) when the budget would be exceeded."""
        pending = sum(int(e.shape[0]) for e in self._deferred) if self._deferred is not None else 0
        if self.state.position + pending + incoming + self.reply_reserve_tokens <= self.max_context_tokens:
            return
        target = (self.max_context_tokens * 3) // 4 - incoming - self.reply_reserve_tokens
        keep_from = 1
        total = self.history_positions
        # the open (last) turn is never dropped: it is being built right now
        while total > max(target, 0) and keep_from < len(self.turns) - 1:
            total -= self.turns[keep_from].length
            keep_from += 1
        self.turns = self.turns[:1] + self.turns[keep_from:]
        self.rebuild_state()  # feeds every turn, the deferred segments' included
        if self._deferred is not None:
            self._deferred.clear()
        self.compactions += 1

    def rebuild_state(self) -> None:
        """A fresh backbone state holding exactly `turns` (used after dropping turns)."""
        self.state.reset()
        self.state.reserve(self.history_positions + 64)
        chunk: list[torch.Tensor] = []
        size = 0
        for turn in self.turns:
            for seg in turn.segments:
                chunk.append(self.embed_segment(seg))
                size += seg.length
                if size >= 2048:
                    self.feed(torch.cat(chunk))
                    chunk, size = [], 0
        if chunk:
            self.feed(torch.cat(chunk))
        self.state.save()

    # -- caller input ---------------------------------------------------------------------------------
    def _open_user_turn(self) -> None:
        if not self.user_turn_open:
            self.last_finished = None
            self.reopen = None
            self.user_turn_open = True
            self.turn_audio = []
            self.turn_encoded_frames = 0
            self.append_segment("user", Segment("text", self.text_ids("<|im_start|>user\n")), new_turn=True)

    def add_frame(self, frame: np.ndarray) -> None:
        self._open_user_turn()
        self.turn_audio.append(frame)

    def add_user_text(self, text: str) -> None:
        """Text in the caller's turn (e.g. DTMF digits), after the audio received so far."""
        self._open_user_turn()
        if self.turn_audio[self.turn_encoded_frames:]:  # keep the order: encode the audio before it
            if self.input.mode == "chunked":
                self.encode_chunk(final=True)
            else:
                embeds = self.encode_waveform(np.concatenate(self.turn_audio))
                self.append_segment("user", Segment("audio_in", embeds=embeds.detach()))
            self.turn_audio = []
            self.turn_encoded_frames = 0
        self.append_segment("user", Segment("text", self.text_ids(text)))

    def chunk_ready(self) -> bool:
        if self.input.mode != "chunked" or not self.user_turn_open:
            return False
        need = self.input.chunk_frames + self.input.right_context_frames
        return len(self.turn_audio) - self.turn_encoded_frames >= need

    def encode_chunk(self, final: bool) -> None:
        """Encode the next chunk (or, if final, everything left) with left and right context, feed it."""
        start = self.turn_encoded_frames
        end = len(self.turn_audio) if final else start + self.input.chunk_frames
        if end <= start and not final:
            return
        ctx_start = max(0, start - self.input.left_context_frames)
        stop = end if final else min(len(self.turn_audio), end + self.input.right_context_frames)
        window = np.concatenate(self.turn_audio[ctx_start:stop]) if stop > ctx_start else np.zeros(0, np.float32)
        if window.shape[0] == 0:
            return
        embeds = self.encode_waveform(window)
        skip = start - ctx_start
        rows = embeds[skip:] if final else embeds[skip : skip + (end - start)]
        self.turn_encoded_frames = end
        self.append_segment("user", Segment("audio_in", embeds=rows.detach()))

    def close_user_turn(self) -> None:
        """End of the caller's turn: encode what is left, close the turn."""
        if not self.user_turn_open:
            return
        # what `retract_reply` needs to reopen this turn (the caller only paused)
        self.reopen = (self.state.save(), len(self.turns[-1].segments), self.turn_encoded_frames,
                       list(self.turn_audio))
        if self.input.mode == "chunked":
            self.encode_chunk(final=True)
        elif self.turn_audio:
            embeds = self.encode_waveform(np.concatenate(self.turn_audio))
            self.append_segment("user", Segment("audio_in", embeds=embeds.detach()))
        self.append_segment("user", Segment("text", self.text_ids("<|im_end|>\n")))
        self.user_turn_open = False
        self.turn_audio = []
        self.turn_encoded_frames = 0

    def close_user_turn_deferred(self) -> torch.Tensor | None:
        """``close_user_turn`` without feeding: returns what is still to be fed to this state (the
        turn's last audio rows and its end), or None; the caller feeds it, alone or batched."""
        self._deferred = []
        try:
            self.close_user_turn()
        finally:
            parts, self._deferred = self._deferred, None
        return torch.cat(parts) if parts else None

    # -- replies ----------------------------------------------------------------------------------------
    def start_reply(self, n_text: int, n_audio: int, text_sampling: Sampling, audio_sampling: Sampling,
                    max_items: int) -> GenJob:
        header = self.open_reply()
        return self.begin_reply(self.feed(header), n_text, n_audio, text_sampling, audio_sampling, max_items)

    def open_reply(self) -> torch.Tensor:
        """First half of ``start_reply``: close the caller's turn and open the assistant turn. Returns
        the header's embeddings [n, hidden], which the caller feeds to this state (alone, or in one
        batched pass with other calls, ``model.batched.backbone_positions``) before ``begin_reply``."""
        self.close_user_turn()
        self.last_finished = None
        self._reply_turn_position = self.state.save()
        seg = Segment("text", self.text_ids("<|im_start|>assistant\n"))
        self.ensure_room(seg.length)
        self.turns.append(Turn("assistant"))
        self.turns[-1].segments.append(seg)
        return self.embed_segment(seg)

    def begin_reply(self, hidden: torch.Tensor, n_text: int, n_audio: int, text_sampling: Sampling,
                    audio_sampling: Sampling, max_items: int) -> GenJob:
        """Second half of ``start_reply``, once the header is in the state (``hidden``: its last output)."""
        start = self.state.save()
        job = GenJob(self.next_reply_id, self.state, InterleavedSchedule(n_text, n_audio), text_sampling,
                     audio_sampling, max_items, start, last_hidden=hidden, turn_position=self._reply_turn_position)
        self.next_reply_id += 1
        self.job = job
        return job

    def finish_reply(self, keep_audio_frames: int | None) -> tuple[list[int], int]:
        """Close the current reply keeping what was heard (all if None); returns (text ids, frames).

        A completed reply (None) stays cuttable by `truncate_finished` until the caller speaks again:
        its audio may still be playing when the caller cuts in.
        """
        embeds, result = self.close_reply(keep_audio_frames)
        if embeds is not None:
            self.feed(embeds)
        self.reply_closed(keep_audio_frames)
        return result

    def close_reply(self, keep_audio_frames: int | None) -> tuple[torch.Tensor | None, tuple[list[int], int]]:
        """First half of ``finish_reply``: the history as heard, and the embeddings still to be fed
        (a completed reply's last item and end of turn) or None; feed them, then ``reply_closed``."""
        job = self.job
        assert job is not None
        self.job = None
        self._closing = job
        consumed = self.state.position - job.start_position
        to_feed: list[torch.Tensor] = []
        if keep_audio_frames is None and job.pending is not None and consumed == len(job.items) - 1:
            to_feed.append(job.pending[None])  # stopped at the length cap: the last item is not in yet
            consumed += 1
        if keep_audio_frames is None and consumed == len(job.items):
            # every item is in the state already (or about to be): only the end of the turn is missing
            turn = self.turns[-1]
            turn.segments.extend(_items_to_segments(job.items))
            end = Segment("text", self.text_ids("<|im_end|>\n"))
            turn.segments.append(end)
            to_feed.append(self.embed_segment(end))
            return torch.cat(to_feed), _reply_result(job.items)
        self.turns.pop()
        self.state.truncate(job.turn_position)
        return None, self._write_assistant_turn(job, keep_audio_frames)

    def reply_closed(self, keep_audio_frames: int | None) -> None:
        """Second half of ``finish_reply``, once ``close_reply``'s embeddings are in the state."""
        job = self._closing
        assert job is not None
        self._closing = None
        self.state.forget_saves_before(job.turn_position if self.reopen is None else self.reopen[0])
        self.state.save()
        self.last_finished = job if keep_audio_frames is None else None

    def retract_reply(self) -> bool:
        """Withdraw the reply to the last caller turn and reopen that turn (the caller only paused).

        Only while nothing else happened since: the reply is being generated, or completed and
        still the last turn. The state returns to the turn's last position before it was closed.
        """
        job = self.job or self.last_finished
        if job is None or job.kind != "reply" or self.reopen is None or len(self.turns) < 2 \
                or self.turns[-1].role != "assistant" or self.turns[-2].role != "user":
            return False
        position, segments, encoded, audio = self.reopen
        self.job = self.last_finished = None
        self.reopen = None
        self.turns.pop()
        del self.turns[-1].segments[segments:]
        self.state.truncate(position)
        self.user_turn_open = True
        self.turn_audio = audio
        self.turn_encoded_frames = encoded
        return True

    def truncate_finished(self, keep_audio_frames: int) -> tuple[list[int], int] | None:
        """Cut the last, already completed reply to what the caller heard (a late barge-in).

        None when there is nothing to cut: the caller has spoken since, or all of it was heard.
        """
        job = self.last_finished
        self.last_finished = None
        if job is None or not self.turns or self.turns[-1].role != "assistant":
            return None
        total = sum(1 for item in job.items if is_decodable(item))
        if keep_audio_frames >= total:
            return None
        self.turns.pop()
        self.state.truncate(job.turn_position)
        result = self._write_assistant_turn(job, keep_audio_frames)
        self.state.save()
        return result

    def _write_assistant_turn(self, job: GenJob, keep_audio_frames: int | None) -> tuple[list[int], int]:
        """Append (and feed) the assistant turn of `job` as heard; the state is at job.turn_position."""
        header = Segment("text", self.text_ids("<|im_start|>assistant\n"))
        end = Segment("text", self.text_ids("<|im_end|>\n"))
        items = heard_items(job.items, keep_audio_frames)
        result = _reply_result(items)
        segments = [header, *_items_to_segments(items), end]
        self.turns.append(Turn("assistant", segments))
        self.feed(torch.cat([self.embed_segment(seg) for seg in segments]))
        return result

    def start_greeting(self, text: str, n_text: int, n_audio: int, text_sampling: Sampling,
                       audio_sampling: Sampling, max_frames: int) -> GenJob:
        """The agent speaks `text` first: an interleaved reply whose text is forced to `text`.

        The model generates the audio for the forced text (then `<|text_end|>`), and the turn ends
        after its end-of-audio frame. The greeting is an ordinary assistant turn in the history.
        """
        ids = self.text_ids(text)
        job = self.start_reply(n_text, n_audio, text_sampling, audio_sampling, len(ids) + 1 + max_frames)
        job.kind = "greeting"
        job.forced = [*ids, TEXT_END]
        return job


def _reply_result(items: list[tuple[Modality, int | None, torch.Tensor | None]]) -> tuple[list[int], int]:
    text_ids = [int(t) for kind, t, _ in items if kind == Modality.TEXT and t is not None]
    return text_ids, sum(1 for item in items if is_decodable(item))


def is_decodable(item: tuple[Modality, int | None, torch.Tensor | None]) -> bool:
    return item[0] == Modality.AUDIO_OUT and item[2] is not None and int(item[2][0]) != END_OF_AUDIO


def heard_items(items: list[tuple[Modality, int | None, torch.Tensor | None]],
                keep_audio_frames: int | None) -> list[tuple[Modality, int | None, torch.Tensor | None]]:
    """The items up to and including the `keep_audio_frames`-th decodable audio frame (all if None).

    Text generated after the last heard frame, and an end-of-audio frame after it, were not heard.
    """
    if keep_audio_frames is None:
        return list(items)
    out: list[tuple[Modality, int | None, torch.Tensor | None]] = []
    frames = 0
    if keep_audio_frames <= 0:
        return out
    for item in items:
        out.append(item)
        if is_decodable(item):
            frames += 1
            if frames == keep_audio_frames:
                break
    return out


def _items_to_segments(items: list[tuple[Modality, int | None, torch.Tensor | None]]) -> list[Segment]:
    segments: list[Segment] = []
    for kind, token, codes in items:
        if kind == Modality.TEXT:
            assert token is not None
            if segments and segments[-1].kind == "text":
                segments[-1].ids.append(token)
            else:
                segments.append(Segment("text", [token]))
        else:
            assert codes is not None
            row = codes.reshape(1, -1).cpu()
            if segments and segments[-1].kind == "audio_out" and segments[-1].codes is not None:
                segments[-1].codes = torch.cat((segments[-1].codes, row))
            else:
                segments.append(Segment("audio_out", codes=row))
    return segments
