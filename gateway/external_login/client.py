"""The HTTP adapter to providers, over aiohttp's client: every call has a timeout and a size bound.

Redirects are never followed (a provider's endpoints are where its discovery document says),
answers larger than MAX_RESPONSE_BYTES are refused before they are parsed, and nothing sent
or received (codes, tokens, secrets) is logged here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp

from gateway.external_login.errors import ProviderUnavailable

MAX_RESPONSE_BYTES = 512 * 1024
USER_AGENT = "authgate"  # GitHub's API refuses requests without a User-Agent


class ProviderHttp:
    """JSON over HTTP to identity providers through one shared aiohttp ClientSession."""

    def __init__(self, session: aiohttp.ClientSession, *, max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._session = session
        self._max_bytes = max_bytes

    async def get_json(self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float) -> Any:
        """GET url and return its JSON body; ProviderUnavailable unless the answer is a 2xx with JSON."""
        status, body = await self._request("GET", url, headers=headers, data=None, timeout=timeout)
        if not 200 <= status < 300:
            raise ProviderUnavailable(f"GET {_without_query(url)} answered {status}")
        return body

    async def post_form(
        self,
        url: str,
        form: Mapping[str, str],
        *,
        headers: Mapping[str, str] | None = None,
        basic_auth: tuple[str, str] | None = None,
        timeout: float,
    ) -> tuple[int, Any]:
        """POST a form and return (status, JSON body); the caller reads OAuth2 error answers itself."""
        sent = dict(headers or {})
        if basic_auth is not None:
            # RFC 6749 2.3.1: id and secret are form-encoded before they are joined and base64-encoded.
            pair = f"{quote(basic_auth[0], safe='')}:{quote(basic_auth[1], safe='')}"
            sent["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return await self._request("POST", url, headers=sent, data=dict(form), timeout=timeout)

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        data: dict[str, str] | None,
        timeout: float,
    ) -> tuple[int, Any]:
        sent = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        where = f"{method} {_without_query(url)}"
        try:
            async with self._session.request(
                method,
                url,
                headers=sent,
                data=data,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                body = bytearray()
                async for chunk in response.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise ProviderUnavailable(f"{where}: answer larger than {self._max_bytes} bytes")
                status = response.status
        except TimeoutError as exc:
            raise ProviderUnavailable(f"{where}: no answer within {timeout:g}s") from exc
        except aiohttp.ClientError as exc:
            raise ProviderUnavailable(f"{where}: {type(exc).__name__}") from exc
        try:
            return status, json.loads(bytes(body)) if body else None
        except ValueError as exc:
            raise ProviderUnavailable(f"{where} answered {status} with a body that is not JSON") from exc


def _without_query(url: str) -> str:
    return url.split("?", 1)[0]
