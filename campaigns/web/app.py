"""The ASGI application of ``loyalcast web``: :func:`create_app`.

Errors are answered in the caller's terms: member pages in HTML (``members``), the rest
as JSON ``{"error": ..., "field": ...}`` with a 4xx status, ``field`` naming the path
parameter, query key, header or body part at fault. Access is logged per request by
route template (``/u/{token}``), never by path, so tokens and addresses stay out of the
logs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import Engine, text
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from campaigns import __version__, metrics
from campaigns.config.settings import Settings
from campaigns.store.engine import make_engine
from campaigns.web.console import Console
from campaigns.web.ingest import EventWriter
from campaigns.web.members import MemberPages
from campaigns.web.webhooks import Webhooks, problem

log = logging.getLogger("campaigns.web.access")


class AccessLog:
    """One log line and one metric per request, by route template (a plain ASGI
    middleware: Starlette's ``BaseHTTPMiddleware`` cost a quarter of a request's CPU)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            template = getattr(scope.get("route"), "path", "(no route)")
            elapsed = time.perf_counter() - started
            metrics.web_request(template, status, elapsed)
            if log.isEnabledFor(logging.INFO):
                ms = round(elapsed * 1000, 1)
                extra = {"method": scope["method"], "route": template, "status": status, "ms": ms}
                log.info("%s %s %d %.1f ms", scope["method"], template, status, ms, extra=extra)


def create_app(settings: Settings, *, engine: Engine | None = None) -> FastAPI:
    """The web service over ``settings``' database (its own engine unless given one)."""
    pool_size = settings.database.pool_size
    engine = engine or make_engine(settings.database_url, pool_size=pool_size)
    settings.link_signer()  # a missing or short key fails at start, not on a member's click
    writer = EventWriter(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Pages and bot commands run in anyio's thread pool (40 threads by default), each
        # holding a database connection: more threads than the pool keeps open makes
        # SQLAlchemy open and close a connection per request (a new server process
        # each time on PostgreSQL, 5x slower pages). So threads wait for the pool instead.
        # (One connection stays for the event writer.)
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(pool_size - 1, 1)
        await writer.start()
        try:
            yield
        finally:
            await writer.stop()

    app = FastAPI(
        title="loyalcast web",
        version=__version__,
        description="Members' unsubscribe and preference pages, providers' webhooks, and the marketers' console.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(MemberPages(settings, engine).router)
    app.include_router(Webhooks(settings, engine, writer).router)
    app.include_router(Console(settings, engine).router)

    @app.get("/healthz", tags=["operations"], summary="Liveness and the database's readiness")
    def healthz() -> Response:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any failure to reach it is "not ready"
            return JSONResponse({"status": "unavailable", "database": exc.__class__.__name__}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok", "version": __version__})

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        return Response(await run_in_threadpool(generate_latest, REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return problem(400, str(first.get("msg", "invalid request")), where or None)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), None, dict(exc.headers or {}))

    app.add_middleware(AccessLog)
    return app
