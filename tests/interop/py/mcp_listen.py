"""An agent on the official MCP Python SDK at 2026-07-28 that listens for changes
(`Client.listen`, the `subscriptions/listen` stream) on one gateway endpoint; used by
tests/multiplex.rs.

    python mcp_listen.py --url URL [--resource URI]... [--call NAME]... [--wait-s N]

Opens a listen stream for tool list changes and the updates of each --resource, then
calls each --call tool (no arguments) and collects the stream's events until a tool
list change and an update of every resource the gateway honored have come, or N
seconds (default 10) have passed.

Prints ONE JSON object: {honored, events: [{kind, uri?}], calls: {name: result},
errors}.
"""

import argparse
import asyncio
import json
import sys

from mcp.client import Client
from mcp.shared.subscriptions import ResourceUpdated, ToolsListChanged

parser = argparse.ArgumentParser()
parser.add_argument("--url", required=True)
parser.add_argument("--resource", action="append", default=[])
parser.add_argument("--call", action="append", default=[])
parser.add_argument("--wait-s", type=float, default=10)
opts = parser.parse_args()


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def describe(event):
    if isinstance(event, ToolsListChanged):
        return {"kind": "tools"}
    if isinstance(event, ResourceUpdated):
        return {"kind": "updated", "uri": str(event.uri)}
    return {"kind": type(event).__name__}


async def main():
    out = {"honored": None, "events": [], "calls": {}, "errors": {}}

    def done():
        kinds = [e["kind"] for e in out["events"]]
        heard = {e.get("uri") for e in out["events"]}
        honored = (out["honored"] or {}).get("resourceSubscriptions", [])
        return "tools" in kinds and all(r in heard for r in honored)

    try:
        async with Client(opts.url, mode="2026-07-28", read_timeout_seconds=30) as client:
            listening = client.listen(tools_list_changed=True, resource_subscriptions=opts.resource)
            async with listening as sub:
                out["honored"] = dump(sub.honored)
                for name in opts.call:
                    out["calls"][name] = dump(await client.call_tool(name, {}))

                async def collect():
                    async for event in sub:
                        out["events"].append(describe(event))
                        if done():
                            return

                try:
                    await asyncio.wait_for(collect(), opts.wait_s)
                except asyncio.TimeoutError:
                    pass
    except Exception as e:  # noqa: BLE001 - reported to the test
        out["errors"]["listen"] = f"{type(e).__name__}: {e}"
    sys.stdout.write(json.dumps(out) + "\n")


asyncio.run(main())
