"""Settings: safe local defaults, and a loud start-up failure in production when secrets are missing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_settings(tmp_path, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "VAR_DIR")}
    clean.update(VAR_DIR=str(tmp_path / "var"), DJANGO_SETTINGS_MODULE="controlplane.settings", **env)
    code = ("import django; django.setup(); from django.conf import settings as s; "
            "print(s.DATABASES['default']['ENGINE'], s.DEBUG, s.CELERY_TASK_SERIALIZER, s.CELERY_ACCEPT_CONTENT)")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=60)


def test_local_defaults_are_sqlite_debug_and_json_only_celery(tmp_path):
    out = load_settings(tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["django.db.backends.sqlite3", "True", "json", "['json']"]
    assert (tmp_path / "var").is_dir()  # created, so SQLite can open its file there


def test_database_url_selects_postgres(tmp_path):
    out = load_settings(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/test")
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
