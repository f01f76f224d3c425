#!/usr/bin/env python3
"""A deliberately naive MCP tool server for the attack tests, built on Python's
http.server: it never reads a body behind GET or DELETE (so unread bytes become the next
request on a kept-alive connection), reads POST bodies by Content-Length only, and parses
JSON with a chosen duplicate-key rule. Every request it parses is appended to a JSON-lines
log, which is what the tests compare with the gateway's evidence.

usage: naive_mcp_server.py LOG_FILE [last|first|strict]
prints "READY <port>" once listening on 127.0.0.1.
"""
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[1]
MODE = sys.argv[2] if len(sys.argv) > 2 else "last"
LOCK = threading.Lock()


def first_wins(pairs):
    out = {}
    for k, v in pairs:
        out.setdefault(k, v)
    return out


def strict(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key " + k)
        out[k] = v
    return out


def parse(body):
    if MODE == "first":
        return json.loads(body, object_pairs_hook=first_wins)
    if MODE == "strict":
        return json.loads(body, object_pairs_hook=strict)
    return json.loads(body)


def log(entry):
    with LOCK:
        with open(LOG, "a") as f:
            f.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", ctype="application/json"):
        self.send_response(status)
        if body:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        # Never reads a body: whatever follows the head is the next request.
        log({"method": "GET", "path": self.path})
        self.reply(200, b"[]", "application/json")

    def do_DELETE(self):
        log({"method": "DELETE", "path": self.path})
        self.reply(200)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        entry = {"method": "POST", "path": self.path, "body_len": length}
        try:
            msg = parse(body)
        except Exception as exc:  # the strict reader refuses what it cannot read one way
            entry["parse"] = "error: %s" % exc
            log(entry)
            self.reply(400, json.dumps({"error": "bad json"}).encode())
            return
        entry["parse"] = "ok"
        if isinstance(msg, dict):
            entry["rpc_method"] = msg.get("method")
            params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
            if msg.get("method") == "tools/call":
                entry["tool"] = params.get("name")
                entry["arguments"] = params.get("arguments")
            else:
                entry["fields"] = msg
        log(entry)
        if not isinstance(msg, dict) or "id" not in msg:
            self.reply(202)
            return
        if msg.get("method") == "tools/list":
            result = {"tools": [
                {"name": "list_deployments", "inputSchema": {"type": "object"}},
                {"name": "deploy_service", "inputSchema": {"type": "object"}},
                {"name": "delete_repository", "inputSchema": {"type": "object"}},
            ]}
        elif msg.get("method") == "tools/call":
            result = {"content": [{"type": "text", "text": "ran %s" % entry.get("tool")}],
                      "isError": False}
        else:
            result = {}
        self.reply(200, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode())


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print("READY %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
