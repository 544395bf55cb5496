"""The real-time engine: one worker thread owns the model and serves every call.

Theory of operation
-------------------
Calls talk to the worker only through a bounded command queue (``queue.Queue``, never blocking the
event loop: a full queue is an error event, counted) and receive events back on their own asyncio
queues (``loop.call_soon_threadsafe``). The worker loop, one iteration at a time:

1. applies every queued command (open, feed, end of turn, respond, greet, interrupt, close);
2. runs ONE batched generation step for every call that is generating
   (``model.batched.GenerationStep`` over the static slots of ``model.pool.BackbonePool``: one
   backbone position per call with one masked attention for all, text logits, one depthformer
   frame, sampling and the next inputs, all on the device, replayed as a CUDA graph per batch
   bucket on a GPU: ``model.step_capture``), reads back ONE packed tensor (every call's token and
   codes), applies each call's schedule, then ONE batched audio decode of every new frame
   (``model.audio_decoder``: Mimi or the LFM2.5 detokenizer, one stream slot per reply); each
   decoded 80 ms chunk is sent at once. A decoder with lookahead (the detokenizer's 20 ms) sends
   the last samples of a stretch of audio, padded to 80 ms, when that stretch ends (an
   end-of-audio frame, or the reply's end); an interrupted reply's tail is dropped;
3. runs prefill work: end-of-turn work first (it is on the latency path), then encoder chunks of
   calls that are still speaking.

Fairness rule: while any call is generating, one iteration does at most ONE prefill unit (one
encoder chunk, or one end-of-turn close) between two generation steps, taking calls round-robin;
so a generating call is delayed by at most one unit per step, and a prefilling call waits at most
(number of prefilling calls) steps. With nobody generating, all prefill work runs at once.

interrupt(played_frames) is handled before the next step: generation stops within one model step,
the reply is cut to what the caller heard and the backbone state rolled back to exactly that
(see ``model.conversation``). If a step raises, the calls in that step get an ``EngineError``
event and are reset; the others go on. If the worker thread itself dies, every call gets an
``EngineError`` and a new worker starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model.audio_decoder import FRAME_SAMPLES, DecoderStreams, decoder_codes
from model.batched import GenerationStep, StepSampling, backbone_positions
from model.checkpoint import LoadedModel
from model.conversation import Conversation, GenJob, InputSettings
from model.lfm2_audio import END_OF_AUDIO, Modality, Sampling
from model.pool import BackbonePool, SlotState
from model.schedule import IM_END
from model.step_capture import CapturedSteps

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "Respond with interleaved text and audio."


@dataclass(frozen=True)
class EngineSettings:
    input_mode: str = "chunked"
    chunk_frames: int = 8
    left_context_frames: int = 16
    right_context_frames: int = 0
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    instructions: str = ""
    max_context_tokens: int = 32768
    reply_reserve_tokens: int = 1024
    max_reply_items: int = 1000
    text_sampling: Sampling = Sampling()
    audio_sampling: Sampling = Sampling()
    command_queue_size: int = 4096
    seed: int = 0
    slots: int = 16  # calls the static backbone state holds (the server's max_calls)
    cuda_graphs: bool = True  # on CUDA, replay the step as a graph per batch bucket (model.step_capture)
    starts_per_step: int = 8  # replies that may start between two generation steps while others generate


# -- events sent to a call --------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentAudio:
    """80 ms of agent speech (float32, 24 kHz, 1920 samples) and the reply's text so far."""

    reply_id: int
    frame_index: int
    pcm: np.ndarray
    text: str
    codes: tuple[int, ...] = ()
    tag: int = 0  # the caller's label for this reply (the session's turn epoch)


@dataclass(frozen=True)
class ReplyFinished:
    reply_id: int
    text: str  # text kept in the history (what was heard, when interrupted)
    frames: int  # audio frames kept in the history
    interrupted: bool
    generated_frames: int
    tag: int = 0


@dataclass(frozen=True)
class EngineError:
    reply_id: int | None
    message: str


EngineEvent = AgentAudio | ReplyFinished | EngineError


class EngineQueueFull(RuntimeError):
    """The worker's command queue is full (the engine is overloaded)."""


# -- commands ---------------------------------------------------------------------------------------


@dataclass
class _Cmd:
    kind: str
    conv_id: int
    payload: Any = None
    future: asyncio.Future[Any] | None = None


@dataclass
class _Call:
    """Engine-side bookkeeping of one call: its worker conversation and its event sink."""

    conv: Conversation | None
    emit: Callable[[EngineEvent], None]
    instructions: str
    deferred_frames: list[np.ndarray | str] = field(default_factory=list)  # caller audio or text, in order
    end_turn_requested: bool = False
    respond_requested: bool = False
    respond_tag: int = 0
    reply_text: str = ""
    pending_interrupt: list[tuple[int, asyncio.Future[Any] | None, asyncio.AbstractEventLoop | None]] = \
        field(default_factory=list)


class CallConversation:
    """The asyncio side of one call's conversation (what the agent's CallSession holds)."""

    def __init__(self, engine: Engine, conv_id: int) -> None:
        self._engine = engine
        self.id = conv_id
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()
        self.dropped_frames = 0

    def feed(self, frame: np.ndarray) -> None:
        """80 ms of caller audio at 16 kHz (1280 samples, float32 in [-1, 1) or int16)."""
        pcm = np.asarray(frame)
        if pcm.dtype == np.int16:
            pcm = pcm.astype(np.float32) / 32768.0
        try:
            self._engine._submit(_Cmd("feed", self.id, pcm.astype(np.float32, copy=False)))
        except EngineQueueFull:
            self.dropped_frames += 1

    def add_text(self, text: str) -> None:
        """Text in the caller's turn, in order with its audio (e.g. "DTMF: 1234#")."""
        self._engine._submit(_Cmd("text", self.id, text))

    def end_turn(self) -> None:
        self._engine._submit(_Cmd("end_turn", self.id))

    def respond(self, tag: int = 0) -> None:
        """Close the caller's turn (if open) and generate a reply; chunks arrive on `events`.

        `tag` is echoed in every event of this reply (the session passes its turn epoch).
        """
        self._engine._submit(_Cmd("respond", self.id, tag))

    def greet(self, text: str, tag: int = 0) -> None:
        """Speak `text` first (TTS); it is written into the history as the agent's first turn."""
        self._engine._submit(_Cmd("greet", self.id, (text, tag)))

    def request_interrupt(self, played_frames: int) -> asyncio.Future[ReplyFinished | None]:
        """Submit an interrupt now (ordered before any later `feed`); the future gives its result."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._engine._submit(_Cmd("interrupt", self.id, int(played_frames), fut))
        return fut

    def retract(self) -> None:
        """Withdraw the reply to the caller's last turn and reopen that turn (the caller only paused).

        A ReplyFinished(interrupted, frames=0) follows if a reply was withdrawn; audio fed next
        continues the same caller turn.
        """
        self._engine._submit(_Cmd("retract", self.id))

    async def interrupt(self, played_frames: int) -> ReplyFinished | None:
        """Stop the reply within one step and keep exactly `played_frames` frames in the history.

        Also cuts a reply that has finished generating but was still playing (a late barge-in), and
        cancels a reply that was requested but not started yet. None when there was nothing to cut.
        """
        result: ReplyFinished | None = await self.request_interrupt(played_frames)
        return result

    def close(self) -> None:
        with contextlib.suppress(EngineQueueFull):
            self._engine._submit(_Cmd("close", self.id))


class Engine:
    """Owns the loaded model; serves every call from one worker thread."""

    def __init__(self, loaded: LoadedModel, settings: EngineSettings | None = None) -> None:
        self.loaded = loaded
        self.settings = settings or EngineSettings()
        self._commands: queue.Queue[_Cmd] = queue.Queue(self.settings.command_queue_size)
        self._calls: dict[int, _Call] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rr = 0
        self.restarts = 0
        self.steps = 0
        self.step_seconds: list[float] = []
        self.fault_hook: Callable[[list[int]], None] | None = None  # tests inject failures here
        self._streams: DecoderStreams | None = None
        self._pool: BackbonePool | None = None
        self._gen_step: GenerationStep | None = None
        self._captured: CapturedSteps | None = None
        self._pending: torch.Tensor | None = None  # [slots, hidden] each slot's next input (the step writes it)

    @property
    def pool(self) -> BackbonePool:
        """Every call's backbone state, in static slots (made on first use, in the worker)."""
        if self._pool is None:
            s, model = self.settings, self.loaded.model
            w = model.lfm.embed_tokens.weight
            self._pool = BackbonePool(model.config.lfm, s.slots, s.max_context_tokens + 1, w.device, w.dtype)
            self._gen_step = GenerationStep(model, self._pool, StepSampling.of(s.text_sampling, s.audio_sampling))
            self._pending = torch.zeros(s.slots, model.config.lfm.hidden_size, device=w.device, dtype=w.dtype)
            self._captured = CapturedSteps(self._gen_step, self._pending, s.cuda_graphs)
        return self._pool

    def _release_conversation(self, conv: Conversation | None) -> None:
        if conv is None:
            return
        if conv.job is not None:
            self._release_stream(conv.job)
        if isinstance(conv.state, SlotState) and self._pool is not None and conv.state.pool is self._pool:
            self._pool.close_state(conv.state)

    @property
    def streams(self) -> DecoderStreams:
        """The batched audio decoder streams (one slot per reply being spoken), made on first use."""
        if self._streams is None:
            if self.loaded.decoder is None:
                raise RuntimeError("the model was loaded without an audio decoder")
            self._streams = self.loaded.decoder.streams(8)
        return self._streams

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="lfm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._commands.put_nowait(_Cmd("wake", 0))
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    def open(self, instructions: str | None = None,
             sink: Callable[[EngineEvent], None] | None = None) -> CallConversation:
        """Register a call; its events arrive on the returned object's `events` queue (or, given
        `sink`, are passed to it on the event loop's thread: ``agent.engine_thread``)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            conv_id = self._next_id
            self._next_id += 1
        handle = CallConversation(self, conv_id)
        deliver = sink or handle.events.put_nowait

        def emit(event: EngineEvent) -> None:
            loop.call_soon_threadsafe(deliver, event)

        self._submit(_Cmd("open", conv_id, (emit, instructions or "")))
        return handle

    def _submit(self, cmd: _Cmd) -> None:
        try:
            self._commands.put_nowait(cmd)
        except queue.Full:
            raise EngineQueueFull(f"engine command queue full ({self.settings.command_queue_size})") from None

    # -- the worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_grad_enabled(False)
        try:
            while not self._stop.is_set():
                busy = any(c.conv is not None and (c.conv.job is not None or c.end_turn_requested or
                                                   c.respond_requested or c.conv.chunk_ready())
                           for c in self._calls.values())
                self._drain_commands(block=not busy)
                self._generation_step()
                self._prefill_work()
        except BaseException as exc:  # the worker died: tell every call, then restart
            log.exception("engine worker died")
            for call in self._calls.values():
                call.emit(EngineError(None, f"engine worker died: {exc!r}"))
                call.conv = None
            self._calls.clear()
            self._streams = None  # every stream and slot belonged to a call that is gone
            self._pool = self._gen_step = self._pending = self._captured = None
            self.restarts += 1
            if not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="lfm-engine", daemon=True)
                self._thread.start()

    def _drain_commands(self, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=0.05) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(cmd)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _new_conversation(self, conv_id: int, instructions: str) -> Conversation:
        s = self.settings
        state = self.pool.open_state()
        conv = Conversation(conv_id, self.loaded, state, InputSettings(s.input_mode, s.chunk_frames,
                                                                        s.left_context_frames,
                                                                        s.right_context_frames),
                            s.max_context_tokens, s.reply_reserve_tokens)
        prompt = s.system_prompt
        extra = " ".join(x for x in (s.instructions, instructions) if x)
        if extra:
            prompt = f"{prompt} {extra}"
        from model.conversation import Segment

        ids = [i for piece in ("<|startoftext|>", "<|im_start|>system\n", prompt, "<|im_end|>\n")
               for i in conv.text_ids(piece)]
        conv.append_segment("system", Segment("text", ids), new_turn=True)
        conv.state.save()
        return conv

    def _apply(self, cmd: _Cmd) -> None:
        if cmd.kind == "wake":
            return
        if cmd.kind == "open":
            emit, instructions = cmd.payload
            call = _Call(None, emit, instructions)
            self._calls[cmd.conv_id] = call
            self._guard([cmd.conv_id], lambda: setattr(call, "conv", self._new_conversation(cmd.conv_id,
                                                                                             instructions)))
            return
        call = self._calls.get(cmd.conv_id)
        if call is None or call.conv is None:
            if cmd.future is not None:
                _resolve(cmd.future, None)
            return
        conv = call.conv
        if cmd.kind in ("feed", "text"):
            if conv.job is not None or call.end_turn_requested or call.deferred_frames:
                call.deferred_frames.append(cmd.payload)
            elif cmd.kind == "feed":
                conv.add_frame(cmd.payload)
            else:
                self._guard([cmd.conv_id], lambda: conv.add_user_text(cmd.payload))
        elif cmd.kind == "end_turn":
            call.end_turn_requested = True
        elif cmd.kind == "respond":
            call.end_turn_requested = True
            call.respond_requested = True
            call.respond_tag = int(cmd.payload)
        elif cmd.kind == "greet":
            if conv.job is None:
                text, tag = cmd.payload
                self._guard([cmd.conv_id], lambda: self._start_greeting(call, text, tag))
        elif cmd.kind == "interrupt":
            result: ReplyFinished | None = None
            if conv.job is not None:
                result = self._finish(call, keep=cmd.payload)
            elif call.respond_requested:  # asked for, not started: the caller spoke first
                call.respond_requested = False
            elif conv.last_finished is not None:
                job = conv.last_finished
                cut = conv.truncate_finished(cmd.payload)
                if cut is not None:
                    ids, frames = cut
                    text = self.loaded.tokenizer.decode(ids, skip_special_tokens=True)
                    result = ReplyFinished(job.reply_id, text, frames, True, job.audio_frames, job.tag)
                    call.emit(result)
            if cmd.future is not None:
                _resolve(cmd.future, result)
        elif cmd.kind == "retract":
            if call.respond_requested and conv.job is None:  # not started: the turn is still open
                call.respond_requested = call.end_turn_requested = False
            else:
                job = conv.job or conv.last_finished
                if job is not None and conv.retract_reply():
                    call.emit(ReplyFinished(job.reply_id, "", 0, True, job.audio_frames, job.tag))
        elif cmd.kind == "close":
            self._release_conversation(conv)
            conv.job = None
            del self._calls[cmd.conv_id]

    def _start_greeting(self, call: _Call, text: str, tag: int) -> None:
        assert call.conv is not None
        s = self.settings
        cfg = self.loaded.config
        # about 15 characters per second of speech, with room to spare
        max_frames = min(s.max_reply_items, int(12.5 * (len(text) / 14 * 1.2 + 1)))
        job = call.conv.start_greeting(text, cfg.interleaved_n_text, cfg.interleaved_n_audio, s.text_sampling,
                                       s.audio_sampling, max_frames)
        job.tag = tag
        job.decoder_slot = self.streams.open()
        call.reply_text = ""

    def _start_replies(self, starts: list[tuple[int, _Call]]) -> None:
        """Start the replies of every call in ``starts``: each closes its turn (guarded per call) and
        one batched backbone pass feeds every turn's tail; each opens the assistant turn and one
        batched pass feeds every header (``_feed_rows``); then each reply begins."""
        s = self.settings
        cfg = self.loaded.config
        # 1. each caller's turn closes (its last audio rows encoded) and all the tails go in together
        closing: list[tuple[int, _Call, torch.Tensor | None]] = []
        for cid, call in starts:
            def close_one(cid: int = cid, call: _Call = call) -> None:
                assert call.conv is not None
                closing.append((cid, call, call.conv.close_user_turn_deferred()))
            self._guard([cid], close_one)
        tails = [(cid, call, e) for cid, call, e in closing if e is not None]

        def feed_tails() -> None:
            self._feed_rows([(self._slot_state(c), e) for _, c, e in tails])
        if tails and not self._guard([cid for cid, _, _ in tails], feed_tails):
            closing = [(cid, call, e) for cid, call, e in closing if e is None]
        # 2. each opens the assistant turn, and all the headers go in together
        opened: list[tuple[int, _Call, torch.Tensor]] = []
        for cid, call, _ in closing:
            def open_one(cid: int = cid, call: _Call = call) -> None:
                assert call.conv is not None
                opened.append((cid, call, call.conv.open_reply()))
            self._guard([cid], open_one)
        hidden: list[torch.Tensor] = []

        def feed() -> None:
            hidden.extend(self._feed_rows([(self._slot_state(call), embeds) for _, call, embeds in opened]))
        if not opened or not self._guard([cid for cid, _, _ in opened], feed):
            return
        max_items = min(s.max_reply_items, s.reply_reserve_tokens - 2)
        for (cid, call, _), h in zip(opened, hidden, strict=True):
            def begin(call: _Call = call, h: torch.Tensor = h) -> None:
                assert call.conv is not None
                job = call.conv.begin_reply(h, cfg.interleaved_n_text, cfg.interleaved_n_audio, s.text_sampling,
                                            s.audio_sampling, max_items)
                job.tag = call.respond_tag
                job.decoder_slot = self.streams.open()
                call.reply_text = ""
            self._guard([cid], begin)

    @staticmethod
    def _slot_state(call: _Call) -> SlotState:
        assert call.conv is not None and isinstance(call.conv.state, SlotState)
        return call.conv.state

    def _feed_rows(self, work: list[tuple[SlotState, torch.Tensor]]) -> list[torch.Tensor]:
        """Feed each slot its embeddings [n, hidden]: one batched backbone pass per distinct n (the
        reply headers and ends of turn of every call are the same length), the other rows untouched.
        Returns each slot's last final-normed hidden [hidden]."""
        pool = self.pool
        out: list[torch.Tensor | None] = [None] * len(work)
        by_length: dict[int, list[int]] = {}
        for i, (_, embeds) in enumerate(work):
            by_length.setdefault(int(embeds.shape[0]), []).append(i)
        for n, members in by_length.items():
            states = [work[i][0] for i in members]
            for st in states:
                st.reserve(st.position + n)
            rows = max(st.slot for st in states) + 1
            first = work[members[0]][1]
            embeds = torch.zeros(rows, n, first.shape[-1], device=first.device, dtype=first.dtype)
            slots = torch.tensor([st.slot for st in states], device=first.device)
            embeds[slots] = torch.stack([work[i][1] for i in members])
            advance = torch.zeros(rows, dtype=torch.bool)
            advance[[st.slot for st in states]] = True
            kv_len = max(st.position for st in states) + n
            with torch.no_grad():
                hidden = backbone_positions(self.loaded.model.lfm, pool, embeds, advance.to(first.device), kv_len)
            for i, st in zip(members, states, strict=True):
                st.advanced(n)
                out[i] = hidden[st.slot, -1]
        return [h for h in out if h is not None]

    def _finish(self, call: _Call, keep: int | None) -> ReplyFinished:
        return self._finish_many([(call, keep)])[0]

    def _finish_many(self, work: list[tuple[_Call, int | None]]) -> list[ReplyFinished]:
        """Close the replies of ``work`` (keep: audio frames heard, None for all): decoder tails,
        the history as heard, and every completed reply's end of turn in one batched feed."""
        jobs = []
        for call, _ in work:
            assert call.conv is not None and call.conv.job is not None
            jobs.append(call.conv.job)
        self._flush_tails([(c, j) for (c, keep), j in zip(work, jobs, strict=True) if keep is None])
        feeds: list[tuple[SlotState, torch.Tensor]] = []
        results = []
        for (call, keep), job in zip(work, jobs, strict=True):
            self._release_stream(job)
            assert call.conv is not None
            embeds, result = call.conv.close_reply(keep)
            results.append(result)
            if embeds is not None:
                assert isinstance(call.conv.state, SlotState)
                feeds.append((call.conv.state, embeds))
        if feeds:
            self._feed_rows(feeds)
        events = []
        for (call, keep), job, (ids, frames) in zip(work, jobs, results, strict=True):
            assert call.conv is not None
            call.conv.reply_closed(keep)
            text = self.loaded.tokenizer.decode(ids, skip_special_tokens=True)
            event = ReplyFinished(job.reply_id, text, frames, keep is not None, job.audio_frames, job.tag)
            call.emit(event)
            events.append(event)
        return events

    def _guard(self, conv_ids: list[int], work: Callable[[], None]) -> bool:
        """Run work; on an exception the calls involved get an error event and are reset."""
        try:
            if self.fault_hook is not None:
                self.fault_hook(conv_ids)
            work()
            return True
        except Exception as exc:
            log.exception("engine step failed for calls %s", conv_ids)
            for conv_id in conv_ids:
                call = self._calls.get(conv_id)
                if call is None:
                    continue
                reply_id = call.conv.job.reply_id if call.conv is not None and call.conv.job else None
                self._release_conversation(call.conv)
                call.conv = None
                call.emit(EngineError(reply_id, f"model step failed: {exc}"))
                call.respond_requested = call.end_turn_requested = False
                call.deferred_frames = []
                try:
                    call.conv = self._new_conversation(conv_id, call.instructions)
                except Exception:
                    call.conv = None
            return False

    # -- generation ------------------------------------------------------------------------------------
    def _generation_step(self) -> None:
        active = [(cid, c) for cid, c in self._calls.items() if c.conv is not None and c.conv.job is not None]
        if not active:
            return
        t0 = time.perf_counter()
        ids = [cid for cid, _ in active]
        self._guard(ids, lambda: self._step(active))
        self.steps += 1
        self.step_seconds.append(time.perf_counter() - t0)
        if len(self.step_seconds) > 10000:
            del self.step_seconds[:5000]

    def _step(self, active: list[tuple[int, _Call]]) -> None:
        """ONE batched step for every generating call (``model.batched.GenerationStep``), then each
        call's schedule, events and audio from the one packed tensor read back."""
        jobs: list[tuple[_Call, GenJob]] = []
        for _, call in active:
            assert call.conv is not None and call.conv.job is not None
            job = call.conv.job
            if len(job.items) >= job.max_items:
                job.done = True
            else:
                jobs.append((call, job))
        if jobs:
            self._run_step(jobs)
        done = [(call, None) for _, call in active
                if call.conv is not None and call.conv.job is not None and call.conv.job.done]
        if done:
            self._finish_many(done)  # type: ignore[arg-type]

    def _run_step(self, jobs: list[tuple[_Call, GenJob]]) -> None:
        pool = self.pool
        assert self._pending is not None
        rows = pool.active_rows
        hidden_size = self._pending.shape[1]
        advance = torch.zeros(rows, dtype=torch.bool)
        want_audio = torch.zeros(rows, dtype=torch.bool)
        forced = torch.full((rows,), -1, dtype=torch.long)
        given: list[tuple[int, torch.Tensor]] = []
        modalities: dict[int, Modality] = {}
        kv_len = 1
        for _, j in jobs:
            assert isinstance(j.state, SlotState)
            r = j.state.slot
            modality = modalities[r] = j.schedule.begin_step()
            want_audio[r] = modality == Modality.AUDIO_OUT
            if j.last_hidden is None:
                assert j.pending is not None
                if j.pending.data_ptr() != self._pending[r].data_ptr():
                    self._pending[r] = j.pending
                advance[r] = True
                kv_len = max(kv_len, j.state.position + 1)
            else:
                given.append((r, j.last_hidden))
            if modality == Modality.TEXT:
                if j.forced:
                    forced[r] = j.forced[0]
                elif j.kind == "greeting" and j.schedule.text_done:
                    forced[r] = IM_END  # the greeting's audio has ended: so has its turn
        device = self._pending.device
        hidden_in = torch.zeros(rows, hidden_size, device=device, dtype=self._pending.dtype)
        if given:
            hidden_in[torch.tensor([r for r, _ in given], device=device)] = torch.stack([h for _, h in given])
        assert self._captured is not None
        out, computed = self._captured(rows, advance.to(device), hidden_in, want_audio.to(device), forced.to(device),
                                       kv_len)
        self._pending[:computed] = out.next_embeds
        packed = out.packed[:rows].cpu()  # the one device-to-host copy of the step
        decode: list[tuple[_Call, GenJob, torch.Tensor]] = []
        ended: list[tuple[_Call, GenJob]] = []
        for c, j in jobs:
            assert isinstance(j.state, SlotState)
            r = j.state.slot
            if advance[r]:
                j.state.advanced()
            j.last_hidden = None
            j.pending = self._pending[r]
            if modalities[r] == Modality.TEXT:
                token = int(packed[r, 0])
                if forced[r] >= 0 and j.forced:
                    j.forced.pop(0)
                if j.schedule.after_text(token):
                    j.items.append((Modality.TEXT, token, None))
                    j.text_ids.append(token)
                    c.reply_text = self.loaded.tokenizer.decode(j.text_ids, skip_special_tokens=True)
                if j.schedule.finished:
                    j.done = True
                    j.pending = None
                continue
            frame = packed[r, 1:]
            eoa = int(frame[0]) == END_OF_AUDIO
            j.schedule.after_audio(eoa)
            j.items.append((Modality.AUDIO_OUT, None, frame))
            if eoa:
                ended.append((c, j))
            else:
                decode.append((c, j, out.packed[r, 1:]))
        self._decode_frames(decode)
        self._flush_tails(ended)

    # -- audio decoding ------------------------------------------------------------------------------------
    def _decode_frames(self, work: list[tuple[_Call, GenJob, torch.Tensor]]) -> None:
        """One batched decode of every new frame; each call gets its 80 ms chunk at once."""
        if not work:
            return
        slots = [j.decoder_slot for _, j, _ in work]
        assert all(s is not None for s in slots)
        frames = torch.stack([f for _, _, f in work])
        pcm = self.streams.step([int(s) for s in slots if s is not None], decoder_codes(frames)).cpu().numpy()
        for row, (c, j, frame) in enumerate(work):
            c.emit(AgentAudio(j.reply_id, j.chunks, pcm[row], c.reply_text, tuple(int(x) for x in frame.tolist()),
                              j.tag))
            j.audio_frames += 1
            j.chunks += 1
            j.decoder_open = True

    def _flush_tails(self, work: list[tuple[_Call, GenJob]]) -> None:
        """A stretch of audio ended (end-of-audio frame, or the reply's end): send each decoder tail as a
        last 80 ms chunk (zero-padded) and restart the stream for audio that may follow."""
        work = [(c, j) for c, j in work if j.decoder_open and j.decoder_slot is not None]
        if not work:
            return
        slots = [int(j.decoder_slot) for _, j in work if j.decoder_slot is not None]
        tails = self.streams.flush(slots).cpu().numpy()
        self.streams.reset(slots)
        for row, (c, j) in enumerate(work):
            j.decoder_open = False
            if tails.shape[1] == 0:
                continue
            chunk = np.zeros(FRAME_SAMPLES, dtype=np.float32)
            chunk[: tails.shape[1]] = tails[row]
            c.emit(AgentAudio(j.reply_id, j.chunks, chunk, c.reply_text, (), j.tag))
            j.chunks += 1

    def _release_stream(self, job: GenJob) -> None:
        if job.decoder_slot is not None and self._streams is not None:
            self._streams.close(job.decoder_slot)
        job.decoder_slot = None
        job.decoder_open = False

    # -- prefill ------------------------------------------------------------------------------------------
    def _prefill_work(self) -> None:
        generating = any(c.conv is not None and c.conv.job is not None for c in self._calls.values())
        budget = 1 if generating else 1 << 30
        # caller audio that arrived while a reply was generating or closing opens the next turn
        for call in self._calls.values():
            conv = call.conv
            if call.deferred_frames and conv is not None and conv.job is None and not call.end_turn_requested:
                for item in call.deferred_frames:
                    if isinstance(item, str):
                        conv.add_user_text(item)
                    else:
                        conv.add_frame(item)
                call.deferred_frames = []
        # end of turn first: it is on the latency path. The replies that start now open together (one
        # batched feed of their headers: one unit of the budget), at most `starts_per_step` of them
        # while others are generating
        starts: list[tuple[int, _Call]] = []
        limit = self.settings.starts_per_step if generating else 1 << 30
        for cid, call in list(self._calls.items()):
            conv = call.conv
            if conv is None or conv.job is not None or not call.end_turn_requested:
                continue
            if call.respond_requested:
                if len(starts) >= limit:
                    continue
                call.end_turn_requested = call.respond_requested = False
                starts.append((cid, call))
                continue
            if budget == 0:
                continue
            budget -= 1
            call.end_turn_requested = False
            self._guard([cid], conv.close_user_turn)
        if starts:
            budget = max(budget - 1, 0)
            self._start_replies(starts)
        if budget == 0:
            return
        ids = list(self._calls)
        if not ids:
            return
        for k in range(len(ids)):
            if budget == 0:
                return
            cid = ids[(self._rr + k) % len(ids)]
            call = self._calls[cid]
            conv = call.conv
            while conv is not None and conv.job is None and conv.chunk_ready() and budget > 0:
                budget -= 1
                self._guard([cid], lambda conv=conv: conv.encode_chunk(final=False))  # type: ignore[misc]
                conv = call.conv
        self._rr += 1


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    loop = fut.get_loop()
    loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(value))
