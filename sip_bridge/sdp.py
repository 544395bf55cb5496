"""SDP parsing and serialising (RFC 4566) and offer/answer for one audio stream (RFC 3264).

Theory of operation
-------------------
``SessionDescription.parse`` reads the lines an RTP telephony peer sends: ``v= o= s= c= t=``
at session level and ``m= c= a=`` per media section (RFC 4566 §5). Every line is ``x=value``
with a single lowercase letter; a malformed line raises ``SdpError`` naming its line number.
Unknown line types are skipped, attributes are kept in order.

Offer/answer (RFC 3264 §6): ``negotiate_answer`` answers each offered m-line in order. The
first audio RTP/AVP stream that shares a codec with our preferences is accepted; every other
stream is refused with port 0 (§6, §8.2). Codec choice follows *our* order — G.722 when
offered, then PCMU, then PCMA by default — and the answer lists just that codec plus
telephone-event (RFC 4733) when offered, echoing the offerer's payload type and fmtp. ptime
is echoed (default 20 ms). Direction follows §6.1:

    offer      answer          offer c=0.0.0.0 (RFC 2543 hold, RFC 3264 §8.4)
    sendrecv → sendrecv        sendrecv → recvonly (we cannot send: no address)
    sendonly → recvonly
    recvonly → sendonly
    inactive → inactive

G.722 is announced as ``G722/8000`` although it carries 16 kHz audio: RFC 3551 §4.5.2 keeps
the RTP clock at 8000 for historical reasons. ``Codec.sample_rate`` gives the audio rate.

No shared codec raises ``NoAcceptableCodec`` (the UA answers 488).
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field, replace

from sip_bridge.errors import NoAcceptableCodec, SdpError

# RFC 3551 §6 static payload types we know.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int]] = {
    0: ("PCMU", 8000),
    3: ("GSM", 8000),
    8: ("PCMA", 8000),
    9: ("G722", 8000),
    18: ("G729", 8000),
}
TELEPHONE_EVENT = "telephone-event"
DEFAULT_PTIME_MS = 20
DEFAULT_DTMF_PT = 101


class Direction(enum.Enum):
    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    def reversed(self) -> Direction:
        """The answer's direction for this offered direction (RFC 3264 §6.1)."""
        return _REVERSED[self]


_REVERSED = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}


@dataclass(frozen=True)
class Codec:
    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1
    fmtp: str | None = None

    @property
    def sample_rate(self) -> int:
        """Audio sample rate: 16 kHz for G.722 despite its 8000 RTP clock (RFC 3551 §4.5.2)."""
        return 16000 if self.name.upper() == "G722" else self.clock_rate

    @property
    def rtpmap(self) -> str:
        channels = f"/{self.channels}" if self.channels != 1 else ""
        return f"{self.payload_type} {self.name}/{self.clock_rate}{channels}"


@dataclass(frozen=True)
class Origin:
    username: str = "-"
    session_id: int = 0
    session_version: int = 0
    address: str = "0.0.0.0"
    address_type: str = "IP4"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} IN {self.address_type} {self.address}"
        )


@dataclass(frozen=True)
class MediaDescription:
    media: str
    port: int
    protocol: str
    formats: tuple[str, ...]
    connection: str | None = None
    attributes: tuple[tuple[str, str | None], ...] = ()

    def attribute(self, name: str) -> str | None:
        for key, value in self.attributes:
            if key == name:
                return "" if value is None else value
        return None

    @property
    def direction(self) -> Direction:
        for key, _ in reversed(self.attributes):
            if key in Direction._value2member_map_:
                return Direction(key)
        return Direction.SENDRECV

    @property
    def ptime_ms(self) -> int | None:
        value = self.attribute("ptime")
        return int(value) if value is not None else None

    @property
    def rtcp_port(self) -> int | None:
        value = self.attribute("rtcp")
        return int(value.split()[0]) if value else None

    @property
    def codecs(self) -> list[Codec]:
        """Offered codecs in the offerer's order (rtpmap, else the static table)."""
        rtpmaps: dict[int, tuple[str, int, int]] = {}
        fmtps: dict[int, str] = {}
        for key, value in self.attributes:
            if key in ("rtpmap", "fmtp") and value:
                pt_text, _, rest = value.partition(" ")
                if not pt_text.isdigit():
                    continue
                if key == "fmtp":
                    fmtps[int(pt_text)] = rest.strip()
                    continue
                parts = rest.strip().split("/")
                if len(parts) >= 2 and parts[1].isdigit():
                    channels = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else 1
                    rtpmaps[int(pt_text)] = (parts[0], int(parts[1]), channels)
        result = []
        for fmt in self.formats:
            if not fmt.isdigit():
                continue
            pt = int(fmt)
            if pt in rtpmaps:
                name, rate, channels = rtpmaps[pt]
            elif pt in STATIC_PAYLOAD_TYPES:
                name, rate = STATIC_PAYLOAD_TYPES[pt]
                channels = 1
            else:
                continue
            result.append(Codec(pt, name, rate, channels, fmtps.get(pt)))
        return result


@dataclass(frozen=True)
class SessionDescription:
    origin: Origin = field(default_factory=Origin)
    session_name: str = "-"
    connection: str | None = None
    media: tuple[MediaDescription, ...] = ()
    attributes: tuple[tuple[str, str | None], ...] = ()

    @classmethod
    def parse(cls, data: bytes | str) -> SessionDescription:
        return _parse(data)

    def to_bytes(self) -> bytes:
        lines = ["v=0", f"o={self.origin}", f"s={self.session_name or '-'}"]
        if self.connection is not None:
            lines.append(f"c=IN {_addr_type(self.connection)} {self.connection}")
        lines.append("t=0 0")
        lines.extend(_attribute_line(k, v) for k, v in self.attributes)
        for media in self.media:
            lines.append(f"m={media.media} {media.port} {media.protocol} {' '.join(media.formats)}")
            if media.connection is not None:
                lines.append(f"c=IN {_addr_type(media.connection)} {media.connection}")
            lines.extend(_attribute_line(k, v) for k, v in media.attributes)
        return ("\r\n".join(lines) + "\r\n").encode("utf-8")

    @property
    def audio(self) -> MediaDescription | None:
        return next((m for m in self.media if m.media == "audio"), None)

    def connection_for(self, media: MediaDescription) -> str | None:
        return media.connection if media.connection is not None else self.connection


def _attribute_line(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def _addr_type(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _parse_connection(value: str, line_number: int) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"malformed c= line {value!r}", line_number)
    address = parts[2].split("/")[0]  # drop multicast TTL / count (RFC 4566 §5.7)
    if not address:
        raise SdpError("empty connection address", line_number)
    return address


def _parse(data: bytes | str) -> SessionDescription:
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SdpError(f"SDP is not UTF-8 (offset {exc.start})") from None
    else:
        text = data
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise SdpError("empty session description")
    origin: Origin | None = None
    session_name = "-"
    connection: str | None = None
    session_attrs: list[tuple[str, str | None]] = []
    media: list[MediaDescription] = []
    current: dict[str, object] | None = None
    sections: list[dict[str, object]] = []
    for number, line in enumerate(lines, start=1):
        if len(line) < 2 or line[1] != "=" or not ("a" <= line[0] <= "z"):
            raise SdpError(f"not a type=value line: {line[:60]!r}", number)
        kind, value = line[0], line[2:]
        if number == 1:
            if kind != "v" or value.strip() != "0":
                raise SdpError("first line must be v=0", number)
            continue
        if kind == "v":
            raise SdpError("repeated v= line", number)
        if kind == "o" and current is None:
            origin = _parse_origin(value, number)
        elif kind == "s" and current is None:
            session_name = value
        elif kind == "c":
            address = _parse_connection(value, number)
            if current is None:
                connection = address
            else:
                current["connection"] = address
        elif kind == "m":
            current = _parse_media_line(value, number)
            current["line"] = number
            sections.append(current)
        elif kind == "a":
            name, colon, attr_value = value.partition(":")
            if not name or " " in name:
                raise SdpError(f"malformed attribute {value[:40]!r}", number)
            attr = (name, attr_value if colon else None)
            _check_attribute(attr, number)
            if current is None:
                session_attrs.append(attr)
            else:
                attrs = current["attributes"]
                assert isinstance(attrs, list)
                attrs.append(attr)
    if origin is None:
        raise SdpError("missing o= line")
    for section in sections:
        attrs = section["attributes"]
        assert isinstance(attrs, list)
        formats = section["formats"]
        assert isinstance(formats, tuple)
        conn = section.get("connection")
        if conn is None and connection is None and section["port"] != 0:
            raise SdpError(
                "media section has no c= line and there is no session c=", int(str(section["line"]))
            )
        media.append(
            MediaDescription(
                media=str(section["media"]),
                port=int(str(section["port"])),
                protocol=str(section["protocol"]),
                formats=formats,
                connection=conn if isinstance(conn, str) else None,
                attributes=tuple(attrs),
            )
        )
    return SessionDescription(origin, session_name, connection, tuple(media), tuple(session_attrs))


def _parse_origin(value: str, number: int) -> Origin:
    parts = value.split()
    if len(parts) != 6 or parts[3] != "IN":
        raise SdpError(f"malformed o= line {value!r}", number)
    if not parts[1].isdigit() or not parts[2].isdigit():
        raise SdpError("o= session id and version must be numeric", number)
    return Origin(parts[0], int(parts[1]), int(parts[2]), parts[5], parts[4])


def _parse_media_line(value: str, number: int) -> dict[str, object]:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"malformed m= line {value!r}", number)
    port_text = parts[1].split("/")[0]
    if not port_text.isdigit() or not port_text.isascii() or int(port_text) > 65535:
        raise SdpError(f"bad media port {parts[1]!r}", number)
    if parts[2].startswith("RTP/") and any(not f.isdigit() or int(f) > 127 for f in parts[3:]):
        raise SdpError(f"bad RTP payload type list {' '.join(parts[3:])!r}", number)
    return {
        "media": parts[0],
        "port": int(port_text),
        "protocol": parts[2],
        "formats": tuple(parts[3:]),
        "attributes": [],
    }


def _check_attribute(attr: tuple[str, str | None], number: int) -> None:
    name, value = attr
    if name in ("rtpmap", "fmtp"):
        pt, _, rest = (value or "").partition(" ")
        if not pt.isdigit() or not rest.strip():
            raise SdpError(f"malformed a={name}:{value}", number)
        if name == "rtpmap":
            parts = rest.strip().split("/")
            if len(parts) < 2 or not parts[1].isdigit():
                raise SdpError(f"malformed a=rtpmap:{value}", number)
    elif name in ("ptime", "rtcp"):
        first = (value or "").split(" ")[0]
        if not first.isdigit() or not first.isascii() or int(first) > 65535 or int(first) == 0:
            raise SdpError(f"malformed a={name}:{value}", number)


@dataclass(frozen=True)
class MediaPreferences:
    """What we accept, best first (encoding names as in rtpmap), plus RFC 4733 events."""

    codecs: tuple[str, ...] = ("G722", "PCMU", "PCMA")
    telephone_event: bool = True
    ptime_ms: int = DEFAULT_PTIME_MS


@dataclass(frozen=True)
class NegotiatedMedia:
    """The outcome of offer/answer for the audio stream, as the RTP layer needs it."""

    codec: Codec
    telephone_event: Codec | None
    remote_address: tuple[str, int] | None  # None: nowhere to send (hold with 0.0.0.0, port 0)
    remote_rtcp_port: int | None
    ptime_ms: int
    direction: Direction  # our direction: SENDONLY means we send and do not receive

    @property
    def on_hold(self) -> bool:
        return self.direction in (Direction.RECVONLY, Direction.INACTIVE)


def _is_unspecified(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_unspecified
    except ValueError:
        return False


def _pick(offered: list[Codec], preferences: MediaPreferences) -> tuple[Codec, Codec | None]:
    chosen: Codec | None = None
    for name in preferences.codecs:
        chosen = next((c for c in offered if c.name.upper() == name.upper()), None)
        if chosen is not None:
            break
    if chosen is None:
        names = ", ".join(c.name for c in offered) or "none"
        raise NoAcceptableCodec(f"no acceptable audio codec among offered {names}")
    event = None
    if preferences.telephone_event:
        event = next(
            (c for c in offered if c.name.lower() == TELEPHONE_EVENT and c.clock_rate == chosen.clock_rate),
            None,
        )
        if event is not None and event.fmtp is None:
            event = replace(event, fmtp="0-16")
    return chosen, event


def negotiate_answer(
    offer: SessionDescription,
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int = 0,
    preferences: MediaPreferences | None = None,
) -> tuple[SessionDescription, NegotiatedMedia]:
    """Answer ``offer`` (RFC 3264 §6); raises ``NoAcceptableCodec`` when nothing fits."""
    prefs = preferences or MediaPreferences()
    answered: list[MediaDescription] = []
    result: NegotiatedMedia | None = None
    last_error: NoAcceptableCodec | None = None
    for media in offer.media:
        usable = media.media == "audio" and media.protocol == "RTP/AVP" and media.port != 0
        if result is not None or not usable:
            answered.append(replace(media, port=0, connection=None, attributes=()))  # §6: refuse
            continue
        try:
            codec, event = _pick(media.codecs, prefs)
        except NoAcceptableCodec as exc:
            last_error = exc
            answered.append(replace(media, port=0, connection=None, attributes=()))
            continue
        remote = offer.connection_for(media)
        old_hold = _is_unspecified(remote)
        direction = media.direction.reversed()
        if old_hold and direction is Direction.SENDRECV:
            direction = Direction.RECVONLY
        ptime = media.ptime_ms or prefs.ptime_ms
        result = NegotiatedMedia(
            codec=codec,
            telephone_event=event,
            remote_address=None if old_hold or remote is None else (remote, media.port),
            remote_rtcp_port=media.rtcp_port or media.port + 1,
            ptime_ms=ptime,
            direction=direction,
        )
        answered.append(_local_media(local_port, codec, event, ptime, direction))
    if result is None:
        raise last_error or NoAcceptableCodec("offer has no usable audio RTP/AVP stream")
    origin = Origin("-", session_id, session_version, local_address, _addr_type(local_address))
    answer = SessionDescription(origin, "-", local_address, tuple(answered))
    return answer, result


def _local_media(
    port: int, codec: Codec, event: Codec | None, ptime_ms: int, direction: Direction
) -> MediaDescription:
    codecs = [codec] + ([event] if event is not None else [])
    attrs: list[tuple[str, str | None]] = [("rtpmap", c.rtpmap) for c in codecs]
    attrs += [("fmtp", f"{c.payload_type} {c.fmtp}") for c in codecs if c.fmtp]
    attrs += [("ptime", str(ptime_ms)), (direction.value, None)]
    return MediaDescription(
        "audio", port, "RTP/AVP", tuple(str(c.payload_type) for c in codecs), None, tuple(attrs)
    )


def build_offer(
    *,
    local_address: str,
    local_port: int,
    session_id: int,
    session_version: int = 0,
    preferences: MediaPreferences | None = None,
    direction: Direction = Direction.SENDRECV,
) -> SessionDescription:
    """An offer listing our codecs in preference order plus telephone-event (PT 101)."""
    prefs = preferences or MediaPreferences()
    by_name = {name: pt for pt, (name, _) in STATIC_PAYLOAD_TYPES.items()}
    codecs = [Codec(by_name[n.upper()], n.upper(), 8000) for n in prefs.codecs if n.upper() in by_name]
    if not codecs:
        raise NoAcceptableCodec("preferences name no codec with a static payload type")
    formats = [str(c.payload_type) for c in codecs]
    attrs: list[tuple[str, str | None]] = [("rtpmap", c.rtpmap) for c in codecs]
    if prefs.telephone_event:
        formats.append(str(DEFAULT_DTMF_PT))
        attrs += [
            ("rtpmap", f"{DEFAULT_DTMF_PT} {TELEPHONE_EVENT}/8000"),
            ("fmtp", f"{DEFAULT_DTMF_PT} 0-16"),
        ]
    attrs += [("ptime", str(prefs.ptime_ms)), (direction.value, None)]
    media = MediaDescription("audio", local_port, "RTP/AVP", tuple(formats), None, tuple(attrs))
    origin = Origin("-", session_id, session_version, local_address, _addr_type(local_address))
    return SessionDescription(origin, "-", local_address, (media,))


def negotiated_from_answer(offer: SessionDescription, answer: SessionDescription) -> NegotiatedMedia:
    """What a UAC uses after receiving ``answer`` to its ``offer`` (RFC 3264 §7)."""
    media = answer.audio
    if media is None or media.port == 0:
        raise NoAcceptableCodec("answer refused the audio stream")
    ours = {c.name.upper() for c in (offer.audio.codecs if offer.audio else [])}
    codecs = [c for c in media.codecs if c.name.upper() in ours and c.name.lower() != TELEPHONE_EVENT]
    if not codecs:
        raise NoAcceptableCodec("answer selects no codec from our offer")
    event = next((c for c in media.codecs if c.name.lower() == TELEPHONE_EVENT), None)
    remote = answer.connection_for(media)
    old_hold = _is_unspecified(remote)
    return NegotiatedMedia(
        codec=codecs[0],
        telephone_event=event,
        remote_address=None if old_hold or remote is None else (remote, media.port),
        remote_rtcp_port=media.rtcp_port or media.port + 1,
        ptime_ms=media.ptime_ms or DEFAULT_PTIME_MS,
        direction=media.direction.reversed(),
    )
