"""The capacity authority: mixed SIP, WebRTC and dial traffic never sees an answered call refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.capacity import CallRefused, Capacity, Reservation


def test_reserve_commit_release_and_refusals() -> None:
    cap = Capacity(2)
    a = cap.reserve("sip")
    b = cap.reserve("webrtc")
    assert cap.free_slots == 0 and not cap.accepting and cap.by_transport() == {"sip": 1, "webrtc": 1}
    with pytest.raises(CallRefused) as refused:
        cap.reserve("dial")
    assert refused.value.reason == "full" and cap.counters["refused_full"] == 1
    a.commit()
    cap.draining = True
    b.commit()  # answered while draining: it runs
    assert cap.committed == 2
    a.release()
    a.release()  # idempotent: every cleanup path may call it
    assert cap.free_slots == 1 and not cap.accepting
    with pytest.raises(CallRefused) as refused:
        cap.reserve("sip")
    assert refused.value.reason == "draining"
    with pytest.raises(RuntimeError):
        a.commit()


@settings(max_examples=500, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["offer", "answer", "end", "drain"]),
                              st.sampled_from(["sip", "webrtc", "dial"]), st.integers(0, 50)), max_size=200),
       slots=st.integers(1, 6))
def test_an_answered_call_is_never_refused_and_every_path_releases(ops: list[tuple[str, str, int]],
                                                                   slots: int) -> None:
    cap = Capacity(slots)
    offered: list[Reservation] = []
    answered: list[Reservation] = []
    for kind, transport, pick in ops:
        if kind == "offer":
            free_before = cap.free_slots
            try:
                offered.append(cap.reserve(transport))
                assert free_before > 0 and not cap.draining
            except CallRefused:
                assert free_before == 0 or cap.draining
        elif kind == "answer" and offered:
            r = offered.pop(pick % len(offered))
            r.commit()  # never raises: the slot was held since the offer
            answered.append(r)
        elif kind == "end" and (offered or answered):
            pool = offered if (pick % 2 and offered) or not answered else answered
            pool.pop(pick % len(pool)).release()
        elif kind == "drain":
            cap.draining = not cap.draining
        assert cap.held == len(offered) + len(answered) <= slots
        assert cap.free_slots == slots - cap.held
    for r in offered + answered:
        r.release()
    assert cap.free_slots == slots
