"""What every HTTP transport shares: one keep-alive ``requests`` session, a call that
maps the network's and HTTP's failures onto ``channels.errors``, and the answer's JSON.

Mapping, for every HTTP provider alike (a provider's own error bodies are its module's
business):

- connect timeout, refused or reset connection → ``ProviderUnavailable`` (nothing left);
- read timeout (the request left, no answer came) → ``OutcomeUnknown``: never resent blindly;
- 429 → ``RateLimited`` with the ``Retry-After`` wait (1 s when absent);
- 5xx → ``ProviderUnavailable`` with the status.

4xx and 2xx are returned for the provider module to read.
"""

from __future__ import annotations

from typing import Any

import requests

from channels.errors import OutcomeUnknown, ProviderUnavailable, RateLimited

CONNECT_TIMEOUT = 5.0
"""Longest wait for a connection, in seconds (the read timeout is the channel's ``timeout``)."""


class HttpClient:
    """A session to one provider. ``provider`` names it in errors; ``timeout`` is the
    longest wait for an answer, in seconds."""

    def __init__(self, provider: str, base_url: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        self.provider = provider
        self.timeout = timeout
        self.session = requests.Session()
        # Proxy variables (HTTPS_PROXY, NO_PROXY) are read once, here, instead of on
        # every request with ~/.netrc along with them (3% of a sending worker's time).
        self.session.proxies.update(requests.utils.get_environ_proxies(base_url))
        self.session.trust_env = False
        self.session.headers.update(headers or {})

    def call(self, method: str, url: str, **request: Any) -> requests.Response:
        """The provider's answer to one request, 2xx or 4xx; the failures above raised."""
        try:
            response = self.session.request(method, url, timeout=(min(self.timeout, CONNECT_TIMEOUT), self.timeout), **request)
        except requests.ConnectTimeout as exc:
            raise ProviderUnavailable(f"connect timeout: {exc}", provider=self.provider) from exc
        except requests.ReadTimeout as exc:
            raise OutcomeUnknown(f"no answer within {self.timeout:g} s", provider=self.provider) from exc
        except requests.ConnectionError as exc:
            raise ProviderUnavailable(f"connection failed: {exc}", provider=self.provider) from exc
        if response.status_code == 429:
            raise RateLimited(detail(response), retry_after=retry_after(response), provider=self.provider, status=429)
        if response.status_code >= 500:
            raise ProviderUnavailable(detail(response), provider=self.provider, status=response.status_code)
        return response

    def close(self) -> None:
        self.session.close()


def document(response: requests.Response) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def detail(response: requests.Response) -> str:
    """What the provider said, for an error's ``detail`` (at most 300 characters)."""
    body = document(response)
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body.get("status_text") or body)[:300]
    return response.text[:300] or response.reason


def retry_after(response: requests.Response) -> float:
    """``Retry-After`` in seconds (1 when absent or not a number)."""
    try:
        return max(float(response.headers.get("Retry-After", "1")), 0.0)
    except ValueError:
        return 1.0
