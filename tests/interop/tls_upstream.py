"""An HTTPS upstream on Python's `ssl` that requires a client certificate (mTLS).

Usage: tls_upstream.py CERT KEY CLIENT_CA. Serves on an ephemeral loopback port, prints
`PORT <n>`, and answers every GET with JSON: the path, the `x-forwarded-client-cert` header it
got, and the subject of the client certificate the connection presented. Exits when stdin
closes (the test dropping its handle).
"""

import http.server
import json
import ssl
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        peer = self.connection.getpeercert() or {}
        subject = ",".join(
            f"{k}={v}" for rdn in peer.get("subject", ()) for (k, v) in rdn
        )
        body = json.dumps(
            {
                "path": self.path,
                "xfcc": self.headers.get("x-forwarded-client-cert"),
                "peer_subject": subject,
                "upstream": "python-ssl",
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    cert, key, client_ca = sys.argv[1:4]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(client_ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
