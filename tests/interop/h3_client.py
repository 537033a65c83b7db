"""HTTP/3 client (aioquic) for the interop tests: a streamed SSE response and a large upload
through Switchyard's HTTP/3 listener.

usage: h3_client.py HOST PORT CAFILE
Prints one JSON object: {"sse": {...}, "upload": {...}}.
"""

import asyncio
import json
import sys
import time

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiting = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        for ev in self.h3.handle_event(event):
            st = self.waiting.get(ev.stream_id)
            if st is None:
                continue
            if isinstance(ev, HeadersReceived):
                st["headers"] = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, DataReceived):
                if ev.data:
                    st["chunks"].append((time.monotonic(), ev.data))
            if getattr(ev, "stream_ended", False):
                st["done"].set_result(None)

    async def request(self, method, path, authority, body=b""):
        sid = self._quic.get_next_available_stream_id()
        st = {"headers": None, "chunks": [], "done": self._loop.create_future()}
        self.waiting[sid] = st
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        self.h3.send_headers(sid, headers, end_stream=not body)
        # In 64 KiB DATA frames, flushed as flow control allows.
        for off in range(0, len(body), 65536):
            last = off + 65536 >= len(body)
            self.h3.send_data(sid, body[off : off + 65536], end_stream=last)
            self.transmit()
            await asyncio.sleep(0)
        self.transmit()
        await asyncio.wait_for(st["done"], 30)
        return st


async def main(host, port, cafile):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.load_verify_locations(cafile)
    config.server_name = "localhost"
    authority = f"localhost:{port}"
    out = {}
    async with connect(host, port, configuration=config, create_protocol=Client) as client:
        sse = await client.request("GET", "/sse?n=5&ms=100", authority)
        text = b"".join(c for _, c in sse["chunks"]).decode()
        times = [t for t, _ in sse["chunks"]]
        out["sse"] = {
            "status": sse["headers"][":status"],
            "events": text.count("data: "),
            "chunks": len(sse["chunks"]),
            # Spread of arrival times: events forwarded as they come, not buffered to the end.
            "spread_ms": (times[-1] - times[0]) * 1000 if times else 0,
        }
        payload = bytes(i % 251 for i in range(2 * 1024 * 1024))
        up = await client.request("POST", "/upload", authority, payload)
        seen = json.loads(b"".join(c for _, c in up["chunks"]))
        out["upload"] = {
            "status": up["headers"][":status"],
            "sent": len(payload),
            "received": seen["body_len"],
            "via": seen["version"],
        }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
