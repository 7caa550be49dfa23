"""authgate down behind real nginx: the client gets a clean 503 with Retry-After, never a 500, and
the app never sees the request (fail closed)."""

from __future__ import annotations

from collections.abc import Callable

import aiohttp
import pytest

from tests.e2e.support import Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def nginx_without_authgate(start_stack: Callable[..., Stack], nginx_bin: str) -> Stack:
    stack = start_stack("nginx-down", nginx_bin)
    authgate = next(service for service in stack.services if service.name == "authgate")
    authgate.stop()
    return stack


async def test_nginx_answers_503_when_authgate_is_down(
    nginx_without_authgate: Stack, http: aiohttp.ClientSession
) -> None:
    """With authgate stopped, a protected page is a 503 to retry, and so is a bypass page: nginx
    cannot know the rule without asking authgate."""
    stack = nginx_without_authgate
    for path in ("/", "/public/page"):
        async with http.get(
            f"http://127.0.0.1:{stack.port}{path}", headers={"Host": f"localhost:{stack.port}"}
        ) as response:
            body = await response.text()
            assert response.status == 503, body
            assert response.headers["Retry-After"] == "5"
            assert "the sign-in service is not answering" in body
            assert "Remote-User" not in body  # the demo app echoes identity headers: it was not reached
