"""The container image: deploy/Containerfile builds, and the built image starts authgate as its user.

No container registry is reachable here, and of the OCI runtimes only runc works (crun refuses the
host's hybrid cgroup layout), so the test does what a registry would and runs the image twice:

1. The base image named in the Containerfile's FROM lines (debian:<suite>-slim) is bootstrapped from
   Debian's packages with mmdebstrap, slimmed the way Debian's official -slim images are, and
   committed with buildah under that name, in a private storage under the test cache (never the
   machine's own image store). The tarball and the storage are kept between runs.
2. `buildah build --isolation chroot` builds the Containerfile on it (RUN steps in a chroot, with
   the host's network; pip reaches PyPI, apt reaches Debian's mirror).
3. podman + runc runs the image as compose.yml's authgate service would (volume, file secrets,
   read-only root, no capabilities) and runs its HEALTHCHECK.
4. Without any runtime, the image is mounted and its entrypoint + command run in its root
   filesystem with the image's user, environment and working directory read from `buildah
   inspect`: in new mount and PID namespaces, root file system read-only, /data a host folder,
   the compose file's secrets under /run/secrets.

Everything listens on a free 127.0.0.1 port. docs/container.md says what this proves and what not.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import resource
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

from tests.e2e.support import ROOT, free_ports, http_ok, log_tail

pytestmark = pytest.mark.e2e

CONTAINERFILE = ROOT / "deploy" / "Containerfile"
COMPOSE = ROOT / "deploy" / "compose.yml"
IMAGE = "localhost/authgate-test:latest"
MIRROR = os.environ.get("AUTHGATE_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("AUTHGATE_TEST_DEBIAN_SECURITY", "http://deb.debian.org/debian-security")
RUNROOT = Path("/run/authgate-test/buildah")  # buildah's run state belongs on tmpfs, not in a cache
STORAGE_LIMIT = 4 << 30  # bytes of cached layers before the private storage is wiped
BOOTSTRAP_TIMEOUT = 900.0  # seconds: mmdebstrap on a loaded machine, from cold
BUILD_TIMEOUT = 1200.0  # seconds: the whole image build, from cold
START_TIMEOUT = 60.0  # seconds for authgate to answer /api/health inside the root filesystem
STOP_TIMEOUT = 20.0

# podman runs containers here only with runc (crun refuses this host's hybrid cgroup layout), the
# cgroupfs manager (no systemd), and no journald or systemd timers; and runc may not raise
# resource limits here, so containers get explicit ones below the host's hard limits.
PODMAN_HOST_OPTIONS = ("--runtime", "runc", "--cgroup-manager", "cgroupfs", "--events-backend", "file")
CONTAINER_LIMITS = {"nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC}

# What Debian's official -slim images leave out (debuerreotype's --slim): docs, man pages, locales.
SLIM_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/linda/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Run in fresh mount and PID namespaces by unshare: give the root filesystem what a runtime gives a
# container (a minimal /dev, /proc, tmpfs /tmp, the volume, /run with the secrets), make the image
# itself read-only (compose's read_only: true), then chroot as the image's user.
RUNTIME_SCRIPT = r"""
set -eu
root=$1 data=$2 run=$3
shift 3
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o mode=0755,nosuid,noexec tmpfs "$root/dev"
for node in null zero full random urandom tty; do
    touch "$root/dev/$node"
    mount --bind "/dev/$node" "$root/dev/$node"
done
ln -s /proc/self/fd "$root/dev/fd"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/tmp"
mount --bind "$data" "$root/data"
mount --bind "$run" "$root/run"
exec chroot "$@"
"""


def _missing(what: str) -> NoReturn:
    message = f"{what}; run `bash deploy/ensure-test-tools.sh` as root"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def base_image(containerfile: Path = CONTAINERFILE) -> str:
    """Return the one base image every stage of the Containerfile starts FROM."""
    stages: set[str] = set()
    bases: set[str] = set()
    for line in containerfile.read_text().splitlines():
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", line.strip(), re.IGNORECASE)
        if match:
            if match.group(1) not in stages:
                bases.add(match.group(1))
            if match.group(2):
                stages.add(match.group(2))
    assert len(bases) == 1, f"{containerfile} should build every stage on one base, found {sorted(bases)}"
    return bases.pop()


def _debian_suite(base: str) -> str:
    match = re.fullmatch(r"(?:docker\.io/library/|docker\.io/)?debian:([a-z]+)-slim", base)
    assert match, f"the test bootstraps debian:<suite>-slim bases only, not {base!r}"
    return match.group(1)


def _qualified(base: str) -> str:
    """Name the base as a registry would store it, which is how buildah resolves the short name."""
    return base if base.startswith("docker.io/") else f"docker.io/library/{base}"


def _cache_dir() -> Path:
    configured = os.environ.get("AUTHGATE_TEST_CACHE")
    if configured:
        return Path(configured) / "container"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "authgate-test" / "container"


def _ca_bundle() -> str | None:
    """Return the host's CA bundle, handed to pip in the build (needed behind TLS-intercepting egress)."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@dataclass(frozen=True)
class Store:
    """buildah and podman on a private storage root, so the machine's own images are never touched."""

    root: Path
    runroot: Path

    def _run(self, argv: list[str], timeout: float, check: bool) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done

    def buildah_command(self, *args: str) -> list[str]:
        base = ["buildah", "--root", str(self.root), "--runroot", str(self.runroot)]
        return [*base, "--storage-driver", "overlay", *args]

    def run(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run buildah."""
        return self._run(self.buildah_command(*args), timeout, check)

    def podman(
        self, *args: str, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run podman the way it works here (see PODMAN_HOST_OPTIONS)."""
        base = ["podman", "--root", str(self.root), "--runroot", str(self.runroot)]
        base += ["--tmpdir", str(self.runroot.parent / "libpod"), "--storage-driver", "overlay"]
        return self._run([*base, *PODMAN_HOST_OPTIONS, *args], timeout, check)

    def inspect_image(self, image: str) -> dict[str, Any] | None:
        done = self.run("inspect", "--type", "image", image, check=False)
        return json.loads(done.stdout) if done.returncode == 0 else None

    def remove_containers(self) -> None:
        """Remove working and runtime containers (and volumes) a killed run may have left behind."""
        self.run("rm", "--all", check=False)
        if shutil.which("podman"):
            self.podman("rm", "--all", "--force", check=False)
            self.podman("volume", "prune", "--force", check=False)

    def wipe(self) -> None:
        self.remove_containers()
        self.run("rmi", "--all", "--force", check=False, timeout=600)

    @contextlib.contextmanager
    def mounted(self, image: str) -> Iterator[Path]:
        """Create a working container from `image`, mount it, and always unmount and remove it."""
        name = f"authgate-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.run("from", "--pull=never", "--name", name, image)
        try:
            path = Path(self.run("mount", name).stdout.strip())
            try:
                yield path
            finally:
                self.run("umount", name, check=False)
        finally:
            self.run("rm", name, check=False)


def _bootstrap_recipe(base: str) -> list[str]:
    suite = _debian_suite(base)
    options = [f"--dpkgopt={option}" for option in SLIM_DPKG_OPTIONS]
    sources = [
        f"deb {MIRROR} {suite} main",
        f"deb {MIRROR} {suite}-updates main",
        f"deb {SECURITY_MIRROR} {suite}-security main",
    ]
    # The merged-usr hook makes /bin, /lib, /sbin symlinks itself, as Debian's images have them,
    # instead of installing the usrmerge package (and perl with it).
    hooks = ["--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
    command = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar", *hooks, *options]
    return [*command, suite, "-", *sources]


def _storage_bytes(path: Path) -> int:
    done = subprocess.run(["du", "-sxb", str(path)], capture_output=True, text=True, timeout=120)
    return int(done.stdout.split()[0]) if done.returncode == 0 and done.stdout else 0


def _ensure_base(store: Store, cache: Path, base: str) -> None:
    """Tag a Debian root filesystem bootstrapped from Debian's packages as `base`, reusing the cache."""
    recipe = _bootstrap_recipe(base)
    key = hashlib.sha256(json.dumps([base, recipe]).encode()).hexdigest()[:16]
    found = store.inspect_image(_qualified(base))
    if found and found.get("Docker", {}).get("config", {}).get("Labels", {}).get("authgate.test.base") == key:
        return
    tarball = cache / f"base-{key}.tar"
    if not tarball.exists():
        partial = tarball.with_suffix(".partial")
        with partial.open("wb") as out:
            done = subprocess.run(
                recipe, stdout=out, stderr=subprocess.PIPE, text=True, timeout=BOOTSTRAP_TIMEOUT
            )
        if done.returncode != 0:
            partial.unlink()
            pytest.fail(f"mmdebstrap failed ({done.returncode}):\n{done.stderr[-4000:]}")
        partial.rename(tarball)
        for old in cache.glob("base-*.tar"):
            if old != tarball:
                old.unlink()
    name = f"authgate-test-base-{os.getpid()}"
    store.run("rm", name, check=False)
    store.run("from", "--name", name, "scratch")
    try:
        mount = store.run("mount", name).stdout.strip()
        try:
            # /dev stays empty as in Debian's images: the runtime provides the devices.
            extract = ["tar", "-xpf", str(tarball), "-C", mount, "--numeric-owner", "--exclude=./dev/*"]
            subprocess.run(extract, check=True, timeout=300)
        finally:
            store.run("umount", name)
        store.run(
            "config",
            "--env",
            f"PATH={BASE_PATH}",
            "--cmd",
            "bash",
            "--label",
            f"authgate.test.base={key}",
            name,
        )
        store.run("commit", "--quiet", "--format", "docker", name, _qualified(base), timeout=600)
    finally:
        store.run("rm", name, check=False)


@pytest.fixture(scope="module")
def store() -> Iterator[Store]:
    """A private buildah store under the test cache, held under a lock (runs on this machine share it)."""
    if os.geteuid() != 0:
        _missing("the container test needs root (mmdebstrap --mode=root, buildah, chroot)")
    for tool in ("buildah", "mmdebstrap", "unshare", "chroot", "tar", "du"):
        if shutil.which(tool) is None:
            _missing(f"{tool} not found")
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = Store(cache / "storage", RUNROOT)
        # Containers left by a killed run would hold mounts and layers forever.
        store.remove_containers()
        if store.root.exists() and _storage_bytes(store.root) > STORAGE_LIMIT:
            store.wipe()
        yield store
        store.remove_containers()


@pytest.fixture(scope="module")
def image(store: Store) -> dict[str, Any]:
    """Build deploy/Containerfile on a locally bootstrapped base; return `buildah inspect` of the result."""
    _ensure_base(store, _cache_dir(), base_image())
    command = ["build", "--pull=never", "--isolation", "chroot", "--format", "docker", "--layers"]
    ca = _ca_bundle()
    if ca:
        command += ["--secret", f"id=build_ca,src={ca}"]
    command += ["-f", str(CONTAINERFILE), "-t", IMAGE, str(ROOT)]
    done = store.run(*command, timeout=BUILD_TIMEOUT, check=False)
    if done.returncode != 0:
        pytest.fail(f"buildah build failed ({done.returncode}):\n{done.stdout[-6000:]}{done.stderr[-4000:]}")
    found = store.inspect_image(IMAGE)
    assert found is not None
    return found


@pytest.fixture
def rootfs(store: Store, image: dict[str, Any]) -> Iterator[Path]:
    with store.mounted(IMAGE) as path:
        yield path


def _config(image: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = image["Docker"]["config"]
    return config


def _interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Expand compose's ${VAR:-default} and ${VAR} as docker compose would."""

    def expand(match: re.Match[str]) -> str:
        return environ.get(match.group(1)) or (match.group(2) or "")

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", expand, value)


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return compose


def _compose_authgate(secrets_dir: Path, uid: int, gid: int) -> tuple[dict[str, str], dict[str, Path]]:
    """Return compose.yml's authgate environment, and its secrets written as files into `secrets_dir`.

    The files are owned by the image's user, mode 0400, as docs/container.md tells people to make
    them; the returned mapping names each one's path inside the container.
    """
    compose = _compose()
    service = compose["services"]["authgate"]
    environ = {name: _interpolate(str(value), {}) for name, value in service["environment"].items()}
    secrets_dir.mkdir(parents=True)
    files = {}
    for name in service["secrets"]:
        assert compose["secrets"][name]["file"] == f"./secrets/{name}"
        inside = f"/run/secrets/{name}"
        assert inside in environ.values(), f"compose.yml mounts the secret {name} but no _FILE names it"
        secret = secrets_dir / name
        secret.write_text(secrets.token_hex(32) + "\n")
        os.chown(secret, uid, gid)
        secret.chmod(0o400)
        files[inside] = secret
    return environ, files


def _user_ids(rootfs: Path, user: str) -> tuple[int, int, str]:
    """Resolve the image's USER (name or uid[:gid]) in its own /etc/passwd, as a runtime does."""
    name, _, group = user.partition(":")
    for line in (rootfs / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if name in (fields[0], fields[2]):
            gid = int(group) if group.isdigit() else int(fields[3])
            return int(fields[2]), gid, fields[5]
    pytest.fail(f"the image's user {user!r} is not in its /etc/passwd")


@dataclass
class Container:
    """The image's process tree on the host: unshare -> (pid 1 in its namespace) the entrypoint."""

    process: subprocess.Popen[bytes]
    log: Path

    def main_pid(self) -> int | None:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return None
        return int(pids[0]) if pids else None


def _chroot_command(
    rootfs: Path,
    data: Path,
    run: Path,
    uid: int,
    gid: int,
    workdir: str,
    environ: Mapping[str, str],
    argv: Sequence[str],
) -> list[str]:
    env = [f"{name}={value}" for name, value in environ.items()]
    inner = [f"--userspec={uid}:{gid}", f"--groups={gid}", str(rootfs)]
    inner += ["/usr/bin/env", "-i", "-C", workdir, *env, *argv]
    unshare = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child"]
    return [*unshare, "sh", "-c", RUNTIME_SCRIPT, "runtime", str(rootfs), str(data), str(run), *inner]


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=dict(headers or {}))  # noqa: S310 - a fixed local URL
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - a fixed local URL
        return answer.status, answer.read().decode()


def test_image_metadata(image: dict[str, Any], rootfs: Path) -> None:
    """The image runs as a non-root user, keeps /data as a volume, exposes 9091 and carries a health check."""
    config = _config(image)
    uid, gid, _ = _user_ids(rootfs, config["User"])
    assert uid != 0 and gid != 0
    assert "/data" in config["Volumes"]
    assert "9091/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Entrypoint"] == ["authgate"] and config["Cmd"] == ["serve"]
    data = rootfs / "data"
    assert (data.stat().st_uid, data.stat().st_gid, data.stat().st_mode & 0o777) == (uid, gid, 0o700)
    # Only the virtualenv crosses from the build stage: no pip, source tree, wheels or build secret.
    for absent in ("opt/authgate/bin/pip", "src", "wheels", "tmp/build-env", "run/secrets"):
        assert not (rootfs / absent).exists(), f"/{absent} should not be in the image"
    assert not list((rootfs / "opt/authgate").rglob("session_keys"))
    # Small: apt's package lists and caches are not kept.
    assert not list((rootfs / "var/lib/apt/lists").glob("*_Packages*"))
    assert not list((rootfs / "var/cache/apt").rglob("*.bin")) and not list(
        (rootfs / "var/cache/apt").rglob("*.deb")
    )


def test_image_carries_the_ldap_client(image: dict[str, Any], rootfs: Path) -> None:
    """bonsai (the `ldap` extra, docs/ldap.md) and the libldap it is linked against are in the image."""
    uid, gid, _ = _user_ids(rootfs, _config(image)["User"])
    code = "import bonsai; print(bonsai.get_vendor_info()[0], bonsai.LDAPClient('ldaps://ldap.example').url)"
    done = subprocess.run(
        ["chroot", f"--userspec={uid}:{gid}", str(rootfs), "/opt/authgate/bin/python", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OpenLDAP" in done.stdout and "ldaps://ldap.example" in done.stdout


def test_image_starts_authgate_and_answers_health(
    image: dict[str, Any], rootfs: Path, tmp_path: Path
) -> None:
    """The entrypoint, run as the image's user with compose's environment and secrets, answers /api/health."""
    config = _config(image)
    uid, gid, home = _user_ids(rootfs, config["User"])
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    os.chown(data, uid, gid)
    data.chmod(0o700)

    environ, _ = _compose_authgate(run / "secrets", uid, gid)
    domain = yaml.safe_load(environ["AUTHGATE_SESSION_COOKIES"])[0]["domain"]
    (port,) = free_ports(1)
    env = dict(item.split("=", 1) for item in config["Env"])
    env.update(HOME=home, HOSTNAME="authgate-test", **environ)
    # Stay on loopback: the chroot shares the host's network, where 0.0.0.0 would be every interface.
    env.update(AUTHGATE_SERVER_HOST="127.0.0.1", AUTHGATE_SERVER_PORT=str(port))
    workdir = config["WorkingDir"]

    def command(argv: Sequence[str]) -> list[str]:
        return _chroot_command(rootfs, data, run, uid, gid, workdir, env, argv)

    log = tmp_path / "authgate.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command([*config["Entrypoint"], *config["Cmd"]]), stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    container = Container(process, log)
    try:
        _wait_for_health(port, lambda: process.poll() is None, lambda: log_tail(log))
        assert _get(f"http://127.0.0.1:{port}/api/health") == (200, '{"status": "ok"}')

        # The wheel carries the portal's templates and static files: the first-run page renders.
        page = _get(f"http://127.0.0.1:{port}/auth/login", {"Host": domain, "Accept": "text/html"})
        assert page[0] == 200 and "<form" in page[1], page
        css = _get(f"http://127.0.0.1:{port}/auth/static/style.css", {"Host": domain})
        assert css == (200, (ROOT / "portal/static/style.css").read_text())

        pid = container.main_pid()
        assert pid is not None
        status = _status(pid)
        assert status["Uid"].split() == [str(uid)] * 4, status["Uid"]
        assert status["Gid"].split() == [str(gid)] * 4, status["Gid"]
        assert status["Groups"].split() == [str(gid)], status["Groups"]
        assert int(status["CapEff"], 16) == 0
        assert "authgate" in Path(f"/proc/{pid}/cmdline").read_text()

        # The database is in the volume, owned by the image's user; both secrets came from the
        # _FILE variables, so none was generated into the volume.
        assert (data / "authgate.sqlite3").stat().st_uid == uid
        assert not (data / "secrets" / "session_keys").exists()
        assert not (data / "secrets" / "storage_key").exists()
        for path in data.rglob("*"):
            assert path.stat().st_uid == uid, path

        healthcheck = config["Healthcheck"]["Test"][1:]
        done = subprocess.run(command(healthcheck), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr

        # A runtime stops a container with SIGTERM to its pid 1; authgate must exit cleanly.
        os.kill(pid, signal.SIGTERM)
        assert process.wait(timeout=STOP_TIMEOUT) == 0, log_tail(log)
        done = subprocess.run(command(healthcheck), capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, "the health check should fail once authgate is down"
    finally:
        if process.poll() is None:
            process.kill()  # --kill-child takes authgate with it
            process.wait(timeout=STOP_TIMEOUT)


def _wait_for_health(port: int, running: Callable[[], bool], logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not http_ok(f"http://127.0.0.1:{port}/api/health"):
        if not running():
            pytest.fail(f"authgate stopped before answering /api/health:\n{logs()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no /api/health answer within {START_TIMEOUT}s:\n{logs()}")
        time.sleep(0.2)


def test_image_runs_under_podman(store: Store, image: dict[str, Any], rootfs: Path, tmp_path: Path) -> None:
    """Under podman + runc with compose.yml's settings the image serves, is healthy and stops on SIGTERM."""
    if shutil.which("podman") is None or shutil.which("runc") is None:
        _missing("podman and runc not found")
    uid, gid, _ = _user_ids(rootfs, _config(image)["User"])
    environ, secret_files = _compose_authgate(tmp_path / "secrets", uid, gid)
    (port,) = free_ports(1)
    name = f"authgate-test-{os.getpid()}-{secrets.token_hex(4)}"
    volume = f"{name}-data"
    # What compose.yml asks for: a named volume at /data, secrets bind-mounted under /run/secrets
    # (compose mounts file secrets that way), read-only root, tmpfs /tmp, no capabilities,
    # no-new-privileges. The host network stands in for compose's network: all on 127.0.0.1.
    options = ["--name", name, "--pull", "never", "--network", "host", "-v", f"{volume}:/data"]
    options += ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    for inside, path in secret_files.items():
        options += ["-v", f"{path}:{inside}:ro"]
    for limit, which in CONTAINER_LIMITS.items():
        value = min(resource.getrlimit(which)[1], 4096)
        options += ["--ulimit", f"{limit}={value}:{value}"]
    for variable, value in {
        **environ,
        "AUTHGATE_SERVER_HOST": "127.0.0.1",
        "AUTHGATE_SERVER_PORT": str(port),
    }.items():
        options += ["-e", f"{variable}={value}"]

    def state() -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(store.podman("inspect", "--type", "container", name).stdout)
        return found[0]

    def logs() -> str:
        done = store.podman("logs", name, check=False)
        return (done.stdout + done.stderr)[-4000:]

    try:
        store.podman("run", "--detach", *options, IMAGE)  # no command: the image's entrypoint + cmd
        _wait_for_health(port, lambda: bool(state()["State"]["Running"]), logs)
        # The runtime runs the image's HEALTHCHECK (its timers need systemd, absent here, so ask now).
        checked = store.podman("healthcheck", "run", name, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert state()["State"]["Health"]["Status"] == "healthy"

        status = _status(int(state()["State"]["Pid"]))
        assert status["Uid"].split() == [str(uid)] * 4 and status["Gid"].split() == [str(gid)] * 4
        assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"] == "1"
        # The volume took the image's /data (owner, mode) and holds the database, no generated secret.
        mountpoint = Path(
            store.podman("volume", "inspect", volume, "--format", "{{.Mountpoint}}").stdout.strip()
        )
        assert (mountpoint.stat().st_uid, mountpoint.stat().st_mode & 0o777) == (uid, 0o700)
        assert (mountpoint / "authgate.sqlite3").stat().st_uid == uid
        assert not (mountpoint / "secrets").exists()

        # `podman stop` sends SIGTERM to the entrypoint (PID 1), which must exit cleanly in time.
        store.podman("stop", "--time", str(int(STOP_TIMEOUT)), name, timeout=STOP_TIMEOUT + 30)
        stopped = state()["State"]
        assert (stopped["ExitCode"], stopped["Status"]) == (0, "exited"), logs()
    finally:
        store.podman("rm", "--force", name, check=False)
        store.podman("volume", "rm", "--force", volume, check=False)


def test_compose_trusts_only_caddy() -> None:
    """compose.yml trusts only Caddy's fixed address, inside its network; authgate publishes no port."""
    compose = _compose()
    authgate, caddy = compose["services"]["authgate"], compose["services"]["caddy"]
    trusted = yaml.safe_load(authgate["environment"]["AUTHGATE_SERVER_TRUSTED_PROXIES"])
    address = caddy["networks"]["edge"]["ipv4_address"]
    assert trusted == [f"{address}/32"]
    subnet = compose["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(address) in ipaddress.ip_network(subnet)
    assert "ports" not in authgate
    assert "authgate-data:/data" in authgate["volumes"]
    assert authgate["build"] == {"context": "..", "dockerfile": "deploy/Containerfile"}


def test_compose_caddy_settings_fit_the_caddyfile(caddy_bin: str) -> None:
    """Caddyfile.example with compose.yml's variables listens everywhere and points at the containers."""
    caddy = _compose()["services"]["caddy"]
    assert "../Caddyfile.example:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    env = {name: _interpolate(str(value), {}) for name, value in caddy["environment"].items()}
    command = [caddy_bin, "adapt", "--config", str(ROOT / "Caddyfile.example"), "--adapter", "caddyfile"]
    done = subprocess.run(
        command, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    adapted = json.loads(done.stdout)
    servers = adapted["apps"]["http"]["servers"].values()
    (server,) = [each for each in servers if each["listen"] == [":443"]]
    text = json.dumps(server)
    assert env["AUTHGATE_SITE"] in server["routes"][0]["match"][0]["host"]
    dials = set(re.findall(r'"dial": "([^"]+)"', text))
    assert dials == {env["AUTHGATE_ADDR"], env["APP_UPSTREAM"]}, dials
    assert '"/api/authz/forward-auth"' in text
