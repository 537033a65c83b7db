#!/usr/bin/env python3
"""Open the gateway's live dashboard in real headless Chromium and report what a person would
see: console errors and uncaught exceptions, when the first frame was drawn, whether the numbers
move, and a screenshot.

Speaks the Chrome DevTools Protocol over --remote-debugging-pipe (fd 3 in, fd 4 out,
NUL-terminated JSON), so it needs nothing beyond the standard library and Chromium.

    dashboard_check.py URL --screenshot OUT.png [--frames 4] [--timeout 60]

Prints one JSON object on stdout; exits 0 when it could look (the caller judges what it saw).
"""

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

PROBE = """JSON.stringify({
  frames: window.switchyard ? window.switchyard.frames : 0,
  firstRenderMs: window.switchyard ? window.switchyard.firstRenderMs : null,
  status: document.getElementById('status').textContent,
  rps: document.getElementById('total-rps').textContent,
  routeRows: document.querySelectorAll('#routes tr').length - 1,
  endpointRows: document.querySelectorAll('#endpoints tr').length - 1,
  routes: document.getElementById('routes').innerText,
})"""


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("dashboard_check: no chromium on PATH (Debian package `chromium`)")


class Browser:
    def __init__(self, profile):
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def fds():
            # Via fds out of the way first: either pipe end may itself be 3 or 4.
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)
            r, w = os.dup2(r, 100), os.dup2(w, 101)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [
                chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                "--remote-debugging-pipe", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--window-size=1400,1700",
                f"--user-data-dir={profile}", "about:blank",
            ],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open("/tmp/chr.err", "w"),
            # The pipes go to fds 3 and 4 in preexec_fn; close_fds would then close them.
            close_fds=False, preexec_fn=fds,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf = b""
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_chrome, json.dumps(msg).encode() + b"\0")
        want = self.next_id
        while True:
            m = self.read()
            if m.get("id") == want:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def read(self):
        while b"\0" not in self.buf:
            chunk = os.read(self.from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def close(self):
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def problems(events):
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            out.append(f"log: {entry.get('text')} {entry.get('url', '')}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--frames", type=int, default=4, help="new frames to watch after the first")
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()

    profile = tempfile.mkdtemp(prefix="switchyard-chromium-")
    b = Browser(profile)
    try:
        target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            b.send(domain + ".enable", session=session)
        b.send("Page.navigate", {"url": args.url}, session=session)
        deadline = time.monotonic() + args.timeout
        samples = []
        first_frames = None
        while time.monotonic() < deadline:
            r = b.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
            value = r.get("result", {}).get("value")
            if value:
                s = json.loads(value)
                if s["frames"]:
                    if not samples or samples[-1]["frames"] != s["frames"]:
                        samples.append(s)
                    if first_frames is None:
                        first_frames = s["frames"]
                    # The stream replays the kept history first; watch new frames arrive.
                    if s["frames"] - first_frames >= args.frames:
                        break
            time.sleep(0.25)
        shot = b.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        with open(args.screenshot, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        last = samples[-1] if samples else {}
        print(json.dumps({
            "problems": problems(b.events),
            "first_render_ms": samples[0]["firstRenderMs"] if samples else None,
            "frames_seen": (last.get("frames", 0) - first_frames) if first_frames else 0,
            "rps_values": sorted({s["rps"] for s in samples}),
            "status": last.get("status"),
            "route_rows": last.get("routeRows", 0),
            "endpoint_rows": last.get("endpointRows", 0),
            "routes_text": last.get("routes", ""),
            "screenshot": args.screenshot,
        }))
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
