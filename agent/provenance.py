"""Signed provenance records: one per recorded call, next to its stereo recording.

A record says, verifiably and offline, that a recording holds a call with this node's AI agent:
the SHA-256 of the recording file, the agent's utterances on the recording's timeline (start, end,
80 ms frames heard, the watermark time counters they carry), the watermark's payload (scheme, key
id, node id, call tag), the model and the node. It is signed with the node's Ed25519 key
(RFC 8032, ``cryptography``) over its canonical JSON (keys sorted, no spaces, UTF-8), and written
atomically as ``<recording stem>.provenance.json`` beside the recording.

``verify_record`` checks, in order: the file parses and is a record of this format; the signing
key is trusted (the node's own key, ``provenance.trusted_public_keys``, or keys given on the
command line); the signature is valid; the recording next to it has the recorded hash. Any change
to the recording, an utterance time, a payload or the signature, or a key nobody trusts, rejects
it. Key rotation: docs/provenance.md.

Keys never reach a log line or ``repr``: the signer shows its key id (first 16 hex digits of
SHA-256 of the raw public key) only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.report import atomic_write_bytes
from config.schema import ProvenanceSettings

RECORD_FORMAT = "lfm-call-provenance/1"
RECORD_SUFFIX = ".provenance.json"
DEFAULT_KEY_NAME = "node-ed25519.pem"


class ProvenanceError(ValueError):
    """A key or a record cannot be used: unreadable, malformed, untrusted or not matching."""


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ProvenanceError(f"{what} is not valid base64") from None


def parse_private_key(text: str, what: str = "signing key") -> Ed25519PrivateKey:
    """PEM (PKCS#8) or base64 of the 32-byte raw private key."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError):
            raise ProvenanceError(f"{what}: not a readable unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ProvenanceError(f"{what}: the PEM key is not an Ed25519 key")
        return key
    raw = _unb64(text, what)
    if len(raw) != 32:
        raise ProvenanceError(f"{what}: an Ed25519 private key has 32 bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def parse_public_key(text: str, what: str = "public key") -> Ed25519PublicKey:
    """PEM (SubjectPublicKeyInfo) or base64 of the 32-byte raw public key."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError:
            raise ProvenanceError(f"{what}: not a readable PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ProvenanceError(f"{what}: the PEM key is not an Ed25519 key")
        return key
    raw = _unb64(text, what)
    if len(raw) != 32:
        raise ProvenanceError(f"{what}: an Ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key(spec: str) -> Ed25519PublicKey:
    """A public key given as a file path (PEM or base64 inside) or inline (PEM or base64)."""
    path = Path(spec)
    if not spec.strip().startswith("-----BEGIN") and len(spec) < 4096 and path.is_file():
        try:
            return parse_public_key(path.read_text(encoding="utf-8"), str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ProvenanceError(f"{path}: cannot read public key: {exc}") from None
    return parse_public_key(spec)


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def default_key_path() -> Path:
    from agent.model_choice import cache_dir

    return cache_dir() / "provenance" / DEFAULT_KEY_NAME


@dataclass(frozen=True)
class NodeSigner:
    """This node's Ed25519 signing key. ``repr`` shows the key id only."""

    private_key: Ed25519PrivateKey = field(repr=False)
    source: str  # where it came from (a path, or "provenance.signing_secret")

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    def __repr__(self) -> str:
        return f"NodeSigner(key_id={self.key_id}, source={self.source})"

    @classmethod
    def generate(cls) -> NodeSigner:
        return cls(Ed25519PrivateKey.generate(), "generated")

    @classmethod
    def from_settings(cls, settings: ProvenanceSettings, create: bool = True) -> NodeSigner:
        """``signing_secret`` (inline), else ``signing_key_file``, else the node's default key file,
        created (0600) on first use when ``create``."""
        if settings.signing_secret:
            return cls(parse_private_key(settings.signing_secret, "provenance.signing_secret"),
                       "provenance.signing_secret")
        path = Path(settings.signing_key_file).expanduser() if settings.signing_key_file else default_key_path()
        if not path.is_file():
            if settings.signing_key_file or not create:
                raise ProvenanceError(f"{path}: signing key file not found (provenance.signing_key_file)")
            return cls._create(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProvenanceError(f"{path}: cannot read signing key: {exc}") from None
        return cls(parse_private_key(text, str(path)), str(path))

    @classmethod
    def _create(cls, path: Path) -> NodeSigner:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return cls(parse_private_key(path.read_text(encoding="utf-8"), str(path)), str(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        return cls(key, str(path))

    def sign(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its ``signature`` (over the canonical JSON of everything else)."""
        body = {k: v for k, v in record.items() if k != "signature"}
        signature = self.private_key.sign(canonical_json(body))
        return {**body, "signature": {"algorithm": "Ed25519", "key_id": self.key_id,
                                      "public_key": _b64(raw_public(self.public_key)), "value": _b64(signature)}}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_path_for(recording: Path) -> Path:
    return recording.with_name(recording.stem + RECORD_SUFFIX)


def build_record(*, recording: Path, call_id: str, model: str, node_name: str, node_id: int,
                 sample_rate: int, agent_channel: int, utterances: Sequence[dict[str, Any]],
                 watermark: dict[str, Any], created_at: str | None = None) -> dict[str, Any]:
    """The unsigned record of a call whose stereo recording is ``recording`` (already written)."""
    return {
        "format": RECORD_FORMAT,
        "created_at": created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "call_id": call_id,
        "node": {"name": node_name or socket.gethostname(), "id": node_id},
        "model": model,
        "synthetic_speech": "agent channel: AI-generated speech (EU AI Act Art. 50)",
        "recording": {"file": recording.name, "sha256": file_sha256(recording), "bytes": recording.stat().st_size,
                      "sample_rate": sample_rate, "channels": 2, "agent_channel": agent_channel},
        "watermark": watermark,
        "utterances": list(utterances),
    }


def write_record(recording: Path, record: dict[str, Any], signer: NodeSigner) -> Path:
    signed = signer.sign(record)
    path = record_path_for(recording)
    atomic_write_bytes(path, json.dumps(signed, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return path


@dataclass
class RecordCheck:
    ok: bool
    problems: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)
    recording: Path | None = None
    key_id: str = ""


def _need(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind):
        raise ProvenanceError(f"{where}: missing or malformed field {key!r}")
    return obj[key]


def load_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise ProvenanceError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProvenanceError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise ProvenanceError(f"{path}: not a {RECORD_FORMAT} record")
    for key, kind in (("recording", dict), ("signature", dict), ("utterances", list), ("call_id", str)):
        _need(data, key, kind, str(path))
    for key in ("algorithm", "public_key", "value"):
        _need(data["signature"], key, str, f"{path}: signature")
    _need(data["recording"], "file", str, f"{path}: recording")
    _need(data["recording"], "sha256", str, f"{path}: recording")
    return data


def verify_record(path: Path, trusted: Iterable[Ed25519PublicKey]) -> RecordCheck:
    """Check one record offline (see the module comment); raises ProvenanceError on malformed input."""
    record = load_record(path)
    check = RecordCheck(ok=True, record=record)
    sig = record["signature"]
    if sig["algorithm"] != "Ed25519":
        raise ProvenanceError(f"{path}: unsupported signature algorithm {sig['algorithm']!r}")
    signer = parse_public_key(sig["public_key"], f"{path}: signature public key")
    check.key_id = key_id(signer)
    if raw_public(signer) not in {raw_public(k) for k in trusted}:
        check.problems.append(f"signed by key {check.key_id}, which is not a trusted key")
    body = {k: v for k, v in record.items() if k != "signature"}
    try:
        signer.verify(_unb64(sig["value"], f"{path}: signature"), canonical_json(body))
    except InvalidSignature:
        check.problems.append("the signature does not match the record (record changed, or another key)")
    name = record["recording"]["file"]
    if Path(name).name != name or name in ("", ".", ".."):
        raise ProvenanceError(f"{path}: recording file name {name!r} must be a plain file name")
    recording = path.parent / name
    check.recording = recording
    if not recording.is_file():
        check.problems.append(f"recording {recording} not found")
    elif file_sha256(recording) != record["recording"]["sha256"]:
        check.problems.append(f"recording {recording.name} does not match its recorded SHA-256 (changed)")
    check.ok = not check.problems
    return check
