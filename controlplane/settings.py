"""One settings module, driven by environment variables.

Production is the default (DEBUG off): SECRET_KEY and ALLOWED_HOSTS must be set, or start-up fails loudly,
and the HTTPS settings default to their secure values (docs/deploy.md has a production environment file).
Development (DEBUG=1, which `make` and the tests set): SQLite in var/, Redis on localhost, a throwaway key.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from exc


def env_list(name: str) -> list[str]:
    return [item.strip() for item in (env_str(name, "") or "").split(",") if item.strip()]


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from exc


# Off unless asked for: a forgotten variable must never serve tracebacks and a known key to the internet.
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")
if not DEBUG:
    if not SECRET_KEY:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set when DEBUG is off (DEBUG is off unless DEBUG=1). For local development "
            "set DEBUG=1; in production generate a key: python -c 'import secrets; print(secrets.token_urlsafe(50))'")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set (comma-separated) when DEBUG is off")
else:
    SECRET_KEY = SECRET_KEY or "dev-only-insecure-key-do-not-use-in-production"
    ALLOWED_HOSTS = ALLOWED_HOSTS or ["localhost", "127.0.0.1", "[::1]", "testserver"]

# HTTPS. Secure by default in production, plain HTTP in development; each one can be set from the environment.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
# An hour until the deployment is known to work on HTTPS only; docs/deploy.md then raises it to a year.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Behind a TLS-terminating proxy: "HTTP_X_FORWARDED_PROTO,https" (the header the proxy sets, and its value).
# Only set it when the proxy always sets or strips that header, or clients could claim HTTPS themselves.
_proxy_header = env_list("SECURE_PROXY_SSL_HEADER")
if _proxy_header and len(_proxy_header) != 2:
    raise ImproperlyConfigured("SECURE_PROXY_SSL_HEADER must be 'HEADER,value', e.g. HTTP_X_FORWARDED_PROTO,https")
SECURE_PROXY_SSL_HEADER = tuple(_proxy_header) or None
# Origins (scheme + host) a form may be posted from when it differs from the Host header, e.g. behind a proxy.
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# Where generated files live: SQLite db, model weights, raw-result artifacts. Never committed.
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)  # SQLite cannot create its folder
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media")))
MEDIA_URL = "/media/"
MODEL_DIR = Path(env_str("MODEL_DIR", str(VAR_DIR / "models")))
# Uploaded ONNX models (controlplane/registry) stream to MEDIA_ROOT/models; larger uploads are refused mid-stream.
MODEL_UPLOAD_MAX_BYTES = env_int("MODEL_UPLOAD_MAX_BYTES", 2 * 2**30)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "controlplane.experiments",
    "controlplane.registry",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "controlplane.experiments.limits.RejectNulMiddleware",  # 400 for a NUL in a query or form, before any view
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "controlplane.wsgi.application"
ASGI_APPLICATION = "controlplane.asgi.application"

DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
            # Web server, worker and commands share the file: wait for locks instead of failing.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
            # A file, not :memory:, so a real Celery worker process in the tests sees the test database.
            "TEST": {"NAME": VAR_DIR / "test.sqlite3"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "experiment-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "staticfiles"
# Third-party JS comes from npm (package.json) and is served locally: the product needs no internet.
STATICFILES_DIRS = [BASE_DIR / "static", ("vendor", BASE_DIR / "node_modules" / "chart.js" / "dist")]
WHITENOISE_USE_FINDERS = True

# Request bounds (controlplane/experiments/limits.py). A whole request: an API spec may carry several traces.
REQUEST_MAX_BYTES = 32 * 1024 * 1024
# One uploaded file: the largest a form accepts (a trace, workers.spec.MAX_TRACE_BYTES); beyond it nothing is
# stored while the rest streams in, and the form refuses the file by its size.
UPLOAD_MAX_BYTES = 8 * 1024 * 1024
# A body other than files (Django reads API JSON bodies through it too): the whole request's bound.
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_MAX_BYTES
FILE_UPLOAD_MAX_MEMORY_SIZE = 2621440  # Django's default: larger uploads go to a temporary file
FILE_UPLOAD_HANDLERS = [
    "controlplane.experiments.limits.CappedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# Bearer token a Prometheus scraper sends to GET /metrics; empty: the endpoint refuses every request.
METRICS_TOKEN = env_str("METRICS_TOKEN", "") or ""
# The physical device this worker's trials run on, as its device lease names it (docs/deploy.md). Unset: a
# GPU's UUID, else host:device. Two workers on one host standing for two devices need one each.
DEVICE_ID = env_str("DEVICE_ID", "") or ""

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL], "prefix": env_str("CHANNELS_PREFIX", "slsbench")},
    }
}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None  # pages read the Trial rows, not the result backend
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True  # execute_trial is idempotent (compare-and-set claim)
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # trials are long: never hoard them
CELERY_TASK_DEFAULT_QUEUE = "pool.cpu"
CELERY_TASK_ROUTES = {"reports.export": {"queue": "reports"}}  # exports never wait behind trials
# Default limits cover the longest trial the spec allows (1 h of load + margin); run enqueues each trial with
# limits fitted to its own run time (services.trial_time_limits_s).
CELERY_TASK_SOFT_TIME_LIMIT = env_int("TRIAL_SOFT_TIME_LIMIT_S", 4500)
CELERY_TASK_TIME_LIMIT = CELERY_TASK_SOFT_TIME_LIMIT + 120
# Longer than the longest task, or Redis redelivers a running trial to a second worker.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_TASK_TIME_LIMIT + 600}
CELERY_TASK_ALWAYS_EAGER = False

# Failed logins (the login form) and token requests (/api/token/) per client address: "10/min", "100/h".
LOGIN_RATE = env_str("LOGIN_RATE", "10/min")
API_TOKEN_TTL_S = env_int("API_TOKEN_TTL_S", 30 * 86400)
# Throttle counters live in the cache: Redis in production, so every web process counts the same attempts.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"} if DEBUG else {
    "BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": env_str("CACHE_URL", REDIS_URL),
    "KEY_PREFIX": "slsbench"}}

# Reliability (controlplane.experiments.reaper, workers.tasks). Tests shorten them; production keeps the defaults.
DEVICE_LEASE_TTL_S = env_float("DEVICE_LEASE_TTL_S", 30.0)  # a lost worker blocks its device at most this long
TRIAL_STALE_AFTER_S = env_float("TRIAL_STALE_AFTER_S", 30.0)  # no heartbeat for this long: the worker may be lost
REAPER_INTERVAL_S = env_float("REAPER_INTERVAL_S", 10.0)  # how often each worker's reaper thread sweeps
RESULT_STORE_RETRY_S = env_float("RESULT_STORE_RETRY_S", 120.0)  # a finished trial retries storing this long

REST_FRAMEWORK = {
    # Behind N proxies the client address is the Nth-from-last X-Forwarded-For entry (0: REMOTE_ADDR).
    "NUM_PROXIES": env_int("NUM_PROXIES", 0),
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "controlplane.experiments.tokens.ExpiringTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PARSER_CLASSES": ["controlplane.experiments.limits.LimitedJSONParser",
                               "rest_framework.parsers.FormParser", "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_PAGINATION_CLASS": "controlplane.experiments.limits.BoundedLimitOffsetPagination",
    "PAGE_SIZE": 50,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "slsbench control plane API",
    "DESCRIPTION": "Experiments, functions, SLOs, workloads, variants, trials and their results.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Swagger UI from the sidecar package, not a CDN: the product must work with no internet.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "controlplane.experiments.limits.document_bad_request"],
}

# Users' own torch models: {"model-key": "dotted.path.to.factory"} (trusted code); the factory returns an
# nn.Module. Installed packages can instead declare them as `slsbench.models` entry points (workers.zoo), found
# at start-up. Either way weights load only via safetensors or torch.load(weights_only=True).
USER_MODELS = {}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    # WeasyPrint reports each layout step at INFO ("Step 5 - Creating layout - Page 1"): noise for our users.
    "loggers": {"weasyprint.progress": {"level": "WARNING"}},
}
