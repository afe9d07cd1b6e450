"""A throwaway PostgreSQL cluster for tests, built from the distribution's server binaries.

No Docker and no shared system cluster: ``initdb`` creates a private cluster in a temporary
directory, it listens on 127.0.0.1 on a free port only (plus a Unix socket inside that
directory), durability is switched off because the data is deleted afterwards, and
:func:`stop` removes it all. Locally and in CI this behaves the same; the only requirement is
Debian's ``postgresql`` package. PostgreSQL refuses to run as root, so when the tests run as
root the binaries are run as the ``postgres`` OS user through ``runuser``.
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

TEST_DATABASE = "escalate_test"
SERVER_USER = "postgres"

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found. Install Debian's `postgresql` "
    "package (apt-get install -y postgresql), or set ESCALATE_TEST_POSTGRES_URL to a "
    "postgresql+psycopg:// URL of a server you run yourself."
)


@dataclass
class _Cluster:
    """One running private cluster; the module holds at most one per process."""

    root: Path
    bin_dir: Path
    port: int
    url: str
    as_other_user: bool


_cluster: _Cluster | None = None
_lock = threading.Lock()
_atexit_registered = False


def find_bin_dir() -> Path:
    """Newest ``/usr/lib/postgresql/<major>/bin`` (Debian keeps them off PATH), else PATH."""
    candidates: list[tuple[int, Path]] = []
    for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        major = initdb.parent.parent.name
        if re.fullmatch(r"\d+", major) and (initdb.parent / "pg_ctl").is_file():
            candidates.append((int(major), initdb.parent))
    if candidates:
        return max(candidates)[1]
    initdb_on_path = shutil.which("initdb")
    if initdb_on_path and shutil.which("pg_ctl"):
        return Path(initdb_on_path).resolve().parent
    raise RuntimeError(INSTALL_HINT)


def _free_port() -> int:
    """A port the kernel just handed out; the tiny race is covered by a retry in the caller."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run(cluster_root: Path, as_other_user: bool, args: list[str], what: str) -> None:
    """Run a server binary (as ``postgres`` when we are root); raise with its output on failure.

    Output goes to a file, not a pipe: the postmaster forked by ``pg_ctl start`` must not
    inherit a pipe we wait on.
    """
    prefix = ["runuser", "-u", SERVER_USER, "--"] if as_other_user else []
    output = cluster_root / f"{what}.out"
    with output.open("wb") as out:
        proc = subprocess.run(
            [*prefix, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cluster_root,
            check=False,
            timeout=120,
        )
    if proc.returncode != 0:
        text = output.read_text(errors="replace").strip()
        log = cluster_root / "postgres.log"
        if log.is_file():
            text += "\n--- postgres.log ---\n" + log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"PostgreSQL {what} failed (exit {proc.returncode}):\n{text}")


def _make_root() -> tuple[Path, bool]:
    """A private temp dir, handed to the ``postgres`` user when we are root."""
    root = Path(tempfile.mkdtemp(prefix="escalate-pg-"))
    as_other_user = os.geteuid() == 0
    if as_other_user:
        if shutil.which("runuser") is None:
            raise RuntimeError("running as root needs `runuser` (util-linux) to drop privileges")
        try:
            account = pwd.getpwnam(SERVER_USER)
        except KeyError as exc:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"no `{SERVER_USER}` OS user; {INSTALL_HINT}") from exc
        os.chown(root, account.pw_uid, account.pw_gid)
    return root, as_other_user


def _start_cluster() -> _Cluster:
    """initdb, configure, start, create the test database; clean up on any failure."""
    bin_dir = find_bin_dir()
    root, as_other_user = _make_root()
    data = root / "data"
    try:
        _run(
            root,
            as_other_user,
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                SERVER_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        last_error: RuntimeError | None = None
        for _ in range(3):
            port = _free_port()
            with (data / "postgresql.conf").open("a") as conf:
                conf.write(
                    "\n# escalate test cluster: private, loopback only, no durability\n"
                    f"port = {port}\n"
                    "listen_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{root}'\n"
                    "fsync = off\n"
                    "synchronous_commit = off\n"
                    "full_page_writes = off\n"
                    "max_connections = 100\n"
                )
            try:
                _run(
                    root,
                    as_other_user,
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-l",
                        str(root / "postgres.log"),
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    "start",
                )
            except RuntimeError as exc:  # most likely the port was taken in the meantime
                last_error = exc
                continue
            break
        else:
            assert last_error is not None
            raise last_error
        with psycopg.connect(
            host="127.0.0.1", port=port, user=SERVER_USER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEST_DATABASE)))
    except BaseException:
        _stop_cluster(bin_dir, root, as_other_user)
        raise
    url = f"postgresql+psycopg://{SERVER_USER}@127.0.0.1:{port}/{TEST_DATABASE}"
    return _Cluster(root=root, bin_dir=bin_dir, port=port, url=url, as_other_user=as_other_user)


def _stop_cluster(bin_dir: Path, root: Path, as_other_user: bool) -> None:
    """Fast shutdown (immediate if that fails), then delete every file of the cluster."""
    data = root / "data"
    if (data / "postmaster.pid").exists():
        pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "30"]
        for mode in ("fast", "immediate"):
            try:
                _run(root, as_other_user, [*pg_ctl, "-m", mode, "stop"], "stop")
                break
            except (RuntimeError, subprocess.TimeoutExpired):
                time.sleep(0.5)
    shutil.rmtree(root, ignore_errors=True)


def postgres_for_tests() -> str:
    """SQLAlchemy URL of a PostgreSQL database for tests; starts a private cluster once.

    ``ESCALATE_TEST_POSTGRES_URL`` wins when set. Missing server binaries are an error, not a
    skip, so a misconfigured CI cannot pass by silently leaving out the database tests.
    """
    global _cluster, _atexit_registered
    external = os.environ.get("ESCALATE_TEST_POSTGRES_URL", "").strip()
    if external:
        return external
    with _lock:
        if _cluster is None:
            _cluster = _start_cluster()
            if not _atexit_registered:
                atexit.register(stop)
                _atexit_registered = True
        return _cluster.url


def stop() -> None:
    """Stop and delete the private cluster, if this process started one."""
    global _cluster
    with _lock:
        cluster, _cluster = _cluster, None
    if cluster is not None:
        _stop_cluster(cluster.bin_dir, cluster.root, cluster.as_other_user)


def pause() -> None:
    """Stop this process's private cluster, keeping its data (a database outage)."""
    cluster = _cluster
    assert cluster is not None, "no private cluster to pause (ESCALATE_TEST_POSTGRES_URL set?)"
    data = cluster.root / "data"
    pg_ctl = [str(cluster.bin_dir / "pg_ctl"), "-D", str(data), "-w", "-t", "30"]
    _run(cluster.root, cluster.as_other_user, [*pg_ctl, "-m", "fast", "stop"], "stop")


def resume() -> None:
    """Start the paused cluster again, on the same port and data."""
    cluster = _cluster
    assert cluster is not None, "no private cluster to resume"
    data = cluster.root / "data"
    _run(
        cluster.root,
        cluster.as_other_user,
        [
            str(cluster.bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(cluster.root / "postgres.log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        "start",
    )
