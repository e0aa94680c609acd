"""Exit 0 when a Kafka broker answers a metadata request, 1 otherwise (stdlib only).

Used by scripts/services before any virtualenv exists, so it speaks the wire protocol itself:
one Metadata v0 request (api key 3) and a check that the reply names at least one broker.
"""

from __future__ import annotations

import socket
import struct
import sys


def metadata_ok(host: str, port: int, timeout_s: float = 2.0) -> bool:
    client_id = b"detector-ready"
    body = struct.pack(">hhih", 3, 0, 7, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _read(sock, 4)
            (size,) = struct.unpack(">i", header)
            reply = _read(sock, size)
    except OSError:
        return False
    correlation_id, brokers = struct.unpack(">ii", reply[:8])
    return correlation_id == 7 and brokers >= 1


def _read(sock: socket.socket, n: int) -> bytes:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise OSError("connection closed")
        chunks += chunk
    return chunks


if __name__ == "__main__":
    first = sys.argv[1].split(",")[0] if len(sys.argv) > 1 else "127.0.0.1:9092"
    host, _, port = first.rpartition(":")
    sys.exit(0 if metadata_ok(host or "127.0.0.1", int(port)) else 1)
