#!/usr/bin/env python3
"""A fault-injecting HTTP proxy for tests: sits in front of an S3 server on 127.0.0.1 and answers a
fraction of requests with faults instead of forwarding them.

  scripts/fault-proxy.py --upstream http://127.0.0.1:PORT [--error-rate 0.1] [--drop-rate 0.05]
                         [--stall-rate 0.02 --stall-secs 3] [--answer 403:AccessDenied]
                         [--ignore-conditions] [--seed 1]

Faults, drawn independently for each request:
  error  500 InternalError or 503 SlowDown (alternately), with S3's XML error body
  drop   the connection is closed, half the time before any answer, half the time mid-body
  stall  the answer is held back for --stall-secs, then forwarded
--answer STATUS:CODE answers every request with that S3 error (a permanent error, e.g.
403:AccessDenied or 301:PermanentRedirect). --ignore-conditions forwards every request without its
If-None-Match and If-Match headers: a store that ignores conditional writes.

Prints "listening on http://127.0.0.1:PORT" on stdout once ready. GET /__fault-proxy/stats answers
JSON counts: requests, faults by kind, and the prefixes of every ListObjectsV2 request.
Only binds 127.0.0.1.
"""
import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ERRORS = [(500, "InternalError", "We encountered an internal error. Please try again."),
          (503, "SlowDown", "Please reduce your request rate.")]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.faults = {"error": 0, "drop": 0, "stall": 0, "answer": 0}
        self.list_prefixes = []

    def snapshot(self):
        with self.lock:
            return {"requests": self.requests, "faults": dict(self.faults),
                    "list_prefixes": list(self.list_prefixes)}


def error_body(code, message, resource):
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f'<Message>{message}</Message><Resource>{resource}</Resource>'
            f'<RequestId>fault-proxy</RequestId></Error>').encode()


def make_handler(args, stats, rng, rng_lock):
    upstream = urllib.parse.urlparse(args.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def draw(self, rate):
            with rng_lock:
                return rng.random() < rate

        def send_error_xml(self, status, code, message, extra_headers=()):
            body = error_body(code, message, self.path)
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            for name, value in extra_headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def count(self, kind):
            with stats.lock:
                stats.faults[kind] += 1

        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path.startswith("/__fault-proxy/stats"):
                data = json.dumps(stats.snapshot()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            with stats.lock:
                stats.requests += 1
                if query.get("list-type") == ["2"]:
                    stats.list_prefixes.append(query.get("prefix", [""])[0])
            if args.answer:
                status, code = args.answer.split(":", 1)
                self.count("answer")
                headers = [("x-amz-bucket-region", "eu-west-3")] if status == "301" else []
                self.send_error_xml(int(status), code, "injected by fault-proxy", headers)
                return
            if self.draw(args.error_rate):
                self.count("error")
                with stats.lock:
                    status, code, message = ERRORS[stats.faults["error"] % 2]
                self.send_error_xml(status, code, message)
                return
            drop = self.draw(args.drop_rate)
            if drop and self.draw(0.5):
                self.count("drop")
                self.close_connection = True
                return
            if self.draw(args.stall_rate):
                self.count("stall")
                time.sleep(args.stall_secs)
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items()
                           if not (args.ignore_conditions
                                   and k.lower() in ("if-none-match", "if-match"))}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
            self.send_response(resp.status)
            for name, value in resp.getheaders():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if drop:
                self.count("drop")
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--error-rate", type=float, default=0.0)
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--stall-rate", type=float, default=0.0)
    p.add_argument("--stall-secs", type=float, default=3.0)
    p.add_argument("--answer", help="STATUS:CODE for every request, e.g. 403:AccessDenied")
    p.add_argument("--ignore-conditions", action="store_true",
                   help="forward writes without If-None-Match/If-Match, as a store that ignores them")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    stats = Stats()
    handler = make_handler(args, stats, random.Random(args.seed), threading.Lock())
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler)
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    print(json.dumps(stats.snapshot()["faults"]), file=sys.stderr)


if __name__ == "__main__":
    main()
