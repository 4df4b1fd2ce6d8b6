"""Shared fixtures.

Django can be configured once per process, so the whole pytest run uses one database:
an embedded SQLite file in a temporary APPION_HOME (default), or real MariaDB databases when
APPION_TEST_DB=mariadb (tests/base/test_mariadb.py runs the data-layer suite that way).
The `db` fixture empties every table before a test.  Subprocess tests get their own
APPION_HOME through `fresh_home`.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

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


def mysql_exec(sql: str, database: str | None = None) -> str:
    """Run SQL through the mariadb client as root (used by fixtures, not by appion)."""
    cmd = ["mysql", "-uroot", "-h127.0.0.1", "-P3306", "--batch", "--skip-column-names", "-e", sql]
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


def require_slurm() -> None:
    """Start the single-node Slurm (installing it if needed); in CI failure to do so fails the test."""
    result = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up")], capture_output=True, text=True)
    if result.returncode == 0:
        return
    msg = f"single-node Slurm could not be started: {result.stderr.strip()[-500:]}"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def write_mariadb_config(home: Path, prefix: str) -> Path:
    """Fresh leginon/project/appion databases named <prefix>_leg/_proj/_ap and a config.toml using them."""
    for part in ("leg", "proj", "ap"):
        mysql_exec(f"DROP DATABASE IF EXISTS `{prefix}_{part}`; CREATE DATABASE `{prefix}_{part}`")
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "config.toml"
    cfg.write_text("[database]\n"
                   f'leginon = "mysql://root@127.0.0.1:3306/{prefix}_leg"\n'
                   f'project = "mysql://root@127.0.0.1:3306/{prefix}_proj"\n'
                   f'appion = "mysql://root@127.0.0.1:3306/{prefix}_ap"\n')
    return cfg


def drop_mariadb(prefix: str) -> None:
    for part in ("leg", "proj", "ap"):
        mysql_exec(f"DROP DATABASE IF EXISTS `{prefix}_{part}`")


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
