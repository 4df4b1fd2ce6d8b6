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
