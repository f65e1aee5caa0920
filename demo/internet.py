# Copyright: torexit.hardening contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The demo's "internet": answers every TCP connection with the address it came from, then reads until the peer closes.

Runs in the demo's internet container, where a local route makes the whole range
198.19.0.0/16 this container's own and an nftables redirect sends every TCP port to
the one port this program listens on. The first line it sends starts with the source
address of the connection: the relay that opened it, i.e. the exit that carried a Tor stream
(the drill reports which exit carried what). A client that starts with "upload N"
gets "received N" once N bytes arrived. Nothing is logged or kept. Stops by
itself after --lifetime seconds.
"""

import argparse
import asyncio


async def handle(reader, writer):
    try:
        peer = writer.get_extra_info("peername")
        # a banner line of ordinary size: an answer this small (under ~30 bytes of
        # data) would not count as a reply for the guard, as no real server's would
        writer.write(("%s demo internet: every address of 198.19.0.0/16 answers on every port\n"
                      % (peer[0] if peer else "?")).encode())
        await writer.drain()
        # "upload N\n" first: read N bytes, then say how many arrived (the drill's proof
        # that an upload went through); anything else is read and dropped until EOF
        data = await reader.read(65536)
        if data.startswith(b"upload ") and b"\n" in data:
            head, rest = data.split(b"\n", 1)
            want, got = int(head.split()[1]), len(rest)
            while got < want:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                got += len(chunk)
            writer.write(b"received %d\n" % got)
            await writer.drain()
        while data:
            data = await reader.read(65536)
    except (ConnectionError, OSError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def main(port, lifetime):
    server = await asyncio.start_server(handle, "0.0.0.0", port, backlog=4096)
    async with server:
        await asyncio.sleep(lifetime)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7)
    parser.add_argument("--lifetime", type=int, default=3600)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.lifetime))
