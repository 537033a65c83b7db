"""libzmq (pyzmq) on the other end of Switchyard's KV-event sockets, shaped like vLLM's
ZmqEventPublisher: multipart [topic, seq (8 bytes big-endian), msgpack batch], replay on a ROUTER.

  publish TOKENS_JSON: bind an XPUB (wire-compatible with vLLM's PUB; it shows the subscription)
      and a ROUTER on ephemeral ports, print "pub tcp://.. replay tcp://..", wait for one
      subscriber, then publish seq 0 (a BlockStored of TOKENS_JSON's tokens, positional-array
      shape, bytes hashes) to the replay buffer only and seq 1 (a BlockRemoved of an unknown
      hash) on the socket, so the subscriber must replay seq 0; serve replays until killed.
  subscribe PUB REPLAY: connect a SUB and print "subscribed"; print "event TAG" for the first
      message's events; then ask REPLAY (a DEALER) from seq 0 and print "replayed N".
"""

import json
import sys
import time

import msgpack
import zmq

END = (-1).to_bytes(8, "big", signed=True)


def publish(tokens_path):
    tokens = json.load(open(tokens_path))
    ctx = zmq.Context()
    pub = ctx.socket(zmq.XPUB)
    router = ctx.socket(zmq.ROUTER)
    p = pub.bind_to_random_port("tcp://127.0.0.1")
    r = router.bind_to_random_port("tcp://127.0.0.1")
    print(f"pub tcp://127.0.0.1:{p} replay tcp://127.0.0.1:{r}", flush=True)
    pub.recv()  # the subscription
    blocks = len(tokens) // 16
    stored = ["BlockStored", [bytes([i]) * 32 for i in range(blocks)], None, tokens[: blocks * 16], 16,
              None, "GPU", None]
    removed = ["BlockRemoved", [b"\xee" * 32], "GPU"]
    buffer = [(0, msgpack.packb([time.time(), [stored], 0])),
              (1, msgpack.packb([time.time(), [removed], 0]))]
    pub.send_multipart([b"", (1).to_bytes(8, "big"), buffer[1][1]])
    deadline = time.time() + 30
    while time.time() < deadline:
        if router.poll(100):
            ident, _, start = router.recv_multipart()
            for seq, payload in buffer:
                if seq >= int.from_bytes(start, "big"):
                    router.send_multipart([ident, b"", seq.to_bytes(8, "big"), payload])
            router.send_multipart([ident, b"", END, b""])


def subscribe(pub_addr, replay_addr):
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub_addr)
    print("subscribed", flush=True)
    if not sub.poll(20000):
        sys.exit("no message")
    topic, seq, payload = sub.recv_multipart()
    assert len(seq) == 8, seq
    ts, events, rank = msgpack.unpackb(payload)
    for e in events:
        print("event", e[0] if isinstance(e, list) else e["type"], flush=True)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(replay_addr)
    dealer.send_multipart([b"", (0).to_bytes(8, "big")])
    n = 0
    while True:
        if not dealer.poll(5000):
            sys.exit("replay stalled")
        _, seq, payload = dealer.recv_multipart()
        if seq == END:
            break
        msgpack.unpackb(payload)
        n += 1
    print("replayed", n, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "publish":
        publish(sys.argv[2])
    else:
        subscribe(sys.argv[2], sys.argv[3])
