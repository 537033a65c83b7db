#!/usr/bin/env python3
"""A lossy, delayed link between two network namespaces, made in user space because this
kernel has no netem (`sch_netem` is not built): each namespace gets a TUN device, and this
process carries IP packets between the two, dropping each with probability `--loss` and
holding the rest `--delay-ms` (one way). TCP and UDP (QUIC) cross the same link and meet the
same loss, packet by packet, as they would under `tc qdisc add ... netem delay D loss L`.

usage: lossy_link.py NS_A ADDR_A NS_B ADDR_B --delay-ms 10 --loss 0.02 [--seed 1]
  (ADDR_x like 10.77.0.1/24; both namespaces must exist.) Prints "up" once the link carries
  packets, then runs until killed; on SIGTERM prints a JSON line with packets carried/dropped.
"""

import argparse
import asyncio
import ctypes
import fcntl
import json
import os
import random
import signal
import struct
import subprocess
import sys

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

libc = ctypes.CDLL(None, use_errno=True)


def enter(netns):
    fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            sys.exit(f"setns {netns}: errno {ctypes.get_errno()}")
    finally:
        os.close(fd)


def open_tun(netns, name, addr):
    """Create TUN `name` inside `netns` (the device lives while the fd is open)."""
    enter(netns)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    run = lambda *c: subprocess.run(["ip", "netns", "exec", netns] + list(c), check=True)  # noqa: E731
    run("ip", "addr", "add", addr, "dev", name)
    run("ip", "link", "set", name, "up")
    run("ip", "link", "set", "lo", "up")
    return fd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ns_a")
    ap.add_argument("addr_a")
    ap.add_argument("ns_b")
    ap.add_argument("addr_b")
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--loss", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    a = open_tun(args.ns_a, "sylink", args.addr_a)
    b = open_tun(args.ns_b, "sylink", args.addr_b)
    delay = args.delay_ms / 1000
    stats = {"carried": 0, "dropped": 0}
    loop = asyncio.new_event_loop()

    def write(fd, pkt):
        try:
            os.write(fd, pkt)
        except OSError:
            pass

    def pump(src, dst):
        while True:
            try:
                pkt = os.read(src, 65536)
            except BlockingIOError:
                return
            if rng.random() < args.loss:
                stats["dropped"] += 1
                continue
            stats["carried"] += 1
            loop.call_later(delay, write, dst, pkt)

    loop.add_reader(a, pump, a, b)
    loop.add_reader(b, pump, b, a)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(None))
    print("up", flush=True)
    loop.run_until_complete(stop)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
