"""A throwaway OpenLDAP server for tests: Debian's slapd, unprivileged, on 127.0.0.1.

The configuration is generated (cn=config loaded with slapadd -n0 into a temporary
directory: an mdb database, the memberof, refint and ppolicy overlays), the directory
is filled with slapadd -n1, and slapd runs as `nobody` (tests run as root here) with
`-h ldap://127.0.0.1:PORT/`. The test's own changes (disable a user, remove a group)
go through `modify()`, which binds as the rootdn with ldapmodify, like an operator would.

It listens on ldap:// (with StartTLS) and ldaps://, with a throwaway self-signed certificate
for localhost and 127.0.0.1 (`ca_file`).

`olcAllows: bind_anon_dn` makes this slapd answer a bind with a DN and an empty password as
an anonymous bind that succeeds, as Active Directory and many servers do: authgate must refuse
empty passwords itself.

Directory layout (BASE = dc=example,dc=test):
  ou=people: alice, bob, carol (disabled by ppolicy lock),
             dave + dave2 (same mail: a login by that mail matches two entries),
             "o'brien" (hostile characters in the uid),
             cn=authgate (the service account authgate binds as)
  ou=groups: admins (alice, dave), devs (alice, bob) (groupOfNames; memberOf is kept by the memberof overlay)
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.directory.filters import escape_dn_value

ROOT = Path(__file__).resolve().parents[1]
SLAPD = "/usr/sbin/slapd"
SLAPADD = "/usr/sbin/slapadd"
LDAPMODIFY = "/usr/bin/ldapmodify"
MODULE_PATH = "/usr/lib/ldap"
SCHEMA_DIR = "/etc/ldap/schema"

BASE_DN = "dc=example,dc=test"
ROOT_DN = f"cn=admin,{BASE_DN}"
CONFIG_ROOT_DN = "cn=admin,cn=config"
ROOT_PASSWORD = "root-secret-for-tests"  # noqa: S105 - a throwaway test directory
SERVICE_DN = f"cn=authgate,ou=people,{BASE_DN}"
SERVICE_PASSWORD = "service-secret-for-tests"  # noqa: S105
PASSWORDS = {
    "alice": "alice-ldap-password",
    "bob": "bob-ldap-password",
    "carol": "carol-ldap-password",
    "dave": "dave-ldap-password",
    "dave2": "dave2-ldap-password",
    "o'brien": "obrien-ldap-password",
}
START_TIMEOUT = 15.0


def available() -> str | None:
    """Return why slapd cannot run here, or None when it can."""
    for tool in (SLAPD, SLAPADD, LDAPMODIFY):
        if not os.access(tool, os.X_OK):
            return f"{tool} not found; install slapd and ldap-utils (deploy/ensure-test-tools.sh)"
    return None


def ssha(password: str) -> str:
    """Hash a password the way slappasswd does ({SSHA}), so the LDIF holds no clear text."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()  # noqa: S324 - slapd's own scheme
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _config_ldif(data_dir: Path) -> str:
    schemas = "".join(
        f"\ninclude: file://{SCHEMA_DIR}/{name}.ldif" for name in ("core", "cosine", "nis", "inetorgperson")
    )
    return f"""dn: cn=config
objectClass: olcGlobal
cn: config
olcAllows: bind_anon_dn
olcTLSCertificateFile: {data_dir}/cert.pem
olcTLSCertificateKeyFile: {data_dir}/key.pem
olcPidFile: {data_dir}/slapd.pid

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: {MODULE_PATH}
olcModuleLoad: back_mdb
olcModuleLoad: memberof
olcModuleLoad: refint
olcModuleLoad: ppolicy

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema
{schemas}

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend
olcSizeLimit: 500

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcRootDN: {CONFIG_ROOT_DN}
olcRootPW: {ssha(ROOT_PASSWORD)}
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {BASE_DN}
olcRootDN: {ROOT_DN}
olcRootPW: {ssha(ROOT_PASSWORD)}
olcDbDirectory: {data_dir}/db
olcDbMaxSize: 67108864
olcDbIndex: objectClass eq
olcDbIndex: uid,mail,cn eq
olcDbIndex: entryUUID eq
olcAccess: {{0}}to attrs=userPassword by self write by anonymous auth by * none
olcAccess: {{1}}to attrs=pwdAccountLockedTime by * read
olcAccess: {{2}}to * by users read by * none

dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{0}}memberof
olcMemberOfRefInt: TRUE
olcMemberOfGroupOC: groupOfNames
olcMemberOfMemberAD: member
olcMemberOfMemberOfAD: memberOf

dn: olcOverlay={{1}}refint,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcRefintConfig
olcOverlay: {{1}}refint
olcRefintAttribute: member

dn: olcOverlay={{2}}ppolicy,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcPPolicyConfig
olcOverlay: {{2}}ppolicy
olcPPolicyDefault: cn=default,ou=policies,{BASE_DN}
"""


def _person(uid: str, *, mail: str, name: str, extra: str = "") -> str:
    return f"""dn: uid={_dn_value(uid)},ou=people,{BASE_DN}
objectClass: inetOrgPerson
uid: {uid}
cn: {name}
sn: {name.split()[-1]}
displayName: {name}
mail: {mail}
userPassword: {ssha(PASSWORDS[uid])}
{extra}
"""


def _dn_value(value: str) -> str:
    return escape_dn_value(value)


def _data_ldif() -> str:
    people = "\n".join(
        (
            _person("alice", mail="alice@example.test", name="Alice Liddell"),
            _person("bob", mail="bob@example.test", name="Bob Builder"),
            # Locked by the password policy overlay: a bind fails and authgate's rule refuses it.
            _person(
                "carol",
                mail="carol@example.test",
                name="Carol Locked",
                extra="pwdAccountLockedTime: 000001010000Z",
            ),
            _person("dave", mail="dave@example.test", name="Dave One"),
            _person("dave2", mail="dave@example.test", name="Dave Two"),
            _person("o'brien", mail="obrien@example.test", name="Pat O'Brien"),
        )
    )
    return f"""dn: {BASE_DN}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{BASE_DN}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{BASE_DN}
objectClass: organizationalUnit
ou: groups

dn: ou=policies,{BASE_DN}
objectClass: organizationalUnit
ou: policies

dn: cn=default,ou=policies,{BASE_DN}
objectClass: pwdPolicy
objectClass: device
cn: default
pwdAttribute: userPassword
pwdLockout: TRUE
pwdMaxFailure: 0
pwdAllowUserChange: TRUE

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: authgate
userPassword: {ssha(SERVICE_PASSWORD)}

{people}"""


def _groups_ldif() -> str:
    # Added over LDAP once slapd runs: slapadd bypasses the memberof overlay, ldapadd does not.
    return f"""dn: cn=admins,ou=groups,{BASE_DN}
objectClass: groupOfNames
cn: admins
member: uid=alice,ou=people,{BASE_DN}
member: uid=dave,ou=people,{BASE_DN}

dn: cn=devs,ou=groups,{BASE_DN}
objectClass: groupOfNames
cn: devs
member: uid=alice,ou=people,{BASE_DN}
member: uid=bob,ou=people,{BASE_DN}
"""


def _make_certificate(root: Path) -> None:
    """A throwaway self-signed EC certificate for localhost and 127.0.0.1 (cert.pem, key.pem)."""
    done = subprocess.run(  # noqa: S603
        [
            *(
                "/usr/bin/openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ),
            *("-nodes", "-days", "2", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem")),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl failed: {done.stderr}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_nobody() -> None:
    entry = pwd.getpwnam("nobody")
    os.setgid(entry.pw_gid)
    os.setgroups([])
    os.setuid(entry.pw_uid)


@dataclass
class Slapd:
    """A running throwaway slapd; `url` is ldap://127.0.0.1:PORT."""

    root: Path
    port: int = 0
    tls_port: int = 0  # ldaps://; the plain port also offers StartTLS
    process: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    @property
    def ca_file(self) -> str:
        """The server's self-signed certificate (for localhost and 127.0.0.1), its own CA."""
        return str(self.root / "cert.pem")

    @classmethod
    def create(cls) -> Slapd:
        """Generate the configuration and the directory (not started yet)."""
        root = Path(tempfile.mkdtemp(prefix="authgate-slapd-"))
        (root / "config").mkdir()
        (root / "db").mkdir()
        (root / "config.ldif").write_text(_config_ldif(root))
        (root / "data.ldif").write_text(_data_ldif())
        _make_certificate(root)
        demote = os.getuid() == 0
        preexec = _as_nobody if demote else None
        if demote:
            entry = pwd.getpwnam("nobody")
            owned = ("config", "db", "config.ldif", "data.ldif", "cert.pem", "key.pem")
            for path in (root, *(root / name for name in owned)):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        for command in (
            [SLAPADD, "-n0", "-F", str(root / "config"), "-l", str(root / "config.ldif")],
            [SLAPADD, "-n1", "-F", str(root / "config"), "-l", str(root / "data.ldif")],
        ):
            done = subprocess.run(  # noqa: S603 - fixed tools, our own arguments
                command, capture_output=True, text=True, preexec_fn=preexec, timeout=30, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
        return cls(root=root, port=_free_port(), tls_port=_free_port())

    @classmethod
    def launch(cls) -> Slapd:
        """Create, start and fill the directory (groups go in over LDAP, so memberOf is kept)."""
        server = cls.create()
        try:
            server.start()
            server.modify(_groups_ldif(), add=True)
        except BaseException:
            server.cleanup()
            raise
        return server

    def start(self) -> None:
        """Start slapd (on the same port as before after a stop) and wait until it answers."""
        preexec = _as_nobody if os.getuid() == 0 else None
        log = (self.root / "slapd.log").open("ab")
        self.process = subprocess.Popen(  # noqa: S603
            [SLAPD, "-h", f"{self.url}/ {self.ldaps_url}/", "-F", str(self.root / "config"), "-d", "0"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"slapd exited with {self.process.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"slapd did not answer on port {self.port}: {self.log_tail()}")

    def stop(self) -> None:
        """Stop slapd (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def pause(self) -> None:
        """Freeze slapd (SIGSTOP): it accepts TCP connections but never answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        # The signal is delivered asynchronously: wait until the kernel reports it stopped ("T"),
        # or a request sent right after could still be answered.
        deadline = time.monotonic() + START_TIMEOUT
        stat = Path(f"/proc/{self.process.pid}/stat")
        while stat.read_text().rpartition(")")[2].split()[0] != "T":
            if time.monotonic() > deadline:
                raise RuntimeError("slapd did not stop on SIGSTOP")
            time.sleep(0.01)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def modify(self, ldif: str, *, add: bool = False, config: bool = False) -> None:
        """Apply an LDIF change as the rootdn (ldapmodify), as an operator would; `config`: to
        cn=config, as the config database's rootdn."""
        bind = [CONFIG_ROOT_DN, ROOT_PASSWORD] if config else [ROOT_DN, ROOT_PASSWORD]
        done = subprocess.run(  # noqa: S603
            [LDAPMODIFY, *(["-a"] if add else []), "-x", "-H", self.url, "-D", bind[0], "-w", bind[1]],
            input=ldif,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ldapmodify failed: {done.stderr}")

    def disable(self, uid: str) -> None:
        """Lock an account the OpenLDAP way (ppolicy's pwdAccountLockedTime)."""
        self.modify(
            f"dn: uid={_dn_value(uid)},ou=people,{BASE_DN}\nchangetype: modify\n"
            "replace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"
        )

    def remove_from_group(self, uid: str, group: str) -> None:
        self.modify(
            f"dn: cn={group},ou=groups,{BASE_DN}\nchangetype: modify\n"
            f"delete: member\nmember: uid={_dn_value(uid)},ou=people,{BASE_DN}\n"
        )

    def log_tail(self) -> str:
        try:
            return (self.root / "slapd.log").read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def launch_or_skip() -> Slapd:
    """Start a throwaway slapd; skip when slapd is not installed (fail under CI=true)."""
    import pytest

    missing = available()
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    return Slapd.launch()


def ldap_section(server: Slapd, **overrides: object) -> dict[str, object]:
    """The authentication_backend.ldap configuration for this server (plain LDAP on loopback)."""
    section: dict[str, object] = {
        "implementation": "openldap",
        "url": server.url,
        "start_tls": False,
        "bind_dn": SERVICE_DN,
        "bind_password": SERVICE_PASSWORD,
        "base_dn": BASE_DN,
        "users_dn": "ou=people",
        "groups_dn": "ou=groups",
        "timeout": "2s",
        "refresh_interval": "30s",
    }
    section.update(overrides)
    return section


def set_password_as_root(server: Slapd, uid: str, password: str) -> None:
    """Change a password the way an operator would (ldappasswd as the rootdn)."""
    done = subprocess.run(  # noqa: S603
        [
            "/usr/bin/ldappasswd",
            "-x",
            "-H",
            server.url,
            "-D",
            ROOT_DN,
            "-w",
            ROOT_PASSWORD,
            "-s",
            password,
            f"uid={_dn_value(uid)},ou=people,{BASE_DN}",
        ],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ldappasswd failed: {done.stderr}")
