"""``POST /api/v1/sync`` and ``GET /api/v1/sync``: "send everything now", with its progress.

POST starts a sync (or joins the one running) and answers with its progress; ``?wait=SECONDS``
(at most 300) waits for it to finish first. 200 when done, 202 while running, 409 when the
uplink is disabled. The ``edgehub sync`` command drives the same endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from edgehub.uplink.service import Uplink

DISABLED = "the cloud uplink is disabled: set [cloud] enabled = true and url in edgehub.toml"


def sync_routes(uplink: Uplink | None) -> list[web.AbstractRouteDef]:
    async def post(request: web.Request) -> web.Response:
        if uplink is None:
            return web.json_response({"error": DISABLED}, status=409)
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            return web.json_response({"error": "wait: must be a number of seconds"}, status=400)
        if not 0 <= wait <= 300:
            return web.json_response({"error": "wait: must be 0 to 300 seconds"}, status=400)
        job = await uplink.sync()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await job.done.wait()
                    # Give the reconciliation that follows a moment to report.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(min(5.0, wait)):
                            while job.reconcile is None:  # noqa: ASYNC110 - set once, by the reply
                                await asyncio.sleep(0.05)
        return web.json_response(uplink.sync_progress(), status=200 if job.done.is_set() else 202)

    async def get(request: web.Request) -> web.Response:
        if uplink is None:
            return web.json_response({"error": DISABLED}, status=409)
        return web.json_response(uplink.sync_progress())

    return [web.post("/api/v1/sync", post), web.get("/api/v1/sync", get)]
