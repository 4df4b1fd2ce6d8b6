"""Shared fixtures.

Django can be configured once per process, so the whole pytest run uses one database:
an embedded SQLite file in a temporary APPION_HOME (default), or real MariaDB databases when
APPION_TEST_DB=mariadb (tests/base/test_mariadb.py runs the data-layer suite that way).
The `db` fixture empties every table before a test.  Subprocess tests get their own
APPION_HOME through `fresh_home`.

Services: the tests never stop, restart or reconfigure a service they did not start.  The machine's MariaDB
(127.0.0.1:3306) only holds throw-away databases; a test that needs an outage gets its own server
(`private_mariadb`); Slurm is always a private single-node Slurm started once per session on first use
(`private_slurm` / `require_slurm()`), reached through SLURM_CONF.  See tests/privateservices.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.privateservices import PrivateMariaDB, PrivateSlurm, ServiceError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
if not SHARED.exists():
    SHARED = Path("/work/shared")

for var in ("APPION_CONFIG", "APPION_DATABASE_URL", "APPION_LEGINON_DB", "APPION_PROJECT_DB", "APPION_APPION_DB",
            "APPION_BASE"):
    os.environ.pop(var, None)
_HOME = Path(tempfile.mkdtemp(prefix="appion-test-home-"))
os.environ["APPION_HOME"] = str(_HOME)
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "appion-numba-cache"))
TEST_DB = os.environ.get("APPION_TEST_DB", "sqlite")
MARIADB_PREFIX = "appion_pytest"
# Until a test asks for the private Slurm, Slurm clients get an empty configuration and fail at once ("ClusterName
# needs to be specified"), so a test that forgot the fixture can never reach a Slurm of the machine.
_NO_SLURM_CONF = "/dev/null"
os.environ["SLURM_CONF"] = _NO_SLURM_CONF
# Files of the machine's services that the tests must leave byte-identical (tests/base/test_service_hygiene.py).
ETC_WATCHED = (Path("/etc/slurm/slurm.conf"), Path("/etc/munge/munge.key"))


def file_fingerprints(paths=ETC_WATCHED) -> dict[str, str | None]:
    """sha256 of each file (None when absent; 'unreadable' when not readable)."""
    import hashlib

    out = {}
    for path in paths:
        try:
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            out[str(path)] = None
        except OSError:
            out[str(path)] = "unreadable"
    return out


ETC_AT_START = file_fingerprints()


def mysql_exec(sql: str, database: str | None = None, port: int = 3306) -> str:
    """Run SQL through the mariadb client as root (used by fixtures, not by appion)."""
    cmd = ["mysql", "-uroot", "-h127.0.0.1", f"-P{port}", "--batch", "--skip-column-names", "-e", sql]
    if database:
        cmd.append(database)
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def mariadb_available() -> bool:
    return shutil.which("mysql") is not None and subprocess.run(
        ["mysqladmin", "-uroot", "-h127.0.0.1", "ping"], capture_output=True).returncode == 0


def require_mariadb() -> None:
    """Skip locally when MariaDB is absent; in CI a missing service is a failure."""
    if mariadb_available():
        return
    if os.environ.get("CI"):
        pytest.fail("MariaDB at 127.0.0.1:3306 is required in CI and is not reachable")
    pytest.skip("MariaDB at 127.0.0.1:3306 is not reachable")


def _unavailable(msg: str):
    """In CI a missing service is a failure; locally the test is skipped."""
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


_SLURM: dict = {}  # "slurm": the session's PrivateSlurm, or "error": why it could not start


def require_slurm() -> PrivateSlurm:
    """The session's private single-node Slurm, started on first use (stopped by pytest_sessionfinish).

    Sets SLURM_CONF in os.environ, so this process and every subprocess started afterwards with os.environ reach
    it; an environment copied before (fixtures building env dicts) does not: request the `private_slurm` fixture
    (session scope, so it is set up before function fixtures) rather than calling this inside a test."""
    if "slurm" not in _SLURM and "error" not in _SLURM:
        missing = PrivateSlurm.missing_programs()
        if missing:
            _SLURM["error"] = (f"Slurm/munge programs missing ({', '.join(missing)}): apt-get install slurmctld "
                               "slurmd slurm-client munge (bash .ci/test installs them)")
        else:
            slurm = PrivateSlurm(Path(tempfile.mkdtemp(prefix="appion-test-slurm-")))
            try:
                _SLURM["slurm"] = slurm.start()
            except ServiceError as exc:
                _SLURM["error"] = f"private Slurm could not be started: {str(exc)[-1500:]}"
    if "error" in _SLURM:
        _unavailable(_SLURM["error"])
    os.environ["SLURM_CONF"] = str(_SLURM["slurm"].conf)
    return _SLURM["slurm"]


@pytest.fixture(scope="session")
def private_slurm() -> PrivateSlurm:
    """The session's private single-node Slurm (partition debug, node localhost); SLURM_CONF set in os.environ."""
    return require_slurm()


def pytest_sessionfinish(session, exitstatus):
    slurm = _SLURM.pop("slurm", None)
    if slurm is not None:
        slurm.stop()
        os.environ["SLURM_CONF"] = _NO_SLURM_CONF
        shutil.rmtree(slurm.dir, ignore_errors=True)


@pytest.fixture
def private_mariadb():
    """A MariaDB server of this test's own (own datadir, free port, socket and pid file in a temporary directory),
    root without password on 127.0.0.1:<port>; the test may stop() and start() it; stopped and removed afterwards.
    The directory is outside pytest's tmp_path because mariadbd runs as user mysql (tmp_path's parents are 0700)."""
    missing = PrivateMariaDB.missing_programs()
    if missing:
        _unavailable(f"MariaDB server programs missing ({', '.join(missing)}): apt-get install mariadb-server")
    server = PrivateMariaDB(Path(tempfile.mkdtemp(prefix="appion-test-mariadb-")))
    try:
        server.start()
    except ServiceError as exc:
        shutil.rmtree(server.dir, ignore_errors=True)
        _unavailable(str(exc)[-1500:])
    yield server
    server.close()
    shutil.rmtree(server.dir, ignore_errors=True)


def write_mariadb_config(home: Path, prefix: str, port: int = 3306) -> Path:
    """Fresh leginon/project/appion databases named <prefix>_leg/_proj/_ap (on the server at 127.0.0.1:port) and
    a config.toml using them."""
    for part in ("leg", "proj", "ap"):
        mysql_exec(f"DROP DATABASE IF EXISTS `{prefix}_{part}`; CREATE DATABASE `{prefix}_{part}`", port=port)
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "config.toml"
    cfg.write_text("[database]\n"
                   f'leginon = "mysql://root@127.0.0.1:{port}/{prefix}_leg"\n'
                   f'project = "mysql://root@127.0.0.1:{port}/{prefix}_proj"\n'
                   f'appion = "mysql://root@127.0.0.1:{port}/{prefix}_ap"\n')
    return cfg


def drop_mariadb(prefix: str, port: int = 3306) -> None:
    for part in ("leg", "proj", "ap"):
        mysql_exec(f"DROP DATABASE IF EXISTS `{prefix}_{part}`", port=port)


if TEST_DB == "mariadb":
    write_mariadb_config(_HOME, MARIADB_PREFIX)
from appion.base.db import bootstrap as _bootstrap; _bootstrap()  # noqa: E402,E702 (test modules import models at top)


@pytest.fixture(scope="session")
def appion_db():
    """This process's database with the full schema (created once)."""
    from appion.base.db import bootstrap
    from appion.base.db.schema import create_missing_tables

    config = bootstrap()
    create_missing_tables()
    yield config
    if TEST_DB == "mariadb":
        from django.db import connections

        connections.close_all()
        drop_mariadb(MARIADB_PREFIX)


@pytest.fixture
def db(appion_db):
    """An empty database for one test (every table emptied first)."""
    from django.db import connections

    from appion.base.db.router import alias_for
    from appion.base.db.schema import all_models

    for model in all_models():
        model.objects.using(alias_for(model)).all().delete()
    if appion_db.embedded:
        with connections["default"].cursor() as cur:
            cur.execute("DELETE FROM sqlite_sequence")
    return appion_db


@pytest.fixture
def fresh_home(tmp_path):
    """A separate APPION_HOME (embedded SQLite, schema created) for commands run as subprocesses.

    Returns (home, env) where env is os.environ with APPION_HOME pointing there.
    """
    home = tmp_path / "appion-home"
    home.mkdir()
    env = {**os.environ, "APPION_HOME": str(home)}
    env.pop("APPION_CONFIG", None)
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
    return home, env


@pytest.fixture
def mariadb_home(tmp_path, request):
    """A separate APPION_HOME whose config points at fresh MariaDB databases (dropped afterwards)."""
    require_mariadb()
    prefix = f"apt_{request.node.name[:20].replace('[', '_').replace(']', '_').replace('-', '_')}_{os.getpid()}"
    home = tmp_path / "appion-home"
    write_mariadb_config(home, prefix)
    env = {**os.environ, "APPION_HOME": str(home)}
    env.pop("APPION_CONFIG", None)
    subprocess.run(["appion", "db", "init"], env=env, check=True, capture_output=True)
    yield home, env
    drop_mariadb(prefix)
