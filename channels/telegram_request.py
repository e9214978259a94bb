"""python-telegram-bot's HTTP interface (``telegram.request.BaseRequest``) over aiohttp.

PTB ships one implementation, over httpx. Against the benchmark's Bot API sink one
``sendMessage`` cost ~0.63 ms of CPU in httpx (with httpcore and anyio) and ~0.20 ms in
aiohttp, and Telegram is the costliest channel to send on, so loyalcast gives its Bots
this one. PTB still builds the request and turns the status code and body into its
errors (``Forbidden``, ``BadRequest``, ``RetryAfter``, ...); this class only moves bytes:
it raises ``TimedOut`` when an answer is late and ``NetworkError`` when the connection
fails, as ``BaseRequest.do_request`` requires.

One instance belongs to one event loop (its session is opened on the loop of the first
request). Text only: file uploads are not implemented, since loyalcast sends none.
"""

from __future__ import annotations

import aiohttp
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

_DEFAULT = type(BaseRequest.DEFAULT_NONE)
"""The class of PTB's "not given, use the default" marker for timeouts."""


class AiohttpRequest(BaseRequest):
    """``read_timeout``, ``write_timeout``, ``connect_timeout`` and ``pool_timeout`` are
    seconds; ``pool_size`` is the most connections kept open to the Bot API."""

    def __init__(
        self,
        *,
        read_timeout: float = 5.0,
        write_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        pool_timeout: float = 1.0,
        pool_size: int = 4,
    ) -> None:
        self._read_timeout, self._write_timeout = read_timeout, write_timeout
        self._connect_timeout, self._pool_timeout = connect_timeout, pool_timeout
        self._pool_size = pool_size
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._pool_size),
                headers={"User-Agent": self.USER_AGENT},
            )

    async def shutdown(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: object = BaseRequest.DEFAULT_NONE,
        write_timeout: object = BaseRequest.DEFAULT_NONE,
        connect_timeout: object = BaseRequest.DEFAULT_NONE,
        pool_timeout: object = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        if request_data is not None and request_data.multipart_data:
            raise NetworkError("file uploads are not implemented by loyalcast's Telegram transport")
        await self.initialize()
        assert self._session is not None
        read = _given(read_timeout, self._read_timeout)
        write = _given(write_timeout, self._write_timeout)
        connect = _given(connect_timeout, self._connect_timeout)
        pool = _given(pool_timeout, self._pool_timeout)
        # aiohttp has no write timeout: a Bot API request is small enough to leave in
        # the socket's buffer at once, so writing is bounded by the total instead.
        timeout = aiohttp.ClientTimeout(
            total=_sum(pool, connect, write, read),
            connect=_sum(pool, connect),
            sock_connect=connect,
            sock_read=read,
        )
        try:
            async with self._session.request(
                method, url, data=request_data.json_parameters if request_data else None, timeout=timeout
            ) as response:
                return response.status, await response.read()
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
            raise TimedOut(f"no answer in time: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise NetworkError(f"aiohttp.{type(exc).__name__}: {exc}") from exc


def _given(value: object, default: float) -> float | None:
    if isinstance(value, _DEFAULT):
        return default
    return None if value is None else float(value)  # type: ignore[arg-type]  # PTB types its timeouts as object


def _sum(*seconds: float | None) -> float | None:
    """None (no limit) if any part has no limit."""
    known = [s for s in seconds if s is not None]
    return None if len(known) < len(seconds) else sum(known)
