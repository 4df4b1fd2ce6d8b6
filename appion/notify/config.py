"""The `[notify]` table of the appion config (appion.base.config keeps it in `AppionConfig.extra`).

```toml
[notify]
smtp = "mail.lab.example:25"          # host:port of the SMTP server
from = "appion@lab.example"
to = ["cryoem-staff@lab.example"]      # staff: loop alerts and session summaries
admin = ["cryoem-admin@lab.example"]   # refinement failures (default: `to`)
smtp_user = "appion"                   # optional; the password is never logged
smtp_password = "..."
smtp_security = "starttls"             # none | starttls | ssl (default: starttls with a user, else none)
webhook = "https://chat.lab.example/hooks/abc"   # JSON POST of every event (e.g. a chat channel)
timeout = 10                           # seconds per delivery
user_mail = { alice = "alice@lab.example" }      # refinement jobs' users → addresses
user_domain = "lab.example"            # else <user>@<user_domain>
failure_rate = 0.5                     # alert when more than this fraction of the last `failure_window` failed
failure_window = 20
backlog_minutes = 10                   # alert when the backlog grew for this long ...
backlog_growth = 3                     # ... by at least this many exposures (falling behind)
idle_minutes = 15                      # alert when no exposure arrived for this long while the loop waits
```
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from appion.base.config import AppionConfig, ConfigError, load_config

SECURITY = ("none", "starttls", "ssl")
KEYS = ("smtp", "from", "to", "admin", "smtp_user", "smtp_password", "smtp_security", "webhook", "timeout",
        "user_mail", "user_domain", "failure_rate", "failure_window", "backlog_minutes", "backlog_growth",
        "idle_minutes")


@dataclass(frozen=True)
class Limits:
    """When the loop's conditions alert (see appion.notify.calc)."""

    failure_rate: float = 0.5
    failure_window: int = 20
    backlog_minutes: float = 10.0
    backlog_growth: int = 3
    idle_minutes: float = 15.0


@dataclass(frozen=True)
class NotifyConfig:
    """Where notifications go.  `smtp_password` and the webhook URL (it may hold a token) are never shown."""

    smtp_host: str | None = None
    smtp_port: int = 25
    sender: str | None = None
    to: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_security: str = "none"
    webhook: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    user_mail: tuple[tuple[str, str], ...] = ()
    user_domain: str | None = None
    limits: Limits = Limits()

    @property
    def mail(self) -> bool:
        return self.smtp_host is not None

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(name for name, on in (("mail", self.mail), ("webhook", self.webhook is not None)) if on)

    @property
    def smtp_safe(self) -> str:
        user = f"{self.smtp_user}@" if self.smtp_user else ""
        return f"smtp://{user}{self.smtp_host}:{self.smtp_port}"

    @property
    def webhook_safe(self) -> str:
        """The webhook as shown in messages: scheme and host only (its path often is the secret)."""
        if not self.webhook:
            return "none"
        parts = urlsplit(self.webhook)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/…"

    @property
    def admins(self) -> tuple[str, ...]:
        return self.admin or self.to

    def calc_user_address(self, user: str | None) -> str | None:
        """A refinement job user's mail address: `user_mail`, else <user>@<user_domain>; an address is kept."""
        if not user:
            return None
        if "@" in user:
            return user
        found = dict(self.user_mail).get(user)
        if found:
            return found
        return f"{user}@{self.user_domain}" if self.user_domain else None


def _fail(what: str) -> ConfigError:
    return ConfigError(f"[notify] {what}")


def _address(value, key: str) -> str:
    if not isinstance(value, str) or value.count("@") != 1 or any(c.isspace() for c in value) \
            or value.startswith("@") or value.endswith("@"):
        raise _fail(f"{key}: {value!r} is not a mail address like staff@lab.example")
    return value


def _addresses(value, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list):
        raise _fail(f"{key} must be a list of mail addresses, e.g. {key} = [\"staff@lab.example\"], not {value!r}")
    return tuple(_address(v, key) for v in value)


def _number(section: dict, key: str, default, kind=float, low: float = 0.0, high: float = math.inf,
            low_inclusive: bool = False):
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise _fail(f"{key} must be {'a whole number' if kind is int else 'a number'}, not {value!r}")
    if not (value >= low if low_inclusive else value > low) or value > high or not math.isfinite(value):
        bound = f"{'at least' if low_inclusive else 'above'} {low:g}" + (f" and at most {high:g}" if high < math.inf
                                                                           else "")
        raise _fail(f"{key} must be {bound}, not {value!r}")
    return kind(value)


def _text(section: dict, key: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"{key} must be a non-empty string")
    return value


def parse_smtp(value) -> tuple[str, int]:
    if not isinstance(value, str) or ":" not in value:
        raise _fail(f"smtp must be \"host:port\", e.g. \"mail.lab.example:25\", not {value!r}")
    host, _, port = value.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(f"smtp must be \"host:port\" with a port from 1 to 65535, not {value!r}")
    return host, int(port)


def parse_webhook(value) -> str:
    if not isinstance(value, str):
        raise _fail("webhook must be a URL string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = f"{parts.scheme}://{parts.hostname}/…" if parts.hostname else "it"
        raise _fail(f"webhook must be an http:// or https:// URL with a host ({shown} is not)")
    return value


def parse_notify(section) -> NotifyConfig:
    """NotifyConfig from the `[notify]` table (None or {} → no channel); ConfigError names what is wrong."""
    if section is None:
        return NotifyConfig()
    if not isinstance(section, dict):
        raise ConfigError("[notify] must be a table")
    unknown = sorted(set(section) - set(KEYS))
    if unknown:
        raise _fail(f"unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    host, port = parse_smtp(section["smtp"]) if "smtp" in section else (None, 25)
    sender = _address(section["from"], "from") if "from" in section else None
    to = _addresses(section["to"], "to") if "to" in section else ()
    admin = _addresses(section["admin"], "admin") if "admin" in section else ()
    user, password = _text(section, "smtp_user"), section.get("smtp_password")
    if password is not None and (not isinstance(password, str) or not password):
        raise _fail("smtp_password must be a non-empty string")
    if (user is None) != (password is None):
        raise _fail("smtp_user and smtp_password go together")
    security = section.get("smtp_security", "starttls" if user else "none")
    if security not in SECURITY:
        raise _fail(f"smtp_security must be one of {', '.join(SECURITY)}, not {security!r}")
    user_mail = section.get("user_mail", {})
    if not isinstance(user_mail, dict):
        raise _fail("user_mail must be a table of user = \"address\"")
    pairs = tuple(sorted((str(k), _address(v, f"user_mail.{k}")) for k, v in user_mail.items()))
    domain = _text(section, "user_domain")
    if domain is not None and ("@" in domain or any(c.isspace() for c in domain)):
        raise _fail(f"user_domain must be a domain like lab.example, not {domain!r}")
    if host is None and (sender or to or admin or user or pairs or domain):
        raise _fail("mail settings need smtp = \"host:port\"")
    if host is not None and sender is None:
        raise _fail("smtp needs from = \"appion@your.domain\"")
    limits = Limits(failure_rate=_number(section, "failure_rate", 0.5, high=1.0),
                    failure_window=_number(section, "failure_window", 20, int, low=1, low_inclusive=True),
                    backlog_minutes=_number(section, "backlog_minutes", 10.0),
                    backlog_growth=_number(section, "backlog_growth", 3, int, low=1, low_inclusive=True),
                    idle_minutes=_number(section, "idle_minutes", 15.0))
    return NotifyConfig(smtp_host=host, smtp_port=port, sender=sender, to=to, admin=admin, smtp_user=user,
                        smtp_password=password, smtp_security=security,
                        webhook=parse_webhook(section["webhook"]) if "webhook" in section else None,
                        timeout_s=_number(section, "timeout", 10.0), user_mail=pairs, user_domain=domain,
                        limits=limits)


def load_notify_config(config: AppionConfig | None = None) -> NotifyConfig:
    """The `[notify]` settings of `config` (default: the config file in force, read now)."""
    config = config if config is not None else load_config()
    return parse_notify(config.extra.get("notify"))
