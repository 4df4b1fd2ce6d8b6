"""Where appion keeps its state, and which databases it talks to.

A user never writes a Django settings module: the package builds its settings from
`$APPION_HOME/config.toml` (APPION_HOME defaults to ~/.appion), environment variables,
and `--config FILE` on any command.  With no config at all, everything lives in one
embedded SQLite file under APPION_HOME.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

CONFIG_ENV = "APPION_CONFIG"
HOME_ENV = "APPION_HOME"


class ConfigError(Exception):
    """A configuration problem a user must fix (message is shown as one line)."""


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL; `safe` is for messages (never shows the password)."""

    engine: str  # "sqlite" | "mysql"
    name: str
    user: str = ""
    password: str = field(default="", repr=False)
    host: str = ""
    port: int = 0

    @property
    def safe(self) -> str:
        if self.engine == "sqlite":
            return f"sqlite:///{self.name}"
        user = f"{self.user}@" if self.user else ""
        return f"mysql://{user}{self.host}:{self.port}/{self.name}"


@dataclass(frozen=True)
class AppionConfig:
    """Resolved configuration.  For SQLite all three databases are one file."""

    home: Path
    leginon: DatabaseURL
    project: DatabaseURL
    appion: DatabaseURL | None  # None: found per project through processingdb
    appion_base: Path  # run directories: <appion_base>/<session>/<ddstack|ctf|recon>/<run>
    source: str  # where the settings came from, for messages
    extra: dict = field(default_factory=dict, repr=False)  # other sections, e.g. [hosts], [jobs]

    @property
    def embedded(self) -> bool:
        return self.leginon.engine == "sqlite"


def parse_database_url(url: str, home: Path) -> DatabaseURL:
    """Parse `sqlite:///path` (relative paths are under APPION_HOME) or `mysql://user:pw@host:port/db`."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"database URL {url!r} is not of the form sqlite:///FILE or mysql://USER@HOST:PORT/DB")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        raw = url.split("://", 1)[1]
        raw = raw[1:] if raw.startswith("/") else raw
        path = Path(os.path.expanduser(raw))
        if not path.is_absolute():
            path = home / path
        if raw in ("", "/"):
            raise ConfigError(f"database URL {url!r} names no SQLite file")
        return DatabaseURL("sqlite", str(path))
    if scheme in ("mysql", "mariadb"):
        name = parts.path.lstrip("/")
        if not name:
            raise ConfigError(f"database URL {DatabaseURL('mysql', '', parts.username or '', '', parts.hostname or '', parts.port or 3306).safe} names no database")
        try:
            port = parts.port or 3306
        except ValueError as exc:
            raise ConfigError(f"database URL has a bad port: {exc}") from None
        return DatabaseURL("mysql", name, unquote(parts.username or ""), unquote(parts.password or ""),
                           parts.hostname or "127.0.0.1", port)
    raise ConfigError(f"database URL scheme {scheme!r} is not supported (use sqlite or mysql)")


def find_home() -> Path:
    return Path(os.path.expanduser(os.environ.get(HOME_ENV) or "~/.appion")).resolve()


def find_config_path() -> Path:
    explicit = os.environ.get(CONFIG_ENV)
    return Path(explicit).expanduser().resolve() if explicit else find_home() / "config.toml"


def load_config(path: Path | None = None) -> AppionConfig:
    """Read the config file (if any) and apply environment overrides.

    Environment: APPION_DATABASE_URL (all three databases), APPION_LEGINON_DB, APPION_PROJECT_DB,
    APPION_APPION_DB, APPION_BASE (run directories).
    """
    home = find_home()
    path = path or find_config_path()
    data: dict = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    elif os.environ.get(CONFIG_ENV):
        raise ConfigError(f"config file {path} does not exist")
    db = data.get("database", {})
    if not isinstance(db, dict):
        raise ConfigError(f"config file {path}: [database] must be a table")
    default_url = os.environ.get("APPION_DATABASE_URL") or db.get("url") or "sqlite:///appion.sqlite3"
    leginon = os.environ.get("APPION_LEGINON_DB") or db.get("leginon") or default_url
    project = os.environ.get("APPION_PROJECT_DB") or db.get("project") or default_url
    appion = os.environ.get("APPION_APPION_DB") or db.get("appion")
    if appion is None and parse_database_url(default_url, home).engine == "sqlite" and "leginon" not in db:
        appion = default_url
    urls = [parse_database_url(u, home) for u in (leginon, project)]
    appion_url = parse_database_url(appion, home) if appion else None
    engines = {u.engine for u in urls + ([appion_url] if appion_url else [])}
    if len(engines) > 1:
        raise ConfigError(f"config file {path}: leginon, project and appion databases must use the same engine")
    if "sqlite" in engines and len({u.name for u in urls + ([appion_url] if appion_url else [])}) > 1:
        raise ConfigError(f"config file {path}: with SQLite, leginon, project and appion share one file")
    paths = data.get("paths", {})
    base = os.environ.get("APPION_BASE") or paths.get("appion_base") or str(home / "runs")
    extra = {k: v for k, v in data.items() if k not in ("database", "paths")}
    return AppionConfig(home=home, leginon=urls[0], project=urls[1], appion=appion_url,
                        appion_base=Path(os.path.expanduser(base)).resolve(),
                        source=str(path) if path.exists() else "defaults", extra=extra)
