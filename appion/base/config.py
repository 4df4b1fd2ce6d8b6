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
from urllib.parse import unquote

CONFIG_ENV = "APPION_CONFIG"
DATABASE_KEYS = ("url", "leginon", "project", "appion")
PATHS_KEYS = ("appion_base", "numba_cache")
NUMBA_CACHE_ENV = "NUMBA_CACHE_DIR"
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
    # compiled numba functions, shared by the loop's workers (on a cluster: a directory every node sees)
    numba_cache: Path | None = None
    extra: dict = field(default_factory=dict, repr=False)  # other sections, e.g. [hosts], [jobs]

    @property
    def embedded(self) -> bool:
        return self.leginon.engine == "sqlite"


def _redact(url: str) -> str:
    """The URL with any password replaced, for messages."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url else "<hidden: it may hold a password>"
    if "@" not in rest:
        return url
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.partition(":")[0]
    return f"{head}://{user}:***@{hostpart}" if ":" in userinfo else url


def parse_database_url(url: str, home: Path) -> DatabaseURL:
    """Parse `sqlite:///path` (relative paths are under APPION_HOME) or `mysql://user:pw@host:port/db`.

    The password may hold any character except that `%` starts a percent-escape: the user part
    ends at the last `@`, so `/ # ? @ :` in a password need no escaping (database names cannot hold `@`).
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(f"database URL {_redact(str(url))!r} is not of the form sqlite:///FILE or "
                          "mysql://USER:PASSWORD@HOST:PORT/DB")
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        raw = rest[1:] if rest.startswith("/") else rest
        if raw in ("", "/"):
            raise ConfigError(f"database URL {url!r} names no SQLite file")
        path = Path(os.path.expanduser(unquote(raw)))
        return DatabaseURL("sqlite", str(path if path.is_absolute() else home / path))
    if scheme not in ("mysql", "mariadb"):
        raise ConfigError(f"database URL scheme {scheme!r} is not supported (use sqlite or mysql)")
    userinfo, _, hostpart = rest.rpartition("@")
    user, _, password = userinfo.partition(":")
    netloc, _, name = hostpart.partition("/")
    name = unquote(name.split("?", 1)[0].strip("/"))
    host, port_text = netloc, ""
    if netloc.startswith("["):  # IPv6 literal
        host, _, after = netloc[1:].partition("]")
        port_text = after.lstrip(":")
    elif ":" in netloc:
        host, _, port_text = netloc.rpartition(":")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ConfigError(f"database URL {_redact(url)!r} has a bad port {port_text!r}")
    parsed = DatabaseURL("mysql", name, unquote(user), unquote(password), host or "127.0.0.1",
                         int(port_text) if port_text else 3306)
    if not name:
        raise ConfigError(f"database URL {parsed.safe} names no database")
    return parsed


def find_home() -> Path:
    return Path(os.path.expanduser(os.environ.get(HOME_ENV) or "~/.appion")).resolve()


def find_config_path() -> Path:
    explicit = os.environ.get(CONFIG_ENV)
    return Path(explicit).expanduser().resolve() if explicit else find_home() / "config.toml"


def load_config(path: Path | None = None) -> AppionConfig:
    """Read the config file (if any) and apply environment overrides (environment wins over the file).

    Environment: APPION_DATABASE_URL (all three databases), APPION_LEGINON_DB, APPION_PROJECT_DB,
    APPION_APPION_DB, APPION_BASE (run directories).  A single `url` (file or APPION_DATABASE_URL)
    serves all three databases; with separate MySQL leginon/project databases and no appion one, the
    appion database is found per project through processingdb (AppionConfig.appion is None).
    Relative SQLite paths and a relative appion_base are under APPION_HOME.
    """
    home = find_home()
    path = path or find_config_path()
    data: dict = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    elif os.environ.get(CONFIG_ENV):
        raise ConfigError(f"config file {path} does not exist")
    where = f"config file {path}" if path.exists() else "database settings (APPION_* environment)"
    db, paths = data.get("database", {}), data.get("paths", {})
    for section, value, keys in (("database", db, DATABASE_KEYS), ("paths", paths, PATHS_KEYS)):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
        unknown = sorted(set(value) - set(keys))
        if unknown:  # a misspelt `leginon` would otherwise silently mean the embedded SQLite file
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} in [{section}] (known: {', '.join(keys)})")
    env = os.environ.get
    url = env("APPION_DATABASE_URL") or db.get("url")
    leginon_text = env("APPION_LEGINON_DB") or db.get("leginon") or url or "sqlite:///appion.sqlite3"
    project_text = env("APPION_PROJECT_DB") or db.get("project") or url or leginon_text
    leginon, project = parse_database_url(leginon_text, home), parse_database_url(project_text, home)
    appion_text = env("APPION_APPION_DB") or db.get("appion") or url
    if appion_text is None and leginon.engine == "sqlite":
        appion_text = leginon_text
    appion = parse_database_url(appion_text, home) if appion_text else None
    urls = [leginon, project] + ([appion] if appion else [])
    if len({u.engine for u in urls}) > 1:
        raise ConfigError(f"{where}: leginon, project and appion databases must use the same engine")
    if leginon.engine == "sqlite" and len({u.name for u in urls}) > 1:
        raise ConfigError(f"{where}: with SQLite, leginon, project and appion share one file")
    base = env("APPION_BASE") or paths.get("appion_base") or "runs"
    numba_cache = env(NUMBA_CACHE_ENV) or paths.get("numba_cache") or "numba-cache"
    extra = {k: v for k, v in data.items() if k not in ("database", "paths")}
    return AppionConfig(home=home, leginon=leginon, project=project, appion=appion,
                        appion_base=(home / os.path.expanduser(str(base))).resolve(),
                        source=str(path) if path.exists() else "defaults",
                        numba_cache=(home / os.path.expanduser(str(numba_cache))).resolve(), extra=extra)


def set_numba_cache_dir() -> None:
    """Point numba's cache at the configured directory (`[paths] numba_cache`, default
    $APPION_HOME/numba-cache; NUMBA_CACHE_DIR in the environment wins), before numba is imported.  Worker
    processes inherit it (LocalCluster) or get it in their job script (dask-jobqueue), so every worker loads what
    one of them compiled.  A broken config is left for the command to report."""
    if os.environ.get(NUMBA_CACHE_ENV):
        return
    try:
        config = load_config()
    except ConfigError:
        return
    os.environ[NUMBA_CACHE_ENV] = str(config.numba_cache)
