"""Build Django settings from appion's config and start Django (once per process)."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import django
from django.conf import settings
from django.db.backends.signals import connection_created

from appion.base.config import AppionConfig, ConfigError, DatabaseURL, load_config

_lock = threading.RLock()
_config: AppionConfig | None = None

# Database aliases.  With SQLite everything is the single 'default' alias.
LEGINON, PROJECT, APPION = "default", "project", "appion"


class DatabaseUnavailable(Exception):
    """The database cannot be reached or used (message is one line, no credentials)."""


def _django_db(url: DatabaseURL) -> dict:
    if url.engine == "sqlite":
        # IMMEDIATE: a transaction takes the write lock when it starts, so two processes doing
        # read-then-write (sinedon's get-or-create) wait for each other instead of failing with
        # "database is locked" when a read snapshot cannot be upgraded to a write.
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": url.name,
                "OPTIONS": {"timeout": 60, "transaction_mode": "IMMEDIATE"}}
    return {"ENGINE": "django.db.backends.mysql", "NAME": url.name, "USER": url.user, "PASSWORD": url.password,
            "HOST": url.host, "PORT": str(url.port),
            "OPTIONS": {"charset": "utf8mb4", "connect_timeout": 10},
            "CONN_MAX_AGE": None, "CONN_HEALTH_CHECKS": True,
            "TEST": {"NAME": None}}


def build_databases(config: AppionConfig) -> dict:
    """Django DATABASES: one alias for SQLite; leginon/project/appion aliases for MySQL."""
    if config.embedded:
        return {LEGINON: _django_db(config.leginon)}
    appion = config.appion or DatabaseURL("mysql", "", config.project.user, config.project.password,
                                          config.project.host, config.project.port)
    return {LEGINON: _django_db(config.leginon), PROJECT: _django_db(config.project), APPION: _django_db(appion)}


def _on_sqlite_connect(sender, connection, **kwargs):
    # WAL lets a session importer and the loop write the same embedded file without blocking readers.
    if connection.vendor == "sqlite":
        with connection.cursor() as cur:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA synchronous=NORMAL")


def bootstrap(config: AppionConfig | None = None) -> AppionConfig:
    """Configure and start Django once; later calls return the active config.

    config: the configuration to use (default: load_config(), i.e. --config / APPION_CONFIG /
    $APPION_HOME/config.toml); ignored once Django has started.
    """
    global _config
    with _lock:
        if _config is not None:
            return _config
        if settings.configured:
            raise RuntimeError("Django settings were configured before appion.base.db.bootstrap(); "
                               "appion must configure them itself")
        config = config or load_config()
        if config.embedded:
            folder = Path(config.leginon.name).parent
            try:
                config.home.mkdir(parents=True, exist_ok=True)
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create {folder} for the SQLite database: {exc.strerror}") from None
        settings.configure(
            DEBUG=False,
            USE_TZ=False,
            TIME_ZONE="UTC",
            DATABASES=build_databases(config),
            DATABASE_ROUTERS=["appion.base.db.router.SinedonRouter"],
            INSTALLED_APPS=["appion.base.db.apps.SinedonConfig"],
            DEFAULT_AUTO_FIELD="django.db.models.AutoField",
            SECRET_KEY="appion-is-not-a-website-with-sessions",
            LOGGING_CONFIG=None,
        )
        connection_created.connect(_on_sqlite_connect)
        _config = config
        django.setup()
        return config


def current_config() -> AppionConfig:
    return bootstrap()


def use_appion_database(project_id: int | None = None, name: str | None = None) -> str:
    """Point the appion alias at a project's database (classic: processingdb.appiondb).

    name wins; else the project's processingdb row; else the configured [database] appion.
    With SQLite this is a no-op (one file).  Returns the database name in use.  The switch is
    process-wide (the shared settings and this thread's open connection), as classic's is.
    As sinedon does, a project's database (any other than the configured [database] appion, which
    `appion db init` prepares) gets its missing appion tables on first use, once per database per
    process (existing tables are never altered); one the server does not know yet is created.
    """
    from django.db import connections

    from appion.base.db.models import ProcessingDB

    config = bootstrap()
    if config.embedded:
        return config.leginon.name
    if name is None and project_id is not None:
        row = ProcessingDB.objects.filter(project_id=project_id).order_by("-id").first()
        name = row.appiondb if row is not None and row.appiondb else None
        if name is None and config.appion is None:
            raise ConfigError(f"project {project_id} has no processingdb row naming its appion database "
                              "and no [database] appion is configured")
    if name is None:
        if config.appion is None:
            raise ConfigError("no appion database configured: give a project id (classic -p/--projectid) "
                              "or set [database] appion in the config")
        name = config.appion.name
    with _lock:
        conn = connections[APPION]
        if conn.settings_dict["NAME"] != name:
            conn.close()
            conn.settings_dict["NAME"] = name  # the same dict as settings.DATABASES['appion']
        configured = config.appion.name if config.appion is not None else None
        if name != configured and name not in _tables_ready:
            _prepare_appion_database(name)
            _tables_ready.add(name)
    return name


_tables_ready: set[str] = set()  # appion databases whose tables this process has checked (and created)
_DB_NAME = re.compile(r"[A-Za-z0-9_$]{1,64}")
_UNKNOWN_DATABASE = 1049  # MySQL/MariaDB error number


def _prepare_appion_database(name: str) -> None:
    """Create the database if the server does not know it, then its missing appion tables."""
    from django.db import OperationalError, connections

    from appion.base.db.schema import create_missing_tables

    conn = connections[APPION]
    try:
        conn.ensure_connection()
    except OperationalError as exc:
        if not exc.args or exc.args[0] != _UNKNOWN_DATABASE:
            raise
        _create_database(name)
    create_missing_tables(APPION)


def _create_database(name: str) -> None:
    """CREATE DATABASE on the appion alias's server (the name comes from a processingdb row or the caller)."""
    from django.db import connections

    if not _DB_NAME.fullmatch(name):
        raise ConfigError(f"appion database name {name!r} is not a plain MySQL database name "
                          "(letters, digits, '_', '$'; at most 64 characters)")
    conn = connections[APPION]
    conn.close()
    conn.settings_dict["NAME"] = ""  # connect to the server without a database
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
    finally:
        conn.close()
        conn.settings_dict["NAME"] = name
