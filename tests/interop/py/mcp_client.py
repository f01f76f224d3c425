"""MCP client on the official MCP Python SDK (`mcp.client.Client`), the agent in
front of ciba-gate in tests/mcp_sdk_interop.rs.

    python mcp_client.py --url URL [--mode 2026-07-28|legacy|auto]
                         [--variants default,progress,elicit] [--max-rounds N]
                         [--elicit-wait-ms N]

For each variant, a fresh client lists the tools and calls list_deployments,
deploy_service (approval) and delete_repository (denied):
  default   call_tool with no options; no elicitation callback (so the client
            declares no elicitation capability)
  progress  call_tool with a progress_callback
  elicit    an elicitation callback, which accepts the gateway's form after
            --elicit-wait-ms (default 1500: the person approves on the phone,
            then answers the form)
A deploy_service result that says approval_pending is called again identically
(every 300 ms, up to --max-rounds calls). Every result is the SDK's own typed,
validated model for the negotiated revision; a validation failure is an error.

Prints ONE JSON object: {runs: [{variant, protocolVersion, tools, calls,
errors, rounds, pending, progress, elicitations}]}.
"""

import argparse
import asyncio
import json
import sys

import mcp_types as types
from mcp.client import Client

parser = argparse.ArgumentParser()
parser.add_argument("--url", required=True)
parser.add_argument("--mode", default="2026-07-28")
parser.add_argument("--variants", default="default,progress,elicit")
parser.add_argument("--max-rounds", type=int, default=60)
parser.add_argument("--elicit-wait-ms", type=int, default=1500)
opts = parser.parse_args()


def describe(err):
    return f"{type(err).__name__}: {err}"


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def pending(result):
    return (result.meta or {}).get("ciba-gate/reason") == "approval_pending"


async def run(variant):
    out = {
        "variant": variant,
        "protocolVersion": None,
        "tools": [],
        "calls": {},
        "errors": {},
        "rounds": 0,
        "pending": None,
        "progress": [],
        "elicitations": [],
    }

    async def elicit(context, params):
        out["elicitations"].append(getattr(params, "message", None))
        await asyncio.sleep(opts.elicit_wait_ms / 1000)
        return types.ElicitResult(action="accept", content={})

    async def progress(p, total, message):
        out["progress"].append({"progress": p, "message": message})

    kwargs = {"mode": opts.mode, "read_timeout_seconds": 60}
    if variant == "elicit":
        kwargs["elicitation_callback"] = elicit
    try:
        async with Client(opts.url, **kwargs) as client:
            out["protocolVersion"] = client.protocol_version
            listed = await client.list_tools()
            out["tools"] = [t.name for t in listed.tools]

            async def call(name, args, **extra):
                try:
                    out["calls"][name] = dump(await client.call_tool(name, args, **extra))
                except Exception as e:  # noqa: BLE001 - reported to the test
                    out["errors"][name] = describe(e)

            await call("list_deployments", {})
            extra = {"progress_callback": progress} if variant == "progress" else {}
            args = {"service": "payments", "env": "prod"}
            try:
                while True:
                    out["rounds"] += 1
                    res = await client.call_tool("deploy_service", args, **extra)
                    if not pending(res) or out["rounds"] >= opts.max_rounds:
                        break
                    if out["pending"] is None:
                        out["pending"] = dump(res)
                    await asyncio.sleep(0.3)
                out["calls"]["deploy_service"] = dump(res)
            except Exception as e:  # noqa: BLE001
                out["errors"]["deploy_service"] = describe(e)
            await call("delete_repository", {"repo": "core"})
    except Exception as e:  # noqa: BLE001
        out["errors"]["connect"] = describe(e)
    return out


async def main():
    report = {"runs": []}
    for v in opts.variants.split(","):
        report["runs"].append(await run(v))
    sys.stdout.write(json.dumps(report) + "\n")


asyncio.run(main())
