// The call page: one WebRTC call to the agent (POST /offer, non-trickle), live events over the
// "events" data channel, level meters from WebAudio analysers. Test hooks live on window.lfmCall.
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const rawAudio = params.get("raw") === "1"; // tests: no echo cancellation / noise suppression / AGC
  const $ = (id) => document.getElementById(id);
  const ui = {
    call: $("call"), hangup: $("hangup"), status: $("status"), token: $("token"),
    tokenLabel: $("token-label"), mic: $("mic-level"), agent: $("agent-level"),
    bargeIn: $("barge-in"), transcript: $("transcript"), remote: $("remote"),
  };
  const state = {
    state: "idle", callId: null, events: [], remoteLevels: [], micLevels: [], error: null,
  };
  window.lfmCall = state;
  let pc = null, channel = null, micStream = null, audioCtx = null, meterTimer = null;
  let micAnalyser = null, remoteAnalyser = null;
  const agentItems = new Map();
  const MAX_LEVELS = 6000; // 2 minutes at 20 ms

  function setStatus(text) { state.state = text; ui.status.textContent = text; }

  function addItem(cls, text) {
    const li = document.createElement("li");
    li.className = cls;
    li.textContent = text;
    ui.transcript.appendChild(li);
    return li;
  }

  function rms(analyser, buf) {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
    return Math.sqrt(sum / buf.length);
  }

  function push(list, item) {
    list.push(item);
    if (list.length > MAX_LEVELS) list.splice(0, list.length - MAX_LEVELS);
  }

  function startMeters() {
    const buf = new Float32Array(1024);
    meterTimer = setInterval(() => {
      const now = Date.now();
      if (micAnalyser) {
        const level = rms(micAnalyser, buf);
        ui.mic.value = Math.min(1, level * 4);
        push(state.micLevels, [now, level]);
      }
      if (remoteAnalyser) {
        const level = rms(remoteAnalyser, buf);
        ui.agent.value = Math.min(1, level * 4);
        push(state.remoteLevels, [now, level]);
      }
    }, 20);
  }

  function onEvent(ev) {
    state.events.push(ev);
    switch (ev.type) {
      case "call":
        state.callId = ev.call_id;
        addItem("info", "connected to " + ev.model);
        break;
      case "caller_speech":
        addItem("caller", "You: (speech " + ((ev.end_ms - ev.start_ms) / 1000).toFixed(1) + " s)");
        break;
      case "end_of_turn":
        addItem("info", "end of your turn at " + (ev.at_ms / 1000).toFixed(2) + " s");
        break;
      case "agent_turn": {
        const li = addItem("agent", "Agent: …");
        agentItems.set(ev.epoch, li);
        break;
      }
      case "latency": {
        const li = agentItems.get(ev.epoch);
        if (li && ev.latency_ms !== null) {
          const span = document.createElement("span");
          span.className = "latency";
          span.textContent = "response " + ev.latency_ms + " ms";
          li.appendChild(span);
        }
        break;
      }
      case "agent_text": {
        const li = agentItems.get(ev.epoch) || addItem("agent", "");
        const latency = li.querySelector(".latency");
        li.textContent = "Agent: " + (ev.text || "(no text)") + (ev.interrupted ? " [interrupted]" : "");
        if (latency) li.appendChild(latency);
        break;
      }
      case "agent_withdrawn": {  // the caller only paused: the early answer was never heard
        const li = agentItems.get(ev.epoch);
        if (li) { li.remove(); agentItems.delete(ev.epoch); }
        break;
      }
      case "barge_in":
        addItem("mark", "barge-in: agent stopped at " + (ev.stopped_ms / 1000).toFixed(2) + " s");
        ui.bargeIn.hidden = false;
        setTimeout(() => { ui.bargeIn.hidden = true; }, 1500);
        break;
      case "dtmf":
        addItem("info", "keys: " + ev.digits);
        break;
      case "hangup":
      case "ended":
        addItem("info", "call ended" + (ev.reason ? " (" + ev.reason + ")" : ""));
        hangUp(false);
        break;
      default:
        break;
    }
  }

  function waitForIce(conn, timeoutMs) {
    if (conn.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { conn.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (conn.iceGatheringState === "complete") done(); };
      conn.addEventListener("icegatheringstatechange", check);
      setTimeout(done, timeoutMs);
    });
  }

  async function call() {
    ui.call.disabled = true;
    state.error = null;
    setStatus("starting");
    try {
      const constraints = rawAudio
        ? { echoCancellation: false, noiseSuppression: false, autoGainControl: false }
        : { echoCancellation: true, noiseSuppression: true, autoGainControl: true };
      micStream = await navigator.mediaDevices.getUserMedia({ audio: constraints, video: false });
      audioCtx = new AudioContext();
      micAnalyser = audioCtx.createAnalyser();
      audioCtx.createMediaStreamSource(micStream).connect(micAnalyser);
      pc = new RTCPeerConnection({ iceServers: [] });
      channel = pc.createDataChannel("events");
      channel.onmessage = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { /* ignore */ } };
      micStream.getAudioTracks().forEach((t) => pc.addTrack(t, micStream));
      pc.ontrack = (ev) => {
        const stream = ev.streams[0] || new MediaStream([ev.track]);
        ui.remote.srcObject = stream; // WebAudio hears silence unless the track plays in an element
        ui.remote.play().catch(() => {});
        remoteAnalyser = audioCtx.createAnalyser();
        audioCtx.createMediaStreamSource(stream).connect(remoteAnalyser);
      };
      pc.onconnectionstatechange = () => {
        if (!pc) return;
        if (pc.connectionState === "connected") setStatus("in call");
        if (pc.connectionState === "failed" || pc.connectionState === "closed") hangUp(false);
      };
      startMeters();
      await pc.setLocalDescription(await pc.createOffer());
      await waitForIce(pc, 5000);
      const headers = { "Content-Type": "application/json" };
      const token = ui.token.value.trim();
      if (token) headers.Authorization = "Bearer " + token;
      setStatus("calling");
      const resp = await fetch("/offer", {
        method: "POST", headers,
        body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
      });
      const body = await resp.json().catch(() => ({}));
      if (!resp.ok) {
        if (resp.status === 401) ui.tokenLabel.hidden = false;
        throw new Error((body.error || "HTTP " + resp.status) + (body.reason ? " (" + body.reason + ")" : ""));
      }
      state.callId = body.call_id;
      await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
      ui.hangup.disabled = false;
    } catch (err) {
      state.error = String(err && err.message ? err.message : err);
      addItem("info", "call failed: " + state.error);
      hangUp(false);
      setStatus("failed");
    }
  }

  function hangUp(sendBye) {
    if (channel && channel.readyState === "open" && sendBye) {
      channel.send(JSON.stringify({ type: "hangup" }));
    }
    const conn = pc;
    pc = null;
    if (conn) setTimeout(() => conn.close(), sendBye ? 100 : 0);
    if (micStream) micStream.getTracks().forEach((t) => t.stop());
    micStream = null;
    if (meterTimer) clearInterval(meterTimer);
    meterTimer = null;
    micAnalyser = null;
    remoteAnalyser = null;
    ui.mic.value = 0;
    ui.agent.value = 0;
    ui.call.disabled = false;
    ui.hangup.disabled = true;
    if (state.state !== "failed") setStatus("ended");
  }

  ui.call.addEventListener("click", call);
  ui.hangup.addEventListener("click", () => hangUp(true));
  fetch("/healthz").then((r) => r.json()).then((h) => {
    if (h.auth) ui.tokenLabel.hidden = false;
  }).catch(() => {});
})();
