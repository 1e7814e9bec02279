"""Settings: DEBUG off unless asked for, a loud start-up failure in production when secrets are missing,
every HTTPS setting from the environment, and `check --deploy` clean with the documented production file."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECURITY_VARS = ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
                 "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SECURE_PROXY_SSL_HEADER",
                 "CSRF_TRUSTED_ORIGINS")


def clean_env(tmp_path, **env) -> dict:
    dropped = ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "VAR_DIR", *SECURITY_VARS)
    clean = {k: v for k, v in os.environ.items() if k not in dropped}
    clean.update(VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="controlplane.settings", **env)
    return clean


def load_settings(tmp_path, *names, **env) -> subprocess.CompletedProcess:
    names = names or ("DATABASES['default']['ENGINE']", "DEBUG", "CELERY_TASK_SERIALIZER", "CELERY_ACCEPT_CONTENT")
    code = ("import django; django.setup(); from django.conf import settings as s; "
            f"print({', '.join('s.' + n for n in names)})")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=60)


def test_debug_is_off_unless_set_so_a_bare_start_needs_a_secret_key(tmp_path):
    out = load_settings(tmp_path)
    assert out.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off" in out.stderr and "DEBUG=1" in out.stderr


def test_local_defaults_are_sqlite_debug_and_json_only_celery(tmp_path):
    out = load_settings(tmp_path, DEBUG="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["django.db.backends.sqlite3", "True", "json", "['json']"]
    assert (tmp_path / "var").is_dir()  # created, so SQLite can open its file there


def test_database_url_selects_postgres(tmp_path):
    out = load_settings(tmp_path, DEBUG="1", DATABASE_URL="postgres://postgres@127.0.0.1:5432/test")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "django.db.backends.postgresql"


@pytest.mark.parametrize("env, missing", [
    ({"DEBUG": "0", "ALLOWED_HOSTS": "example.org"}, "SECRET_KEY must be set when DEBUG is off"),
    ({"DEBUG": "0", "SECRET_KEY": "s3cret-for-this-test"}, "ALLOWED_HOSTS must be set"),
])
def test_production_without_secret_key_or_hosts_refuses_to_start(tmp_path, env, missing):
    out = load_settings(tmp_path, **env)
    assert out.returncode != 0
    assert "ImproperlyConfigured" in out.stderr and missing in out.stderr


def test_production_with_both_set_starts(tmp_path):
    out = load_settings(tmp_path, DEBUG="0", SECRET_KEY="s3cret-for-this-test", ALLOWED_HOSTS="example.org")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1] == "False"


def test_a_malformed_boolean_is_a_clear_error(tmp_path):
    out = load_settings(tmp_path, DEBUG="maybe")
    assert out.returncode != 0 and "DEBUG must be a boolean" in out.stderr


PROD = {"DEBUG": "0", "SECRET_KEY": "s3cret-for-this-test", "ALLOWED_HOSTS": "example.org"}
HTTPS_NAMES = ("SECURE_SSL_REDIRECT", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS",
               "SECURE_PROXY_SSL_HEADER", "CSRF_TRUSTED_ORIGINS")


def test_https_settings_are_secure_by_default_in_production_and_off_in_development(tmp_path):
    prod = load_settings(tmp_path, *HTTPS_NAMES, **PROD)
    assert prod.returncode == 0, prod.stderr
    assert prod.stdout.split() == ["True", "True", "True", "3600", "None", "[]"]
    dev = load_settings(tmp_path, *HTTPS_NAMES, DEBUG="1")
    assert dev.returncode == 0, dev.stderr
    assert dev.stdout.split() == ["False", "False", "False", "0", "None", "[]"]


def test_every_https_setting_comes_from_the_environment(tmp_path):
    out = load_settings(tmp_path, *HTTPS_NAMES, **PROD, SECURE_SSL_REDIRECT="0", SESSION_COOKIE_SECURE="false",
                        CSRF_COOKIE_SECURE="no", SECURE_HSTS_SECONDS="31536000",
                        SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO, https",
                        CSRF_TRUSTED_ORIGINS="https://a.example.org, https://b.example.org")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("False False False 31536000 ('HTTP_X_FORWARDED_PROTO', 'https') "
                                  "['https://a.example.org', 'https://b.example.org']")


def test_a_proxy_header_without_its_value_is_a_clear_error(tmp_path):
    out = load_settings(tmp_path, **PROD, SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO")
    assert out.returncode != 0 and "SECURE_PROXY_SSL_HEADER must be 'HEADER,value'" in out.stderr


def production_env_file() -> dict[str, str]:
    """The environment file docs/deploy.md gives under "Production settings" (its ```env block)."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    section = text.split("## Production settings", 1)[1]
    block = re.search(r"```env\n(.*?)```", section, re.S).group(1)
    pairs = [line.split("=", 1) for line in block.splitlines() if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def run_deploy_check(tmp_path, env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in env.items() if k != "DATABASE_URL"}  # the check needs no database: keep SQLite
    return subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], cwd=ROOT,
                          env=clean_env(tmp_path, **env), capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean_with_the_documented_production_environment(tmp_path):
    env = production_env_file()
    assert env["DEBUG"] == "0" and set(SECURITY_VARS) <= set(env)
    out = run_deploy_check(tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "System check identified no issues" in out.stdout


def test_check_deploy_warns_when_a_production_setting_is_turned_off(tmp_path):
    # The clean run above is not clean by accident: the same check flags an insecure variation.
    out = run_deploy_check(tmp_path, {**production_env_file(), "SESSION_COOKIE_SECURE": "0"})
    assert out.returncode != 0 and "security.W012" in out.stdout + out.stderr
