"""Configuration: APPION_HOME, --config, URL parsing, one-line errors."""
import os
import subprocess
from pathlib import Path

import pytest

from appion.base.config import ConfigError, load_config, parse_database_url


def test_sqlite_default_lives_in_appion_home(tmp_path, monkeypatch):
    monkeypatch.setenv("APPION_HOME", str(tmp_path))
    monkeypatch.delenv("APPION_CONFIG", raising=False)
    cfg = load_config()
    assert cfg.embedded and Path(cfg.leginon.name) == tmp_path / "appion.sqlite3"
    assert cfg.appion_base == tmp_path / "runs"


def test_config_file_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("APPION_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[database]\nleginon = "mysql://u:p%40ss@db.example:3307/leg"\n'
                                          'project = "mysql://u:p%40ss@db.example:3307/proj"\n'
                                          '[paths]\nappion_base = "/data/appion"\n[jobs]\narchive_after_s = 5\n')
    cfg = load_config()
    assert not cfg.embedded and cfg.appion is None  # found through processingdb per project
    assert (cfg.leginon.host, cfg.leginon.port, cfg.leginon.user, cfg.leginon.password) == ("db.example", 3307, "u",
                                                                                            "p@ss")
    assert "p@ss" not in cfg.leginon.safe and "p@ss" not in repr(cfg)
    assert cfg.appion_base == Path("/data/appion") and cfg.extra["jobs"]["archive_after_s"] == 5
    monkeypatch.setenv("APPION_DATABASE_URL", "sqlite:///other.db")
    monkeypatch.setenv("APPION_LEGINON_DB", "sqlite:///other.db")
    monkeypatch.setenv("APPION_PROJECT_DB", "sqlite:///other.db")
    monkeypatch.setenv("APPION_APPION_DB", "sqlite:///other.db")
    assert load_config().leginon.name == str(tmp_path / "other.db")


@pytest.mark.parametrize("url", ["postgres://x/y", "mysql://host:3306/", "nonsense", "sqlite://"])
def test_bad_urls_are_config_errors(url, tmp_path):
    with pytest.raises(ConfigError):
        parse_database_url(url, tmp_path)


def test_config_option_overrides_home_for_every_command(tmp_path):
    home = tmp_path / "home"
    other = tmp_path / "other"
    other.mkdir()
    cfg = other / "mine.toml"
    cfg.write_text(f'[database]\nurl = "sqlite:///{other}/mine.sqlite3"\n')
    env = {**os.environ, "APPION_HOME": str(home)}
    env.pop("APPION_CONFIG", None)
    out = subprocess.run(["appion", "db", "init", "--config", str(cfg)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (other / "mine.sqlite3").exists() and not (home / "appion.sqlite3").exists()
    out = subprocess.run(["appion", "db", "check"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "missing table SessionData" in out.stdout  # the home database is still empty


def test_bad_config_file_is_one_line(tmp_path):
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[database\nurl=")
    proc = subprocess.run(["appion", "--config", str(cfg), "db", "check"], capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "broken.toml" in proc.stderr


@pytest.mark.parametrize("url, user, password, host, port, name", [
    ("mysql://u:p@s/s#?:x@db.example:3307/leg", "u", "p@s/s#?:x", "db.example", 3307, "leg"),  # unescaped
    ("mysql://u%40x:p%2F%25w@db/leg", "u@x", "p/%w", "db", 3306, "leg"),  # percent-escaped
    ("mariadb://root@[::1]:3310/ap", "root", "", "::1", 3310, "ap"),
    ("mysql://h/x", "", "", "h", 3306, "x"),
])
def test_mysql_urls_with_special_characters(tmp_path, url, user, password, host, port, name):
    parsed = parse_database_url(url, tmp_path)
    assert (parsed.user, parsed.password, parsed.host, parsed.port, parsed.name) == (user, password, host, port, name)
    if password:
        assert password not in parsed.safe and password not in repr(parsed)


@pytest.mark.parametrize("url", ["mysql://u:s3cret@h:notaport/db", "mysql://u:s3cret@h:70000/db",
                                 "mysql://u:s3cret@h/", "u:s3cret@h/db"])
def test_bad_url_messages_hide_the_password(tmp_path, url):
    with pytest.raises(ConfigError) as err:
        parse_database_url(url, tmp_path)
    assert "s3cret" not in str(err.value)


def test_sqlite_relative_and_absolute_paths(tmp_path):
    assert parse_database_url("sqlite:///sub/a.db", tmp_path).name == str(tmp_path / "sub" / "a.db")
    assert parse_database_url(f"sqlite:///{tmp_path}/abs.db", tmp_path).name == str(tmp_path / "abs.db")
    assert parse_database_url("sqlite:////var/x.db", tmp_path).name == "/var/x.db"


def test_mysql_from_environment_alone(tmp_path, monkeypatch):
    """Leginon and project databases given only through the environment: appion found via processingdb."""
    monkeypatch.setenv("APPION_HOME", str(tmp_path))
    monkeypatch.delenv("APPION_CONFIG", raising=False)
    monkeypatch.setenv("APPION_LEGINON_DB", "mysql://u@h/leg")
    monkeypatch.setenv("APPION_PROJECT_DB", "mysql://u@h/proj")
    cfg = load_config()
    assert (cfg.leginon.name, cfg.project.name, cfg.appion) == ("leg", "proj", None)
    monkeypatch.setenv("APPION_APPION_DB", "mysql://u@h/ap7")
    assert load_config().appion.name == "ap7"


def test_single_url_serves_all_three_databases(tmp_path, monkeypatch):
    monkeypatch.setenv("APPION_HOME", str(tmp_path))
    monkeypatch.delenv("APPION_CONFIG", raising=False)
    (tmp_path / "config.toml").write_text('[database]\nurl = "mysql://u@h/everything"\n[paths]\nappion_base = "r"\n')
    cfg = load_config()
    assert {cfg.leginon.name, cfg.project.name, cfg.appion.name} == {"everything"}
    assert cfg.appion_base == tmp_path / "r"  # relative to APPION_HOME, not to the current directory
    monkeypatch.setenv("APPION_LEGINON_DB", "sqlite:///x.db")
    with pytest.raises(ConfigError, match="same engine"):
        load_config()


def test_paths_must_be_a_table(tmp_path, monkeypatch):
    monkeypatch.setenv("APPION_HOME", str(tmp_path))
    monkeypatch.delenv("APPION_CONFIG", raising=False)
    (tmp_path / "config.toml").write_text('paths = "/data"\n')
    with pytest.raises(ConfigError, match=r"config\.toml: \[paths\] must be a table"):
        load_config()


def test_missing_config_file_and_unusable_sqlite_folder_are_one_line(tmp_path):
    env = {**os.environ, "APPION_HOME": str(tmp_path)}
    proc = subprocess.run(["appion", "db", "check", "--config", str(tmp_path / "absent.toml")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"appion: configuration error: config file {tmp_path / 'absent.toml'} does not exist"]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    env["APPION_DATABASE_URL"] = f"sqlite:///{blocker}/sub/db.sqlite3"
    proc = subprocess.run(["appion", "db", "init"], env=env, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot create {blocker}/sub for the SQLite database" in lines[0]


def test_db_check_on_a_complete_schema(db, capsys):
    from appion.cli import main as appion_main

    assert appion_main(["db", "init"]) == 0
    assert "created 0 tables" in capsys.readouterr().out
    assert appion_main(["db", "check"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "schema complete"


def test_misspelt_database_key_is_an_error_not_sqlite(tmp_path, monkeypatch):
    monkeypatch.setenv("APPION_HOME", str(tmp_path))
    monkeypatch.delenv("APPION_CONFIG", raising=False)
    (tmp_path / "config.toml").write_text('[database]\nleginondb = "mysql://u@h/leg"\n')
    with pytest.raises(ConfigError, match="unknown key 'leginondb' in \\[database\\]"):
        load_config()


def test_numba_cache_directory_from_config_home_or_environment(tmp_path, monkeypatch):
    """`[paths] numba_cache` (relative: under APPION_HOME; default APPION_HOME/numba-cache); NUMBA_CACHE_DIR wins."""
    monkeypatch.setenv("APPION_HOME", str(tmp_path))
    monkeypatch.delenv("APPION_CONFIG", raising=False)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert load_config().numba_cache == tmp_path / "numba-cache"
    (tmp_path / "config.toml").write_text('[paths]\nnumba_cache = "/shared/appion/numba"\n')
    assert load_config().numba_cache == Path("/shared/appion/numba")
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/scratch/nb")
    assert load_config().numba_cache == Path("/scratch/nb")


def test_commands_point_numba_at_the_configured_cache_before_importing_it(tmp_path):
    """take_config() (every command's first step) sets NUMBA_CACHE_DIR from the config named by --config, so
    numba, imported later, caches there; a NUMBA_CACHE_DIR already set is kept."""
    config = tmp_path / "site.toml"
    config.write_text(f'[paths]\nnumba_cache = "{tmp_path / "shared-cache"}"\n')
    code = ("import sys; from appion.base.entry import take_config; take_config(sys.argv[1:]); "
            "import numba; print(numba.config.CACHE_DIR)")
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "APPION_CONFIG")}
    env["APPION_HOME"] = str(tmp_path / "home")
    out = subprocess.run(["python3", "-c", code, "--config", str(config)], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == str(tmp_path / "shared-cache")
    out = subprocess.run(["python3", "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == str(tmp_path / "home" / "numba-cache")
    out = subprocess.run(["python3", "-c", code, "--config", str(config)], env={**env, "NUMBA_CACHE_DIR": "/x/nb"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "/x/nb"
