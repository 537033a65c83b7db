#!/usr/bin/env python3
"""A fleet of fixed-capacity replicas for the tail-latency scenario (issue 20): each replica
serves at most `--slots` requests at once, each for `--service-ms` (times its slow factor), and
queues the rest, the way a model server with a batch limit does. Every reply is a small OpenAI
chat completion, so `switchyard bench --no-stream` counts it.

A request whose client closes the connection is dropped, queued or running, as vLLM aborts a
request whose client went away. All replicas run in this one asyncio process (the load is ~220 req/s: a few % of a core). On
start it prints `listening on 127.0.0.1:PORT` per replica. Faults, on any replica's port:
  POST /_fault {"slow_factor": 10}      this replica's service time ×10 (1 restores it)
  POST /_fault {"crash_for_ms": 15000}  close the listener and every connection, back after that
  GET /_stats                           arrivals per replica: [[replica, t_monotonic], ...]
Arrival times are this process's monotonic clock; `GET /_clock` reads it, so a driver can line
its fault times up with them.

Usage: slots_origin.py [--replicas 8] [--slots 4] [--service-ms 100]
"""

import argparse
import asyncio
import json
import time

REPLY = json.dumps({
    "id": "x", "object": "chat.completion", "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()


class Replica:
    def __init__(self, index, fleet, args):
        self.index = index
        self.fleet = fleet
        self.slots = asyncio.Semaphore(args.slots)
        self.service = args.service_ms / 1000.0
        self.slow = 1.0
        self.server = None
        self.port = 0
        self.writers = set()

    async def start(self):
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def crash(self, ms):
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await asyncio.sleep(ms / 1000.0)
        await self.start()

    async def serve(self, reader, writer):
        self.writers.add(writer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v.strip())
                body = await reader.readexactly(length) if length else b""
                # Like a model server, drop a request whose client went away (a proxy's per-try
                # timeout), queued or running, rather than spend a slot on it.
                work = asyncio.ensure_future(self.handle(method, path, body))
                gone = asyncio.ensure_future(reader.read(1))
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():
                    work.cancel()
                    break
                gone.cancel()
                try:
                    await gone  # let the cancelled read let go of the reader
                except asyncio.CancelledError:
                    pass
                status, reply = work.result()
                writer.write(b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n" % (status, len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def handle(self, method, path, body):
        if path == "/_fault":
            f = json.loads(body or b"{}")
            if "slow_factor" in f:
                self.slow = float(f["slow_factor"])
            if f.get("crash_for_ms"):
                asyncio.get_running_loop().call_soon(
                    lambda: asyncio.ensure_future(self.crash(f["crash_for_ms"])))
            return 200, b"{}"
        if path == "/_stats":
            return 200, json.dumps(self.fleet.arrivals).encode()
        if path == "/_clock":
            return 200, json.dumps(time.monotonic()).encode()
        if path == "/health":
            return 200, b"{}"
        self.fleet.arrivals.append((self.index, time.monotonic()))
        async with self.slots:
            await asyncio.sleep(self.service * self.slow)
        return 200, REPLY


class Fleet:
    def __init__(self):
        self.arrivals = []


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--service-ms", type=float, default=100.0)
    args = ap.parse_args()
    fleet = Fleet()
    replicas = [Replica(i, fleet, args) for i in range(args.replicas)]
    for r in replicas:
        await r.start()
        print(f"listening on 127.0.0.1:{r.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
