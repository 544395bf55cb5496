"""Container health check for an lfm-call node (stdlib only; exit 0 healthy, 1 unhealthy).

Healthy means the server is up and answering: ``GET /healthz`` returns JSON with ``"ready": true``,
with status 200 (accepting calls) or 503 (full or draining: alive, but not taking new calls). Routing
decisions (ready / not ready) belong to the load balancer's own probes of /healthz, not to this check,
so that a full or draining node is never restarted for it. Port: ``LFMCALL_HTTP__PORT`` (8080).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORT = 8080
TIMEOUT_S = 4.0


def healthy(status: int, body: bytes) -> bool:
    """Whether a /healthz answer (status, body) shows a live server."""
    if status not in (200, 503):
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("ready") is True


def probe(port: int) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT_S) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def main() -> int:
    port = int(os.environ.get("LFMCALL_HTTP__PORT", DEFAULT_PORT))
    status, body = probe(port)
    ok = healthy(status, body)
    if not ok:
        print(f"lfm-call /healthz on port {port}: status {status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
