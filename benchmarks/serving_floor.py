"""A server that does no work: the floor under any HTTP round trip on this machine (benchmarks/serving.py, V2).

    python benchmarks/serving_floor.py ANSWER_FILE     # prints its port, then answers every request with the file

It reads each request whole (head, then ``Content-Length`` bytes into one preallocated buffer, blocking
sockets, a thread per connection) and sends the same canned bytes back: a real agent's answer to the same
request, so a client parses exactly what it parses from the agent. No parsing, no model, no checks. What a
client measures against it is the client's own work plus the kernel's loopback transfer and wake-ups, a
share of any server's round trip that no server can remove.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

_BUFFER = 8 << 20


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            return int(value)
    return 0


def serve_connection(conn: socket.socket, answer: bytes) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(_BUFFER)
    view = memoryview(buf)
    n = 0
    with conn:
        while True:
            end = buf.find(b"\r\n\r\n", 0, n)
            while end < 0:
                got = conn.recv_into(view[n:])
                if not got:
                    return
                n += got
                end = buf.find(b"\r\n\r\n", 0, n)
            total = end + 4 + _content_length(bytes(buf[:end]))
            while n < total:
                got = conn.recv_into(view[n:])
                if not got:
                    return
                n += got
            conn.sendall(answer)
            buf[:n - total] = buf[total:n]
            n -= total


def main(answer_file: str) -> None:
    answer = Path(answer_file).read_bytes()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn, answer), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1])
