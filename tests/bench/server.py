# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Servers of the lab's "internet" namespace: one asyncio process, one dual-stack
listener per port. Local routes make every address of 198.18.0.0/15 and
2001:db8::/33 local, so each listener answers for all of those hosts.

Protocol (client first): a 10-byte header `!IIH` = bytes the client uploads,
bytes to reply, path round trips to wait before replying; then the upload.
The server replies after the upload arrived, then waits for the client to close.
Without netem in the kernel, the round trips are emulated here (--rtt-ms).
Nothing is logged: the server keeps no record of who connected where.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
import lab  # noqa: E402

HDR = struct.Struct("!IIH")
MAX_BYTES = 1 << 20


class Conn(asyncio.Protocol):
    rtt = 0.0

    def __init__(self):
        self.t = None
        self.head = bytearray()
        self.need = None
        self.got = 0
        self.down = 0
        self.rtts = 0
        self.replied = False

    def connection_made(self, transport):
        self.t = transport

    def data_received(self, data):
        if self.need is None:
            self.head += data
            if len(self.head) < HDR.size:
                return
            up, down, rtts = HDR.unpack_from(self.head)
            self.need, self.down, self.rtts = min(up, MAX_BYTES), min(down, MAX_BYTES), min(rtts, 50)
            self.got = len(self.head) - HDR.size
            self.head = None
        else:
            self.got += len(data)
        if self.got >= self.need and not self.replied:
            self.replied = True
            delay = self.rtts * self.rtt
            if delay:
                asyncio.get_running_loop().call_later(delay, self.reply)
            else:
                self.reply()

    def reply(self):
        if not self.t.is_closing():
            self.t.write(b"\0" * self.down if self.down else b"")
            if not self.down:
                self.t.close()

    def eof_received(self):
        return False  # close our side too


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    args = ap.parse_args()
    Conn.rtt = args.rtt_ms / 1000.0
    loop = asyncio.get_running_loop()
    servers = []
    for port in lab.all_server_ports():
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        s.listen(16384)
        s.setblocking(False)
        servers.append(await loop.create_server(Conn, sock=s, backlog=16384))
    print("ready %d ports" % len(servers), flush=True)
    await asyncio.sleep(args.max_seconds)  # bounded: the server stops by itself


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
