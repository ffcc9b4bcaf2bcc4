from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from inbox.env import env_bool, env_hosts, env_int, env_list, parse_database_url

pytestmark = pytest.mark.smoke


def test_env_bool_reads_common_spellings() -> None:
    assert env_bool("X", environ={"X": "yes"}) is True
    assert env_bool("X", environ={"X": "0"}) is False
    assert env_bool("X", True, environ={}) is True


def test_env_bool_names_the_variable_on_a_bad_value() -> None:
    with pytest.raises(ImproperlyConfigured, match="DEBUG must be a boolean"):
        env_bool("DEBUG", environ={"DEBUG": "maybe"})


def test_env_int_rejects_text_and_values_below_minimum() -> None:
    with pytest.raises(ImproperlyConfigured, match="EMAIL_PORT must be an integer"):
        env_int("EMAIL_PORT", 25, environ={"EMAIL_PORT": "smtp"})
    with pytest.raises(ImproperlyConfigured, match="EMAIL_PORT must be at least 1"):
        env_int("EMAIL_PORT", 25, environ={"EMAIL_PORT": "0"}, minimum=1)
    assert env_int("EMAIL_PORT", 25, environ={}) == 25


def test_env_list_splits_and_trims() -> None:
    assert env_list("H", [], environ={"H": " a.example, b.example ,"}) == ["a.example", "b.example"]


def test_env_hosts_reads_plain_host_names() -> None:
    hosts = env_hosts("H", environ={"H": "Images.Example.com, cdn.example.org,images.example.com"})
    assert hosts == ["images.example.com", "cdn.example.org"]
    assert env_hosts("H", environ={}) == []


@pytest.mark.parametrize(
    "value",
    [
        "https://images.example.com",
        "images.example.com:443",
        "*.example.com",
        "a.example/x",
        "a; b",
    ],
)
def test_env_hosts_refuses_anything_but_a_host_name(value: str) -> None:
    # Each name goes into the Content-Security-Policy header as it is.
    with pytest.raises(ImproperlyConfigured, match="H must be comma-separated host names"):
        env_hosts("H", environ={"H": value})


def test_env_hosts_may_allow_wildcards_of_a_domain() -> None:
    hosts = env_hosts("H", environ={"H": "*.Example.com, cdn.example.org"}, wildcards=True)
    assert hosts == ["*.example.com", "cdn.example.org"]


@pytest.mark.parametrize("value", ["*.com", "*", "*example.com", "a.*.example.com", "**.a.b"])
def test_env_hosts_refuses_a_wildcard_of_a_top_level_domain_or_inside_a_name(value: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=r"like images\.example\.com or \*\.example"):
        env_hosts("H", environ={"H": value}, wildcards=True)


def test_database_url_postgres() -> None:
    config = parse_database_url(
        "DATABASE_URL", "postgres://u:p%40ss@db.internal:5433/inbox?sslmode=require"
    )
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["NAME"], config["USER"], config["PASSWORD"]) == ("inbox", "u", "p@ss")
    assert (config["HOST"], config["PORT"]) == ("db.internal", "5433")
    assert config["OPTIONS"] == {"sslmode": "require"}


def test_database_url_sqlite_relative_and_absolute() -> None:
    assert parse_database_url("D", "sqlite:///var/x.db")["NAME"] == "var/x.db"
    assert parse_database_url("D", "sqlite:////srv/x.db")["NAME"] == "/srv/x.db"


def test_database_url_rejects_unknown_scheme_and_missing_name() -> None:
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL must start with"):
        parse_database_url("DATABASE_URL", "mysql://u@h/db")
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL must name a database"):
        parse_database_url("DATABASE_URL", "postgres://u@h")
