"""Settings for the chat project: one file, driven by environment variables.

Every variable has a default that runs from a bare checkout (SQLite, in-memory channel
layer, Celery eager, the built-in demo provider). `.env.example` documents each one.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    """A string setting; `NAME_FILE` may point at a file holding the value (secrets)."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE: cannot read {path}: {exc}") from exc
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, not {raw!r}") from None


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None


def database_from_url(url: str) -> dict[str, object]:
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql"):
        raise ImproperlyConfigured(f"DATABASE_URL: unsupported scheme {parsed.scheme!r}")
    query = parse_qs(parsed.query)
    # Under ASGI every request in flight runs its ORM calls on a thread of its own (lent
    # from chatproject.request_threads), so "persistent" connections (CONN_MAX_AGE) are one
    # per thread, as many as requests at the busiest moment, past max_connections under load.
    # A pool hands them out and takes them back (Django's advice for ASGI).
    from chatproject import pg_pool  # psycopg only when PostgreSQL is in use

    pool_max = env_int("DB_POOL_MAX_SIZE", 20)
    pool: dict[str, object] | bool = False
    if pool_max > 0:
        pool = {
            "min_size": min(env_int("DB_POOL_MIN_SIZE", 2), pool_max),
            "max_size": pool_max,
            "timeout": env_float("DB_POOL_TIMEOUT_S", 10.0),
            # Django's default check makes a round trip on every checkout; this one makes it
            # only when the server has sent something since (chatproject/pg_pool.py).
            "check": pg_pool.check_connection,
        }
    options: dict[str, object] = {"pool": pool}
    if "sslmode" in query:
        options["sslmode"] = query["sslmode"][0]
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")),
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
        # With the pool a closed connection goes back to it; without, DB_CONN_MAX_AGE applies.
        "CONN_MAX_AGE": 0 if pool else env_int("DB_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": options,
    }


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "dev-only-insecure-key-change-me-0123456789-abcdefghijklmnopqrstuvwxyz"

ALLOWED_HOSTS = [h.strip() for h in env_str("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in env_str("CSRF_TRUSTED_ORIGINS", "").split(",") if o]
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "ninja",
    "providers",
    "telemetry",
    "threads",
]

# Django's own middleware, run on the event loop where it does no I/O (chatproject/middleware.py).
MIDDLEWARE = [
    "chatproject.middleware.SecurityMiddleware",
    "chatproject.static_files.AsyncWhiteNoiseMiddleware",
    "chatproject.middleware.SessionMiddleware",
    "chatproject.middleware.CommonMiddleware",
    "chatproject.middleware.CsrfViewMiddleware",
    "chatproject.middleware.AuthenticationMiddleware",
    "chatproject.middleware.MessageMiddleware",
    "chatproject.middleware.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]
# Django's checks for these look for its own class names; chatproject.middleware checks for
# the subclasses instead (registered by threads.apps).
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "chatproject.urls"
ASGI_APPLICATION = "chatproject.asgi.application"

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

DATABASE_URL = env_str("DATABASE_URL", "")
if DATABASE_URL:
    DATABASES = {"default": database_from_url(DATABASE_URL)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(BASE_DIR / "db.sqlite3")),
            "OPTIONS": {
                # WAL lets the page read while a reply is being saved.
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            },
            "TEST": {"NAME": env_str("SQLITE_TEST_PATH", "") or None},
            # Reusing the connection saves opening it (and registering SQLite's functions)
            # for every request.
            "CONN_MAX_AGE": env_int("DB_CONN_MAX_AGE", 60),
            "CONN_HEALTH_CHECKS": True,
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Threads kept for the database calls of sends and replies (chatproject/db.py);
# 0 = one for SQLite, four for PostgreSQL.
DB_THREADS = env_int("DB_THREADS", 0)

REDIS_URL = env_str("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 reads with a 5 s socket timeout by default, the same 5 s that
                # the layer's receive blocks on the server (BZPOPMIN): an idle socket's
                # consumer then crashed every few seconds. Reads may take longer than that.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30}],
                "capacity": 1000,
                "expiry": 60,
            },
        }
    }
    CACHES = {
        # Django's RedisCache with one connection pool per process (chatproject/cache.py).
        "default": {"BACKEND": "chatproject.cache.SharedPoolRedisCache", "LOCATION": REDIS_URL}
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chatproject.channel_layer.LocalChannelLayer",
            "CONFIG": {"capacity": 1000},
        }
    }
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "threads:index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# Sessions are read from the cache (and written through to the database): a page request
# or socket connect skips a query. The cache is Redis, shared by every process, when
# REDIS_URL is set; otherwise it is this process's memory, which is right because without
# REDIS_URL there is one process (the in-memory channel layer needs that anyway).
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# Security: production settings pass `manage.py check --deploy` when DEBUG is off.
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"daphne": {"level": "WARNING"}, "httpx": {"level": "WARNING"}},
}

# --- Chat -------------------------------------------------------------------------------
MAX_MESSAGE_CHARS = env_int("MAX_MESSAGE_CHARS", 32_000)
SYSTEM_PROMPT = env_str("SYSTEM_PROMPT", "You are a helpful assistant.")
DEFAULT_PROVIDER = env_str("DEFAULT_PROVIDER", "demo")
DEFAULT_MODEL = env_str("DEFAULT_MODEL", "demo-chat")
DEMO_USER = env_str("DEMO_USER", "demo")
DEMO_PASSWORD = env_str("DEMO_PASSWORD", "")
# Frames to the browser: the first delta goes at once, later ones are coalesced.
STREAM_FRAME_INTERVAL_MS = env_int("STREAM_FRAME_INTERVAL_MS", 40)
# The partial reply is saved at most this often while streaming (never per token).
STREAM_SAVE_INTERVAL_S = env_float("STREAM_SAVE_INTERVAL_S", 1.0)
# A streaming reply bumps its heartbeat every 10 s; one silent this long lost its process.
STREAM_STALE_AFTER_S = env_float("STREAM_STALE_AFTER_S", 60.0)
CELERY_BEAT_SCHEDULE["reap-stale-replies"] = {
    "task": "threads.tasks.reap_stale_replies",
    "schedule": 30.0,
}

# --- Providers --------------------------------------------------------------------------
LLM_CONNECT_TIMEOUT_S = env_float("LLM_CONNECT_TIMEOUT_S", 5.0)
LLM_READ_TIMEOUT_S = env_float("LLM_READ_TIMEOUT_S", 30.0)
LLM_MAX_STREAM_S = env_float("LLM_MAX_STREAM_S", 600.0)
LLM_MAX_TOKENS = env_int("LLM_MAX_TOKENS", 2048)
DEMO_TTFT_MS = env_int("DEMO_TTFT_MS", 250)
DEMO_TOKENS_PER_S = env_float("DEMO_TOKENS_PER_S", 40.0)
LLM_PROVIDERS: dict[str, dict[str, str]] = {
    "openai": {
        "api_key": env_str("OPENAI_API_KEY"),
        "base_url": env_str("OPENAI_BASE_URL", "https://api.openai.com/v1"),
    },
    "perplexity": {
        "api_key": env_str("PERPLEXITY_API_KEY"),
        "base_url": env_str("PERPLEXITY_BASE_URL", "https://api.perplexity.ai"),
    },
    "gemini": {
        "api_key": env_str("GEMINI_API_KEY"),
        "base_url": env_str("GEMINI_BASE_URL", "https://generativelanguage.googleapis.com/v1beta"),
    },
    "openrouter": {
        "api_key": env_str("OPENROUTER_API_KEY"),
        "base_url": env_str("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1"),
    },
    "anthropic": {
        "api_key": env_str("ANTHROPIC_API_KEY"),
        "base_url": env_str("ANTHROPIC_BASE_URL", "https://api.anthropic.com/v1"),
    },
    "openai_compat": {
        "api_key": env_str("OPENAI_COMPAT_API_KEY"),
        "base_url": env_str("OPENAI_COMPAT_BASE_URL", ""),
    },
}

# --- Resilience -------------------------------------------------------------------------
# Catalog reads are cached this long per process (saves in the admin clear it at once).
CATALOG_CACHE_TTL_S = env_float("CATALOG_CACHE_TTL_S", 30.0)
# Retries of one model before falling back: delays first, first*factor, ... up to the cap,
# each shortened by up to JITTER (a fraction) at random.
LLM_MAX_RETRIES = env_int("LLM_MAX_RETRIES", 2)
LLM_BACKOFF_FIRST_S = env_float("LLM_BACKOFF_FIRST_S", 1.0)
LLM_BACKOFF_FACTOR = env_float("LLM_BACKOFF_FACTOR", 2.0)
LLM_BACKOFF_CAP_S = env_float("LLM_BACKOFF_CAP_S", 8.0)
LLM_BACKOFF_JITTER = env_float("LLM_BACKOFF_JITTER", 0.25)
# A provider's Retry-After is honoured up to this; a longer wait falls back instead.
LLM_RETRY_AFTER_MAX_S = env_float("LLM_RETRY_AFTER_MAX_S", 30.0)
# One deadline per turn for queueing, retries and fallbacks before the first token.
LLM_TURN_DEADLINE_S = env_float("LLM_TURN_DEADLINE_S", 60.0)
# After a failure mid-answer: false keeps the partial text and fails the reply; true lets the
# next model in the chain continue it.
LLM_CONTINUE_PARTIAL = env_bool("LLM_CONTINUE_PARTIAL", False)
# A model cools down (is skipped) for COOLDOWN_S after COOLDOWN_FAILURES failures within
# COOLDOWN_WINDOW_S, or when half of at least COOLDOWN_MIN_REQUESTS recent requests failed.
LLM_COOLDOWN_S = env_float("LLM_COOLDOWN_S", 10.0)
LLM_COOLDOWN_FAILURES = env_int("LLM_COOLDOWN_FAILURES", 3)
LLM_COOLDOWN_MIN_REQUESTS = env_int("LLM_COOLDOWN_MIN_REQUESTS", 5)
LLM_COOLDOWN_WINDOW_S = env_float("LLM_COOLDOWN_WINDOW_S", 60.0)
# Per provider or provider:model, "concurrency/rpm" ("-" for none), e.g.
# LLM_LIMITS="openai=16/500,openrouter:deepseek/deepseek-r1:free=2/20". Models without an entry
# use the catalog's defaults.
LLM_LIMITS: dict[str, tuple[int | None, int | None]] = {}
for _item in filter(None, (i.strip() for i in env_str("LLM_LIMITS", "").split(","))):
    _key, _sep, _value = _item.rpartition("=")
    _conc, _slash, _rpm = _value.partition("/")
    try:
        LLM_LIMITS[_key] = (
            None if _conc.strip() in ("", "-") else int(_conc),
            None if _rpm.strip() in ("", "-") else int(_rpm),
        )
    except ValueError:
        raise ImproperlyConfigured(f"LLM_LIMITS: {_item!r} is not key=concurrency/rpm") from None
    if not _sep or not _key:
        raise ImproperlyConfigured(f"LLM_LIMITS: {_item!r} is not key=concurrency/rpm")
# Longest wait in the queue for a slot before the request fails (or falls back).
LLM_QUEUE_MAX_WAIT_S = env_float("LLM_QUEUE_MAX_WAIT_S", 30.0)
# With REDIS_URL, limits are shared through Redis: held slots are leases renewed while in use.
LLM_SLOT_LEASE_S = env_float("LLM_SLOT_LEASE_S", 30.0)
LLM_QUEUE_POLL_S = env_float("LLM_QUEUE_POLL_S", 0.2)
LLM_LIMITS_PREFIX = env_str("LLM_LIMITS_PREFIX", "llm-limits")

# --- Telemetry --------------------------------------------------------------------------
# /metrics and /api/metrics accept this as a Bearer token (besides a staff session); empty
# means staff sessions only.
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# Raw attempt rows are pruned after this many days (at least 32: budgets sum the month's rows);
# rollups keep minutes 2 days, hours 90 days, days for good.
TELEMETRY_RETENTION_DAYS = env_int("TELEMETRY_RETENTION_DAYS", 35)
# Several processes (daphne instances, Celery workers): point every process of a host at one
# directory, emptied before they start, and /metrics sums them. prometheus_client reads the
# variable when it is first imported, which is after settings.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", "")
if PROMETHEUS_MULTIPROC_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
CELERY_BEAT_SCHEDULE.update(
    {
        "telemetry-fold": {"task": "telemetry.tasks.fold_rollups", "schedule": 60.0},
        "telemetry-probe": {"task": "telemetry.tasks.probe_readiness", "schedule": 60.0},
        "telemetry-prune": {"task": "telemetry.tasks.prune_telemetry", "schedule": 3600.0},
    }
)
