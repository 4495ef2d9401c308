"""molt's example app: a small HTTP server whose answer names its release.

It listens on $HOST:$PORT, answers every GET with one line naming the app, the release and
the environment, and stops cleanly on SIGTERM. The standard library only: nothing to install.
"""

import os
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP = os.environ.get("MOLT_APP", "hello")
RELEASE = os.environ.get("MOLT_RELEASE", "dev")
ENV = os.environ.get("MOLT_ENV", "local")
GREETING = os.environ.get("GREETING", "hello")
# Test hook: answer health checks with 500 after this many requests (0 = never).
FAIL_AFTER = int(os.environ.get("FAIL_AFTER", "0"))
# Test hook: take this long to answer each request other than health checks (simulated work).
DELAY_MS = int(os.environ.get("DELAY_MS", "0"))
# Test hook: answer this percentage of requests other than health checks with 500, spread
# evenly (25: every fourth one), while health checks keep passing.
FAIL_SHARE = int(os.environ.get("FAIL_SHARE", "0"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body are two writes: without TCP_NODELAY the body waits for the
    # peer's delayed ACK of the head (40 ms on Linux) on every keep-alive request.
    disable_nagle_algorithm = True
    served = 0
    answered = 0

    def do_GET(self):
        Handler.served += 1
        broken = FAIL_AFTER and Handler.served > FAIL_AFTER
        status = 500 if broken and self.path == "/healthz" else 200
        if FAIL_SHARE and self.path != "/healthz":
            Handler.answered += 1
            n = Handler.answered
            if (n * FAIL_SHARE) // 100 != ((n - 1) * FAIL_SHARE) // 100:
                status = 500
        if DELAY_MS and self.path != "/healthz":
            time.sleep(DELAY_MS / 1000)
        body = f"{GREETING} from {APP} {RELEASE} ({ENV})\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(os.environ.get("PORT", "8000"))
    host = os.environ.get("HOST", "127.0.0.1")
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"{APP} {RELEASE} listening on {host}:{port}", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
