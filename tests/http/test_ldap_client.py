"""The bonsai adapter against a real slapd: empty passwords, ambiguity, reconnection, timeouts."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator

import bonsai
import pytest

from gateway.config import LdapConfig, parse_config
from gateway.directory.client import LdapDirectory
from gateway.errors import DirectoryLoginFailed, DirectoryUnavailable
from tests import slapd as ldap


@pytest.fixture
def directory() -> Iterator[ldap.Slapd]:
    server = ldap.launch_or_skip()
    yield server
    server.cleanup()


def config_for(server: ldap.Slapd, **overrides: object) -> LdapConfig:
    cfg = parse_config({"authentication_backend": {"ldap": ldap.ldap_section(server, **overrides)}})
    assert cfg.authentication_backend.ldap is not None
    return cfg.authentication_backend.ldap


@pytest.fixture
async def client(directory: ldap.Slapd) -> AsyncIterator[LdapDirectory]:
    adapter = LdapDirectory(config_for(directory))
    yield adapter
    await adapter.close()


async def test_an_empty_password_bind_would_succeed_so_it_is_refused_first(
    directory: ldap.Slapd, client: LdapDirectory
) -> None:
    """slapd accepts a simple bind with alice's DN and no password (an unauthenticated bind);
    the adapter refuses an empty password before it ever binds."""
    raw = bonsai.LDAPClient(directory.url)
    raw.set_credentials("SIMPLE", user=f"uid=alice,ou=people,{ldap.BASE_DN}", password="")
    connection = await raw.connect(is_async=True, timeout=5)
    connection.close()

    with pytest.raises(DirectoryLoginFailed, match="empty password"):
        await client.authenticate("alice", "")


async def test_two_entries_refuse_the_login(client: LdapDirectory) -> None:
    """dave@example.test matches dave and dave2: refused even with a right password for one of them."""
    for password in (ldap.PASSWORDS["dave"], ldap.PASSWORDS["dave2"]):
        with pytest.raises(DirectoryLoginFailed, match="more than one"):
            await client.authenticate("dave@example.test", password)
    assert (await client.authenticate("dave2", ldap.PASSWORDS["dave2"])).username == "dave2"


async def test_lookup_confirms_the_stable_id(client: LdapDirectory) -> None:
    """A re-check finds the user by name and accepts the entry only with the same stable id."""
    alice = await client.authenticate("alice", ldap.PASSWORDS["alice"])

    assert await client.lookup("alice", alice.external_id) == alice
    assert await client.lookup("alice", "another-entry's-id") is None
    assert await client.lookup("nobody", alice.external_id) is None


async def test_pooled_connections_reconnect_after_a_restart(
    directory: ldap.Slapd, client: LdapDirectory
) -> None:
    """After slapd restarts, the dead pooled connection is replaced without an error to the caller."""
    alice = await client.authenticate("alice", ldap.PASSWORDS["alice"])
    directory.stop()
    with pytest.raises(DirectoryUnavailable):
        await client.lookup("alice", alice.external_id)
    directory.start()

    assert await client.lookup("alice", alice.external_id) == alice


async def test_a_hung_server_ends_in_directory_unavailable(directory: ldap.Slapd) -> None:
    """A stopped (SIGSTOP) slapd gives DirectoryUnavailable after the timeout, for search and bind."""
    adapter = LdapDirectory(config_for(directory, timeout="1s"))
    alice = await adapter.authenticate("alice", ldap.PASSWORDS["alice"])
    directory.pause()
    try:
        with pytest.raises(DirectoryUnavailable, match="no answer within 1s"):
            await adapter.lookup("alice", alice.external_id)
        with pytest.raises(DirectoryUnavailable):
            await adapter.authenticate("alice", ldap.PASSWORDS["alice"])
    finally:
        directory.resume()
    assert await adapter.lookup("alice", alice.external_id) == alice
    await adapter.close()


async def test_a_wrong_service_password_is_reported_as_unavailable(directory: ldap.Slapd) -> None:
    """A refused service bind is the operator's problem, said as such, never "wrong user password"."""
    adapter = LdapDirectory(config_for(directory, bind_password="not the service password"))

    with pytest.raises(DirectoryUnavailable, match="service account"):
        await adapter.authenticate("alice", ldap.PASSWORDS["alice"])
    await adapter.close()


async def test_concurrent_sign_ins_share_a_pool_of_one(directory: ldap.Slapd) -> None:
    """With pool_size 1, eight sign-ins at once wait their turn and all succeed (no deadlock, no leak)."""
    adapter = LdapDirectory(config_for(directory, pool_size=1))
    users = ["alice", "bob", "dave", "dave2"] * 2

    entries = await asyncio.gather(*(adapter.authenticate(u, ldap.PASSWORDS[u]) for u in users))

    assert [e.username for e in entries] == users
    assert len(adapter._idle) == 1  # one service connection, kept for the next call
    await adapter.close()


@pytest.mark.parametrize("how", ["ldaps", "starttls"])
async def test_tls_verified_with_ca_file(directory: ldap.Slapd, how: str) -> None:
    """ldaps:// and ldap:// + StartTLS verify slapd's certificate against ca_file and work."""
    url = directory.ldaps_url if how == "ldaps" else directory.url
    adapter = LdapDirectory(config_for(directory, url=url, start_tls=True, ca_file=directory.ca_file))

    assert (await adapter.authenticate("alice", ldap.PASSWORDS["alice"])).username == "alice"
    await adapter.close()


@pytest.mark.parametrize("how", ["ldaps", "starttls"])
async def test_tls_with_an_unknown_certificate_is_refused(directory: ldap.Slapd, how: str) -> None:
    """Without the CA (system CAs only), slapd's self-signed certificate is refused: no password is sent."""
    url = directory.ldaps_url if how == "ldaps" else directory.url
    adapter = LdapDirectory(config_for(directory, url=url, start_tls=True))

    with pytest.raises(DirectoryUnavailable):
        await adapter.authenticate("alice", ldap.PASSWORDS["alice"])
    await adapter.close()
    # When the handshake fails, bonsai leaves the socket pair of its TLS set-up thread to the
    # garbage collector (which closes them): collect here, so the warning is not blamed on a later test.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_tls_skip_verify_accepts_any_certificate(directory: ldap.Slapd) -> None:
    """tls_skip_verify (testing only; config check warns) connects without checking the certificate.

    Run in a process of its own: libldap keeps TLS state per process, and the tests above (that
    demand a verified certificate) would leak into it. One authgate process has one TLS setting.
    """
    script = (
        "import asyncio, sys\n"
        "from gateway.config import parse_config\n"
        "from gateway.directory.client import LdapDirectory\n"
        "from tests import slapd as ldap\n"
        "server = ldap.Slapd(root=None, port=0)\n"  # only for ldap_section's shape
        "section = {**ldap.ldap_section(server), 'url': sys.argv[1], 'tls_skip_verify': True}\n"
        "cfg = parse_config({'authentication_backend': {'ldap': section}}).authentication_backend.ldap\n"
        "async def main():\n"
        "    adapter = LdapDirectory(cfg)\n"
        "    print((await adapter.authenticate('alice', sys.argv[2])).username)\n"
        "    await adapter.close()\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", script, directory.ldaps_url, ldap.PASSWORDS["alice"]],
        cwd=ldap.ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("alice")
