"""The `[notify]` table: a full example parses; every mistake is a configuration error that says what is wrong."""
from __future__ import annotations

import tomllib

import pytest

from appion.base.config import ConfigError
from appion.notify.config import Limits, NotifyConfig, parse_notify
from appion.notify.monitor import calc_job_recipients

FULL = """
[notify]
smtp = "mail.lab.example:587"
from = "appion@lab.example"
to = ["staff@lab.example", "night@lab.example"]
admin = ["admin@lab.example"]
smtp_user = "appion"
smtp_password = "secret-pw"
webhook = "https://chat.lab.example/hooks/abc123"
timeout = 7
user_domain = "lab.example"
failure_rate = 0.25
failure_window = 40
backlog_minutes = 20
backlog_growth = 5
idle_minutes = 30

[notify.user_mail]
alice = "alice@uni.example"
"""


def test_full_table():
    c = parse_notify(tomllib.loads(FULL)["notify"])
    assert (c.smtp_host, c.smtp_port, c.sender) == ("mail.lab.example", 587, "appion@lab.example")
    assert c.to == ("staff@lab.example", "night@lab.example") and c.admins == ("admin@lab.example",)
    assert c.smtp_security == "starttls"  # a login goes over TLS unless said otherwise
    assert c.channels == ("mail", "webhook") and c.timeout_s == 7.0
    assert c.limits == Limits(failure_rate=0.25, failure_window=40, backlog_minutes=20, backlog_growth=5,
                              idle_minutes=30)
    assert c.calc_user_address("alice") == "alice@uni.example"
    assert c.calc_user_address("bob") == "bob@lab.example"
    assert c.calc_user_address("carol@x.example") == "carol@x.example" and c.calc_user_address(None) is None
    assert "secret-pw" not in repr(c) and "abc123" not in repr(c)
    assert c.webhook_safe == "https://chat.lab.example/…" and c.smtp_safe == "smtp://appion@mail.lab.example:587"
    assert calc_job_recipients(c, "COMPLETED", "alice") == ("alice@uni.example",)
    assert calc_job_recipients(c, "FAILED", "alice") == ("admin@lab.example", "alice@uni.example")


def test_nothing_configured():
    assert parse_notify(None) == NotifyConfig() and parse_notify({}).channels == ()
    assert parse_notify({"webhook": "http://127.0.0.1:9/x"}).channels == ("webhook",)
    c = parse_notify({"smtp": "mail:25", "from": "a@b.example", "to": ["s@b.example"]})
    assert c.admins == ("s@b.example",) and c.smtp_security == "none"
    assert calc_job_recipients(c, "COMPLETED", "nobody") == ()  # no address known: no mail


@pytest.mark.parametrize("section, shown", [
    ({"smtp": "mail.lab.example"}, 'smtp must be "host:port"'),
    ({"smtp": "mail:99999", "from": "a@b.c"}, "port from 1 to 65535"),
    ({"smtp": "mail:25"}, 'smtp needs from = "appion@your.domain"'),
    ({"to": ["s@lab.example"]}, 'mail settings need smtp = "host:port"'),
    ({"smtp": "mail:25", "from": "a@b.c", "to": "s@lab.example"}, "to must be a list of mail addresses"),
    ({"smtp": "mail:25", "from": "a@b.c", "to": ["staff"]}, "to: 'staff' is not a mail address"),
    ({"smtp": "mail:25", "from": "a@b.c", "smtp_user": "u"}, "smtp_user and smtp_password go together"),
    ({"smtp": "mail:25", "from": "a@b.c", "smtp_security": "tls"}, "smtp_security must be one of none, starttls, ssl"),
    ({"webhook": "ftp://chat.example/x"}, "webhook must be an http:// or https:// URL"),
    ({"webhook": "chat.example/hooks/secret"}, "webhook must be an http:// or https:// URL with a host (it is not)"),
    ({"failure_rate": 2}, "failure_rate must be above 0 and at most 1"),
    ({"failure_window": 2.5}, "failure_window must be a whole number"),
    ({"idle_minutes": "15"}, "idle_minutes must be a number"),
    ({"backlog_minutes": 0}, "backlog_minutes must be above 0"),
    ({"timeout": True}, "timeout must be a number"),
    ({"user_mail": ["alice"]}, "user_mail must be a table"),
    ({"smtp": "mail:25", "from": "a@b.c", "user_mail": {"alice": "alice"}}, "user_mail.alice: 'alice' is not"),
    ({"smpt": "mail:25"}, "unknown key 'smpt' (known: smtp, from, to"),
])
def test_mistakes_are_named(section, shown):
    with pytest.raises(ConfigError) as exc:
        parse_notify(section)
    assert shown in str(exc.value) and str(exc.value).startswith("[notify] ")
    assert "secret" not in str(exc.value)


def test_not_a_table():
    with pytest.raises(ConfigError, match=r"^\[notify\] must be a table$"):
        parse_notify("smtp")
