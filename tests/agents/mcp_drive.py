"""Drives orca through MCP with the official Python SDK (`mcp` on PyPI), for tests/agents.rs.

    mcp_drive.py stdio ORCA_BIN TOKEN ROLE PROJECT IMAGE   (orca mcp, env ORCA_API)
    mcp_drive.py http URL TOKEN ROLE PROJECT IMAGE         (streamable HTTP at URL)

ROLE is what the token is: `deployer` runs the whole scenario (list tools, deploy, poll status
until running, logs, scale, deploy v2, roll back, doctor); `viewer` checks that only read-only
tools are listed and that calling deploy/stop anyway is refused. Exits non-zero on failure.
"""

import asyncio
import json
import os
import sys
import time

from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

READ_ONLY = {"status", "logs", "doctor", "events", "cluster_info", "webhooks_list"}
DEPLOYER = READ_ONLY | {"secrets_list", "deploy", "scale", "stop", "promote", "rollback"}


def text(result):
    return "".join(c.text for c in result.content if getattr(c, "type", "") == "text")


async def call(client, name, args, expect_error=False):
    result = await client.call_tool(name, args)
    body = text(result)
    if result.is_error != expect_error:
        raise AssertionError(f"{name}({args}) is_error={result.is_error}: {body}")
    print(f"ok: {name} -> {body[:120]!r}", flush=True)
    return body


async def service(client, project, name):
    status = json.loads(await call(client, "status", {"project": project}))
    return next((s for s in status["services"] if s["name"] == name), None)


async def wait(client, project, name, what, cond, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        s = await service(client, project, name)
        if s is not None and cond(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {name} to be {what}: {s}")
        await asyncio.sleep(0.5)


def spec(project, image, version, replicas=1):
    return {
        "services": [
            {
                "name": "web",
                "project": project,
                "image": image,
                "replicas": replicas,
                "port": 8080,
                "health": "/healthz",
                "env": {"VERSION": version, "LOG_REQUESTS": "1"},
            }
        ]
    }


async def deployer(client, project, image):
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == DEPLOYER, sorted(tools)
    assert tools["status"].annotations.read_only_hint is True
    assert tools["deploy"].annotations.read_only_hint is False
    assert tools["deploy"].annotations.destructive_hint is True
    assert tools["rollback"].annotations.idempotent_hint is False
    assert "services" in tools["deploy"].input_schema["properties"], tools["deploy"].input_schema
    assert tools["scale"].input_schema["required"] == ["name", "replicas"] or set(
        tools["scale"].input_schema["required"]
    ) == {"name", "replicas"}
    resources = {r.uri for r in (await client.list_resources()).resources}
    assert "orca://schema/service.toml" in resources, resources
    schema = await client.read_resource("orca://schema/service.toml")
    assert "ServiceSpec" in schema.contents[0].text or "replicas" in schema.contents[0].text

    deployed = json.loads(await call(client, "deploy", spec(project, image, "v1")))
    assert deployed["deployed"] == ["web"], deployed
    s = await wait(client, project, "web", "running", lambda s: s["status"] == "running")
    first = s["revision"]
    logs = await call(client, "logs", {"name": "web", "project": project, "tail": 20})
    assert "listening" in logs, logs
    await call(client, "scale", {"name": "web", "project": project, "replicas": 2})
    await wait(client, project, "web", "2 ready", lambda s: s["ready_replicas"] == 2)
    await call(client, "deploy", spec(project, image, "v2", replicas=2))
    s = await wait(
        client, project, "web", "on v2",
        lambda s: s["revision"] > first and s["status"] == "running"
        and all(i["revision"] == s["revision"] for i in s["instances"]),
    )
    rolled = json.loads(await call(client, "rollback", {"name": "web", "project": project}))
    assert rolled.get("restored_revision") == first or rolled.get("abandoned_revision"), rolled
    await wait(client, project, "web", "rolled back", lambda s: s["status"] == "running"
               and s["revision"] == rolled.get("revision", s["revision"]))
    # What happened, as the agent reads it: the deploys, the scale and the rollback with its
    # revision, all filtered to this service; `after` returns only what is newer.
    events = json.loads(await call(client, "events", {"service": f"{project}/web", "limit": 1000}))
    kinds = [e["kind"] for e in events["events"]]
    assert kinds.count("deploy") >= 2, kinds
    assert "service.scaled" in kinds, kinds
    assert "rollout.rollback_requested" in kinds or "rollout.rolled_back" in kinds, kinds
    assert all(e["project"] == project and e["service"] == "web" for e in events["events"])
    last = events["events"][-1]["seq"]
    newer = json.loads(await call(client, "events", {"service": f"{project}/web", "after": last}))
    assert all(e["seq"] > last for e in newer["events"]), newer
    err = await call(client, "events", {"since": "ten minutes"}, expect_error=True)
    assert "since" in err, err
    diagnosis = json.loads(await call(client, "doctor", {"name": "web", "project": project}))
    assert diagnosis["verdict"] in ("healthy", "unhealthy"), diagnosis
    # Bad input is a tool error naming the field, and the session goes on.
    err = await call(client, "scale", {"name": "web", "project": project}, expect_error=True)
    assert "replicas" in err, err
    err = await call(client, "logs", {"name": "nosuch", "project": project}, expect_error=True)
    assert "nosuch" in err, err
    await call(client, "stop", {"name": "web", "project": project})


async def viewer(client, project, image):
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == READ_ONLY, sorted(tools)
    for t in tools.values():
        assert t.annotations.read_only_hint is True, t
    await call(client, "status", {})
    json.loads(await call(client, "events", {"limit": 5}))
    err = await call(client, "deploy", spec(project, image, "v1"), expect_error=True)
    assert "viewer" in err and "403" in err, err
    err = await call(client, "stop", {"name": "web", "project": project}, expect_error=True)
    assert "viewer" in err and "403" in err, err


async def main():
    mode, target, token, role, project, image = sys.argv[1:7]
    if mode == "stdio":
        env = {"ORCA_API": os.environ["ORCA_API"], "ORCA_TOKEN": token,
               "ORCA_HOME": os.environ.get("ORCA_HOME", "/nonexistent")}
        server = StdioServerParameters(command=target, args=["mcp"], env=env)
        async with Client(server) as client:
            await (deployer if role == "deployer" else viewer)(client, project, image)
    else:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with http:
            async with Client(streamable_http_client(target, http_client=http)) as client:
                await (deployer if role == "deployer" else viewer)(client, project, image)
    print(f"PASS {mode} {role}", flush=True)


asyncio.run(main())
