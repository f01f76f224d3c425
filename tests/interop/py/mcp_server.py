"""MCP tool server on the official MCP Python SDK (`MCPServer`, Streamable HTTP,
stateless), which speaks protocol revision 2026-07-28 and the older ones: the
upstream behind ciba-gate in tests/mcp_sdk_interop.rs.

    python mcp_server.py --port N --calls-log PATH --bodies-log PATH

--calls-log  every tool run, one JSON line {tool, args}
--bodies-log every POST body the server receives, one JSON line {body} (the text
             exactly as received), to show what the gateway forwarded
list_deployments also tells the subscriptions/listen streams open on the server that
its tool list changed.
Prints "READY <port>" once listening.
"""

import argparse
import json
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--calls-log", required=True)
parser.add_argument("--bodies-log", required=True)
opts = parser.parse_args()


def log(path, obj):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


server = MCPServer("interop-py-tools")


@server.tool(description="List the current deployments")
async def list_deployments(ctx: Context) -> str:
    log(opts.calls_log, {"tool": "list_deployments", "args": {}})
    # Heard on every open subscriptions/listen stream that asked for tool changes
    # (2026-07-28); an older connection has no such streams.
    try:
        await ctx.notify_tools_changed()
    except ValueError:
        pass
    return "deployments:\npayments prod v1.42.0"


@server.tool(description="Deploy a service to an environment")
def deploy_service(service: str, env: str) -> str:
    log(opts.calls_log, {"tool": "deploy_service", "args": {"service": service, "env": env}})
    return f"deployed {service} to {env}"


@server.tool(description="Delete a source repository")
def delete_repository(repo: str) -> str:
    log(opts.calls_log, {"tool": "delete_repository", "args": {"repo": repo}})
    return f"deleted {repo}"


app = server.streamable_http_app(stateless_http=True, host="127.0.0.1")


async def recording(scope, receive, send):
    """Logs each POST body as received, then hands the request to the SDK's app."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return await app(scope, receive, send)
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    log(opts.bodies_log, {"body": body.decode("utf-8", "replace")})
    sent = False

    async def replay():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return await app(scope, replay, send)


class Ready(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        print(f"READY {opts.port}", flush=True)


Ready(uvicorn.Config(recording, host="127.0.0.1", port=opts.port, log_level="warning")).run()
sys.exit(0)
