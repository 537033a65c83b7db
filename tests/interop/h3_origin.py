"""An HTTP/3 origin (aioquic) for the interop tests: Switchyard's `protocol: http3` pools send
to it. Prints its UDP port on the first line, then serves until killed.

usage: h3_origin.py CERTFILE KEYFILE
  GET /sse?n=N   N server-sent events, 50 ms apart
  anything else  JSON: method, path, the request headers, the body length, "h3"
"""

import asyncio
import json
import sys
from urllib.parse import parse_qs, urlparse

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Origin(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.requests = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if isinstance(ev, HeadersReceived):
                self.requests[ev.stream_id] = {
                    "headers": {k.decode(): v.decode() for k, v in ev.headers},
                    "body": 0,
                }
                if ev.stream_ended:
                    self.answer(ev.stream_id)
            elif isinstance(ev, DataReceived):
                req = self.requests.get(ev.stream_id)
                if req is None:
                    continue
                req["body"] += len(ev.data)
                if ev.stream_ended:
                    self.answer(ev.stream_id)

    def answer(self, sid):
        req = self.requests.pop(sid)
        path = req["headers"].get(":path", "/")
        url = urlparse(path)
        if url.path == "/sse":
            n = int(parse_qs(url.query).get("n", ["5"])[0])
            asyncio.ensure_future(self.sse(sid, n))
            return
        body = json.dumps(
            {
                "method": req["headers"].get(":method"),
                "path": path,
                "headers": {k: v for k, v in req["headers"].items() if not k.startswith(":")},
                "authority": req["headers"].get(":authority"),
                "body_len": req["body"],
                "version": "h3",
            }
        ).encode()
        self.h3.send_headers(
            sid,
            [
                (b":status", b"200"),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        )
        self.h3.send_data(sid, body, end_stream=True)
        self.transmit()

    async def sse(self, sid, n):
        self.h3.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/event-stream")])
        self.transmit()
        for i in range(n):
            if i:
                await asyncio.sleep(0.05)
            self.h3.send_data(sid, f'data: {{"i":{i}}}\n\n'.encode(), end_stream=i == n - 1)
            self.transmit()


async def main(cert, key):
    config = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN)
    config.load_cert_chain(cert, key)
    server = await serve("127.0.0.1", 0, configuration=config, create_protocol=Origin)
    port = server._transport.get_extra_info("sockname")[1]
    print(port, flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
