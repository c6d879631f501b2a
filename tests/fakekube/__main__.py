"""Run the fake API server standalone: ``python -m tests.fakekube --port 8001``."""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from .server import DEFAULT_TOKEN, FakeKubeServer


def main(argv: list[str] | None = None) -> int:
    """Serve until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakekube", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--token", default=DEFAULT_TOKEN, help="bearer token to require; empty accepts any request"
    )
    parser.add_argument("--kubeconfig", help="write a kubeconfig for the server to this path")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every resource request"
    )
    parser.add_argument(
        "--namespace-latency",
        type=float,
        default=None,
        help="seconds added to namespace requests (default: --latency)",
    )
    parser.add_argument("--namespace-deletion-delay", type=float, default=0.2)
    args = parser.parse_args(argv)

    per_resource = {} if args.namespace_latency is None else {"namespaces": args.namespace_latency}
    server = FakeKubeServer(
        host=args.host,
        port=args.port,
        token=args.token or None,
        namespace_deletion_delay=args.namespace_deletion_delay,
        latency=args.latency,
        latency_by_resource=per_resource,
    )
    server.start()
    print(f"fake Kubernetes API server on {server.url}", flush=True)
    if args.kubeconfig:
        print(f"kubeconfig: {server.write_kubeconfig(args.kubeconfig)}", flush=True)
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed explicitly: a shell starting this in the background ignores SIGINT,
    # and SIGTERM (from a benchmark harness) should stop it just as cleanly.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        stop.wait()
    finally:
        server.stop()
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
