"""gRPC interop through Switchyard with the real grpcio stack.

Starts a grpcio server on an ephemeral loopback port and prints `PORT <n>`; then reads the
gateway address from stdin, runs unary, server-streaming, error-status, deadline and no-route
calls through the gateway, and prints one JSON object with the outcomes.
"""

import json
import sys
import time
from concurrent import futures

import grpc


def unary(request, context):
    return request


def server_stream(request, context):
    for i in range(int(request.decode())):
        yield f"msg{i}".encode()


def fail(request, context):
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "nope")


def slow(request, context):
    time.sleep(2)
    return request


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Echo", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"PORT {port}", flush=True)

    gateway = sys.stdin.readline().strip()
    out = {}
    with grpc.insecure_channel(gateway) as ch:
        out["unary"] = ch.unary_unary("/test.Echo/Unary")(b"hello", timeout=10).decode()
        out["stream"] = [m.decode() for m in ch.unary_stream("/test.Echo/Stream")(b"5", timeout=10)]
        for name, method in [("fail", "/test.Echo/Fail"), ("no_route", "/other.Svc/Method")]:
            try:
                ch.unary_unary(method)(b"x", timeout=10)
                out[name] = "OK"
            except grpc.RpcError as e:
                out[name] = e.code().name
                out[name + "_details"] = e.details()
        try:
            ch.unary_unary("/test.Echo/Slow")(b"x", timeout=0.3)
            out["deadline"] = "OK"
        except grpc.RpcError as e:
            out["deadline"] = e.code().name
    print(json.dumps(out), flush=True)
    server.stop(0)


if __name__ == "__main__":
    main()
