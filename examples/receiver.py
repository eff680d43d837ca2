#!/usr/bin/env python3
"""A webhook receiver for the quickstart: verifies X-Storno-Signature with nothing but the
Python standard library, the way a customer would.

    python3 examples/receiver.py [--port 9999] [--secret whsec_...]

It answers 200 {"verified": true} when the signature matches and 401 otherwise, and prints one
line per delivery.
"""

import argparse
import hashlib
import hmac
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEMO_SECRET = "whsec_9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--secret", default=DEMO_SECRET)
    args = parser.parse_args()
    secret = args.secret.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
            given = self.headers.get("X-Storno-Signature", "")
            ok = hmac.compare_digest(expected, given)
            print(f"{self.command} {self.path} event={self.headers.get('X-Webhook-Event')} "
                  f"bytes={len(body)} signature={'valid' if ok else 'INVALID'}", flush=True)
            reply = json.dumps({"verified": ok}).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"receiver listening on http://127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
