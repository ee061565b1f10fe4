"""AlgoTerm settings: one file, driven by environment variables.

Development defaults are safe to run on a laptop; with DJANGO_ENV=production the unsafe ones are refused at
start-up (see `_refuse_unsafe_production_settings`). The configuration table in README.md lists every variable.
"""

import os
import sys
from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue
from redis.asyncio.retry import Retry as AsyncRedisRetry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()

DJANGO_ENV = env.str("DJANGO_ENV", default="development")
if DJANGO_ENV not in {"development", "test", "production"}:
    raise ImproperlyConfigured(f"DJANGO_ENV must be development, test or production, not {DJANGO_ENV!r}")
IS_PRODUCTION = DJANGO_ENV == "production"

# Well-known development values: fine on a laptop, refused in production.
DEV_SECRET_KEY = "dev-only-secret-key-algoterm-never-use-in-production-0123456789"
DEV_ENCRYPTION_KEY = "ZGV2LW9ubHktZW5jcnlwdGlvbi1rZXktYWxnb3Rlcm0="

SECRET_KEY = env.str("SECRET_KEY", default=DEV_SECRET_KEY)
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if IS_PRODUCTION else ["127.0.0.1", "localhost", "testserver"])
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=CORS_ALLOWED_ORIGINS)
# Fernet keys, newest first; older keys stay to decrypt until `manage.py rotate_encryption` re-encrypts.
ENCRYPTION_KEYS = env.list("ENCRYPTION_KEYS", default=[] if IS_PRODUCTION else [DEV_ENCRYPTION_KEY])
# Number of reverse proxies in front of the web process; decides which X-Forwarded-For entry is the client.
NUM_PROXIES = env.int("NUM_PROXIES", default=0)

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'algoterm.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Embedded mode shares one SQLite file between the web, worker and scheduler threads.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
    # A pool of connections per process (psycopg's, through Django): an ASGI request runs in a context of its own,
    # so without one every request would connect anew, and persistent connections (CONN_MAX_AGE) would pile up
    # one per context. A URL that asks for conn_max_age keeps persistent connections instead; a MAX_SIZE of 0 turns
    # the pool off. A request waits at most TIMEOUT for a connection: during a PostgreSQL outage that is how soon
    # it answers 503. A pool opens only what its threads use at once (a web process one or two, a worker child one;
    # embedded mode's threads more) and closes idle extras after ten minutes: the maximum is a bound, not a cost.
    # Off by default under DJANGO_ENV=test: the suite's throwaway Celery workers expect a refused connection to fail
    # at once, where a pool waits TIMEOUT (the tests of the pool, the stack and the benchmarks turn it on).
    DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=0 if DJANGO_ENV == "test" else 20)
    if DATABASE_POOL_MAX_SIZE > 0 and not DATABASES["default"].get("CONN_MAX_AGE"):
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": min(env.int("DATABASE_POOL_MIN_SIZE", default=1), DATABASE_POOL_MAX_SIZE),
            "max_size": DATABASE_POOL_MAX_SIZE,
            "timeout": env.float("DATABASE_POOL_TIMEOUT", default=2.0),
        }
        # Celery's Django fix-up closes a prefork child's whole pool around every task unless told to reuse it:
        # reused here for this many tasks, while algoterm.celery hands the connection back to the pool after each.
        CELERY_DB_REUSE_MAX = 1000
if env.str("TEST_DATABASE_NAME", default=""):
    # Lets two test runs share one PostgreSQL server without dropping each other's test database.
    DATABASES["default"]["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
# Embedded mode: no Redis, so the channel layer, cache, Celery broker and scheduler live inside one process.
EMBEDDED = not REDIS_URL
REDIS_KEY_PREFIX = env.str("REDIS_KEY_PREFIX", default="algoterm")
if (_test_worker := os.environ.get("PYTEST_XDIST_WORKER", "")) and "_pytest" in sys.modules:
    # Each parallel test worker keeps its cache, queues and groups apart (its database is apart already); through
    # the environment, so the Celery workers and servers a test starts share the worker's prefix, while a process
    # a test starts with a prefix of its own keeps that one.
    REDIS_KEY_PREFIX = os.environ["REDIS_KEY_PREFIX"] = f"{REDIS_KEY_PREFIX}-{_test_worker}"
# Read timeout of the channel layer's Redis connections; must exceed channels_redis's blocking read (5 s).
CHANNEL_LAYER_SOCKET_TIMEOUT = 30

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework_simplejwt",
    "rest_framework_simplejwt.token_blacklist",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_celery_beat",
    "algoterm.apps.AlgotermConfig",
    "accounts",
    "brokers",
    "marketdata",
    "orders",
    "rms",
    "strategies",
    "billing",
    "algoterm.console.apps.ConsoleConfig",
]

MIDDLEWARE = [
    "algoterm.metrics.RequestMetricsMiddleware",
    "algoterm.api.middleware.RequestIdMiddleware",
    "algoterm.api.middleware.RequestBodyLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "algoterm.api.middleware.ApiHeadersMiddleware",
    "algoterm.api.middleware.UnhandledExceptionMiddleware",
]

ROOT_URLCONF = "algoterm.urls"
ASGI_APPLICATION = "algoterm.asgi.application"
WSGI_APPLICATION = "algoterm.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "algoterm" / "templates"],
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

AUTH_USER_MODEL = "accounts.User"
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.AllowAllUsersModelBackend"]
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {
        "NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator",
        "OPTIONS": {"user_attributes": ("email", "name", "phone")},
    },
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-in"
# Storage is UTC; display (admin, API offsets) is India's. Market logic names Asia/Kolkata explicitly.
TIME_ZONE = "Asia/Kolkata"
USE_I18N = True
USE_TZ = True
MARKET_TIMEZONE = "Asia/Kolkata"

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from the apps' static folders too, so a fresh clone works before collectstatic.
WHITENOISE_USE_FINDERS = True

if EMBEDDED:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "algoterm",
            # The quote cache alone holds one entry per instrument; the default 300 would evict quotes every tick.
            "OPTIONS": {"MAX_ENTRIES": 1_000_000},
        }
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": REDIS_KEY_PREFIX,
            # Cache calls are small: give up quickly when Redis is down, so a request degrades or answers 503 in
            # about a second instead of waiting out redis-py's 5 s defaults on every call.
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 3},
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            # channels_redis's layer, ending receive loops whose cancellation Python 3.11 swallowed (see module).
            "BACKEND": "algoterm.channel_layer.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        # Every socket's receive loop blocks in BZPOPMIN for channels_redis's brpop_timeout (5 s);
                        # a read timeout equal to it (redis-py's default, 5 s) killed every idle socket after 5 s.
                        "socket_timeout": CHANNEL_LAYER_SOCKET_TIMEOUT,
                        # A handshake during a Redis outage is closed with 1013 after this, not after a long hang.
                        "socket_connect_timeout": 2,
                        # The layer's connections live as long as the process: let TCP notice a peer that vanished.
                        "socket_keepalive": True,
                        # A pooled connection idle this long is PINGed before reuse, and one retry reconnects it
                        # when Redis restarted or a middlebox dropped it, instead of failing the send.
                        "health_check_interval": 15,
                        "retry": AsyncRedisRetry(ExponentialBackoff(cap=1.0, base=0.1), 1, (RedisConnectionError,)),
                    }
                ],
                "prefix": f"{REDIS_KEY_PREFIX}:asgi",
                "capacity": 1000,
                "expiry": 30,
                # Group membership outlives the longest WebSocket (the default 1 day would silently stop ticks).
                "group_expiry": 7 * 24 * 3600,
            },
        }
    }

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.AccessTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_PAGINATION_CLASS": "algoterm.api.pagination.PagePagination",
    "PAGE_SIZE": 20,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "algoterm.api.schema.AutoSchema",
    "EXCEPTION_HANDLER": "algoterm.api.errors.exception_handler",
    "NUM_PROXIES": NUM_PROXIES,
    "DEFAULT_THROTTLE_CLASSES": ["billing.throttles.PlanRateThrottle"],
    # Per client IP on the routes anyone can call without a token (algoterm.api.throttles.ClientIpRateThrottle).
    # TradingView sends every customer's alerts from a handful of addresses, hence the generous webhook rate.
    "DEFAULT_THROTTLE_RATES": {
        "register": env.str("REGISTER_THROTTLE_RATE", default="20/hour"),
        "login": env.str("LOGIN_THROTTLE_RATE", default="60/minute"),
        "refresh": env.str("REFRESH_THROTTLE_RATE", default="120/minute"),
        "strategy_webhook": env.str("STRATEGY_WEBHOOK_THROTTLE_RATE", default="600/minute"),
        "broker_postback": env.str("BROKER_POSTBACK_THROTTLE_RATE", default="600/minute"),
        "billing_webhook": env.str("BILLING_WEBHOOK_THROTTLE_RATE", default="120/minute"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "COERCE_DECIMAL_TO_STRING": False,  # money is a JSON number (API contract)
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=15),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=7),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "UPDATE_LAST_LOGIN": False,
    "SIGNING_KEY": env.str("JWT_SIGNING_KEY", default=SECRET_KEY),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "USER_ID_FIELD": "id",
    "USER_ID_CLAIM": "user_id",
}

# Failed logins allowed per window (accounts.login_limits): per email from one client IP, per client IP over all
# emails, and per email over all IPs. The last is far higher and, once reached, leaves each further IP one attempt
# rather than locking the email, so nobody can lock a user out from another address.
LOGIN_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
LOGIN_FAILURE_IP_LIMIT = env.int("LOGIN_FAILURE_IP_LIMIT", default=20)
LOGIN_FAILURE_EMAIL_LIMIT = env.int("LOGIN_FAILURE_EMAIL_LIMIT", default=100)
LOGIN_FAILURE_WINDOW = timedelta(seconds=env.int("LOGIN_FAILURE_WINDOW_SECONDS", default=15 * 60))

# WebSocket defaults until plans set them per user.
WS_MAX_MESSAGES_PER_SECOND = env.int("WS_MAX_MESSAGES_PER_SECOND", default=20)
WS_PROTOCOL_VERSION = 1
# Protocol-level pings from the web server (uvicorn's --ws-ping-interval/--ws-ping-timeout, passed by `serve`): they
# keep idle sockets open through proxies and load balancers that drop quiet connections (often after 60 s), and
# close sockets whose client stopped answering. 0 turns them off.
WS_PING_INTERVAL_SECONDS = env.float("WS_PING_INTERVAL_SECONDS", default=20.0)
WS_PING_TIMEOUT_SECONDS = env.float("WS_PING_TIMEOUT_SECONDS", default=20.0)
# A web process's WebSocket counts stay in the gauge this long after it last refreshed them (every third of it).
WS_GAUGE_TTL_SECONDS = env.float("WS_GAUGE_TTL_SECONDS", default=30.0)

SPECTACULAR_SETTINGS = {
    "TITLE": "AlgoTerm API",
    "DESCRIPTION": (
        "Multi-tenant algorithmic trading for Indian retail traders. Authenticate with `POST /api/auth/login`, "
        "then send `Authorization: Bearer <access>`. Every error has the shape of the `Error` schema."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api",
    "ENUM_NAME_OVERRIDES": {
        "ErrorCodeEnum": "algoterm.api.errors.ErrorCode",
        "OrderStatusEnum": "orders.models.OrderStatus",
        "BrokerAccountStatusEnum": "brokers.models.AccountStatus",
        "UserRoleEnum": "accounts.models.Role",
        "OrderRoleEnum": "orders.models.LegRole",
        "LegResultStatusEnum": ["placed", "failed", "not_sent", "cancelled"],
        "BulkStatusEnum": ["placed", "partial", "failed", "rolled_back"],
        "ProductEnum": "brokers.protocol.Product",
        "StrategyStatusEnum": "strategies.models.StrategyStatus",
        "StrategyRunStatusEnum": "strategies.models.RunStatus",
        "BacktestStatusEnum": "strategies.models.BacktestStatus",
        "SignalStatusEnum": "strategies.models.SignalStatus",
        "SubscriptionStatusEnum": "billing.models.SubscriptionStatus",
        "PaymentStatusEnum": "billing.models.PaymentStatus",
        "StrategyKindEnum": "strategies.models.KIND_CHOICES",
        "ExitUnitEnum": ["points", "percent"],
        "AuditEventKindEnum": "accounts.models.AuditEvent.Kind",
        "PlatformModeEnum": ["live", "paper"],  # values only: RunMode has the same choices with labels
        "UserStatusEnum": ["active", "deactivated"],
        "StrategyProductEnum": ["MIS", "NRML"],
        "StartModeEnum": ["backtest", "paper", "live"],
        "SideEnum": ["BUY", "SELL"],
        "OptionTypeEnum": ["CE", "PE"],
        "WebhookOutcomeEnum": "billing.models.WebhookOutcome",
        "CandleIntervalEnum": "marketdata.candles.INTERVALS",
        "SignalSourceEnum": ["tradingview", "chartink", "rule", "other"],
        "OrderSourceEnum": "orders.models.OrderSource",
        "SignalActionEnum": ["BUY", "SELL", "SHORT", "COVER", "EXIT", "ENTRY"],
    },
    "SWAGGER_UI_SETTINGS": {"persistAuthorization": True, "displayRequestDuration": True},
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "algoterm.api.schema.nullable_references",
        "algoterm.api.schema.openapi_links",
    ],
}

CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = MARKET_TIMEZONE
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600, "global_keyprefix": f"{REDIS_KEY_PREFIX}:celery:"}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # workers log through LOGGING below: JSON, redacted
# Queues by urgency. `urgent` carries what moves money or guards it (orders, exits, the risk engine, strategy fires,
# reconciliation); `default` the housekeeping; `backtests` has workers of its own, so a long backtest never delays an
# exit. Every task is named here: a task without a route fails a test, never lands silently on the wrong queue.
CELERY_TASK_QUEUES = (Queue("urgent"), Queue("default"), Queue("backtests"))
CELERY_TASK_DEFAULT_QUEUE = "default"
TASK_QUEUE_URGENT, TASK_QUEUE_DEFAULT, TASK_QUEUE_BACKTESTS = "urgent", "default", "backtests"
CELERY_TASK_ROUTES = {
    **{
        name: {"queue": TASK_QUEUE_URGENT}
        for name in (
            "orders.tasks.reconcile_account",
            "orders.tasks.reconcile_open",
            "orders.tasks.place_exits",
            "orders.tasks.refresh_pushed_order",
            "orders.tasks.follow_up_fill",
            "orders.tasks.settle_oco",
            "orders.tasks.trail_stops",
            "rms.tasks.sweep",
            "rms.tasks.evaluate_symbols",
            "rms.tasks.evaluate_users",
            "rms.tasks.evaluate_pending",
            "rms.tasks.funds_snapshot_refresh",
            "strategies.tasks.dispatch_fires",
            "strategies.tasks.fire_chunk",
            "strategies.tasks.recover_fires",
            "strategies.tasks.evaluate_rules",
            # Beat's heartbeat rides the urgent path, so health's scheduler age says how long order work waits.
            "algoterm.tasks.heartbeat",
        )
    },
    **{
        name: {"queue": TASK_QUEUE_DEFAULT}
        for name in (
            "algoterm.tasks.check_holiday_lists",
            "algoterm.tasks.publish_order_rates",
            "algoterm.tasks.evaluate_alerts",
            "accounts.tasks.purge_expired_tokens",
            "accounts.tasks.purge_old_notifications",
            "brokers.tasks.expire_sessions",
            "brokers.tasks.remind_logins",
            "brokers.tasks.renew_sessions",
            "marketdata.tasks.refresh_instrument_masters",
            "marketdata.tasks.refresh_instrument_master",
            "orders.tasks.purge_idempotency_keys",
            "billing.tasks.expire_trials",
            "strategies.tasks.expire_backtests",
        )
    },
    "strategies.tasks.backtest_run": {"queue": TASK_QUEUE_BACKTESTS},
}
# The queues `serve` starts workers for: the main worker takes urgent and default, the backtest worker (few slots:
# a backtest is CPU-bound) only backtests.
WORKER_QUEUES = (TASK_QUEUE_URGENT, TASK_QUEUE_DEFAULT)
# Processes of the main (orders, exits, risk, strategy fires) worker under distributed serve: fires and orders wait on
# the database and the broker more than on the CPU, so more processes than cores keep a 09:20 burst moving.
WORKER_CONCURRENCY = env.int("WORKER_CONCURRENCY", default=4)
BACKTEST_WORKER_CONCURRENCY = env.int("BACKTEST_WORKER_CONCURRENCY", default=1)
# A backtest past its soft limit is stopped and marked failed with the reason; the hard limit kills a worker child
# that ignores the soft one (its row is then failed by strategies.tasks.expire_backtests).
BACKTEST_SOFT_TIME_LIMIT_SECONDS = env.int("BACKTEST_SOFT_TIME_LIMIT_SECONDS", default=300)
BACKTEST_HARD_TIME_LIMIT_SECONDS = env.int("BACKTEST_HARD_TIME_LIMIT_SECONDS", default=360)
# A backtest still queued after this long (its message lost with an embedded worker's memory) is failed, so it no
# longer holds one of the user's backtest slots.
BACKTEST_QUEUED_EXPIRY_SECONDS = env.int("BACKTEST_QUEUED_EXPIRY_SECONDS", default=6 * 3600)
# Over the plan's cap of queued and running backtests, a start answers 429 with this Retry-After.
BACKTEST_LIMIT_RETRY_AFTER_SECONDS = env.int("BACKTEST_LIMIT_RETRY_AFTER_SECONDS", default=30)
DJANGO_CELERY_BEAT_TZ_AWARE = True
# The system's periodic tasks, defined here and synced into django-celery-beat by `manage.py sync_periodic_tasks`
# (and whenever beat starts). Domain issues add their own entries.
# The RMS sweep's interval; ticks also trigger an evaluation of the users holding what moved.
RMS_SWEEP_SECONDS = env.float("RMS_SWEEP_SECONDS", default=2.0)
RMS_TICK_EVALUATION = env.bool("RMS_TICK_EVALUATION", default=True)
# Fills ask for their users to be evaluated again; the requests of this window share one task (one sweep of them all).
RMS_EVALUATION_COALESCE_SECONDS = env.float("RMS_EVALUATION_COALESCE_SECONDS", default=0.25)
# A new user's risk profile: the NSE session as the trading window and intraday square-off at 15:15 IST, except
# where the market never closes (the demo) or the clock is the test's to set ("" turns a default off).
_RMS_CLOCKLESS = env.bool("MARKET_ALWAYS_OPEN", default=DJANGO_ENV == "development") or DJANGO_ENV == "test"
RMS_DEFAULT_TRADING_WINDOW = env.str("RMS_DEFAULT_TRADING_WINDOW", default="" if _RMS_CLOCKLESS else "09:15-15:30")
RMS_DEFAULT_AUTO_SQUARE_OFF = env.str("RMS_DEFAULT_AUTO_SQUARE_OFF", default="" if _RMS_CLOCKLESS else "15:15")
# The pre-trade funds check answers from the account's funds snapshot: read from the broker after the account's
# fills and when older than RMS_FUNDS_MAX_AGE_SECONDS (then once, by the order that finds it so), never per order.
RMS_FUNDS_CHECK = env.bool("RMS_FUNDS_CHECK", default=True)
RMS_FUNDS_MAX_AGE_SECONDS = env.float("RMS_FUNDS_MAX_AGE_SECONDS", default=30.0)
RMS_DEFAULT_MAX_ORDERS_PER_DAY = env.int("RMS_DEFAULT_MAX_ORDERS_PER_DAY", default=1000)
RMS_DEFAULT_MAX_OPEN_POSITIONS = env.int("RMS_DEFAULT_MAX_OPEN_POSITIONS", default=100)
# Strategies: how often rule strategies are evaluated, how old a webhook's own timestamp may be, backtest span.
STRATEGY_RULE_SECONDS = env.float("STRATEGY_RULE_SECONDS", default=15.0)
STRATEGY_WEBHOOK_MAX_AGE_SECONDS = env.int("STRATEGY_WEBHOOK_MAX_AGE_SECONDS", default=300)
# Refused webhook calls are counted per strategy and day in full, but only this many are kept as Signal rows.
STRATEGY_WEBHOOK_REJECTED_SIGNALS_PER_DAY = env.int("STRATEGY_WEBHOOK_REJECTED_SIGNALS_PER_DAY", default=50)
# Largest quantity one webhook signal may ask for, in units: above any exchange freeze quantity for equities.
STRATEGY_WEBHOOK_MAX_QUANTITY = env.int("STRATEGY_WEBHOOK_MAX_QUANTITY", default=100_000)
STRATEGY_BACKTEST_MAX_DAYS = env.int("STRATEGY_BACKTEST_MAX_DAYS", default=1100)
# Time-based fires: one dispatcher a minute claims the due fires and sends them to the urgent queue in about this
# many chunks; a fire not acted on within the lease (its message lost, its worker killed) is sent again by the
# recovery pass; entries missed while beat was down are still made up to this many minutes late (exits always).
STRATEGY_FIRE_CHUNKS = env.int("STRATEGY_FIRE_CHUNKS", default=64)
STRATEGY_FIRE_LEASE_SECONDS = env.int("STRATEGY_FIRE_LEASE_SECONDS", default=30)
STRATEGY_FIRE_RECOVER_SECONDS = env.float("STRATEGY_FIRE_RECOVER_SECONDS", default=10.0)
STRATEGY_FIRE_RECOVER_MAX = env.int("STRATEGY_FIRE_RECOVER_MAX", default=5000)
STRATEGY_FIRE_CATCHUP_MINUTES = env.int("STRATEGY_FIRE_CATCHUP_MINUTES", default=5)
# Platform alerts: how often the evaluator runs and when each condition counts as started (README, "Alerts").
ALERT_EVALUATE_SECONDS = env.float("ALERT_EVALUATE_SECONDS", default=15.0)
ALERT_FEED_STALE_SECONDS = env.float("ALERT_FEED_STALE_SECONDS", default=30.0)  # newest quote older, market open
ALERT_BEAT_STALE_SECONDS = env.float("ALERT_BEAT_STALE_SECONDS", default=60.0)  # beat's heartbeat older
ALERT_RECONCILE_BACKLOG_SECONDS = env.float("ALERT_RECONCILE_BACKLOG_SECONDS", default=120.0)
ALERT_RECONCILE_BACKLOG_ORDERS = env.int("ALERT_RECONCILE_BACKLOG_ORDERS", default=1)
ALERT_UNKNOWN_ORDER_SECONDS = env.float("ALERT_UNKNOWN_ORDER_SECONDS", default=60.0)
# Refused webhook calls counted over this window: any few of Razorpay's (a wrong webhook secret), or a flood of
# strategies' (TradingView and ChartInk calls refused platform-wide).
ALERT_WEBHOOK_WINDOW_MINUTES = env.int("ALERT_WEBHOOK_WINDOW_MINUTES", default=15)
ALERT_BILLING_WEBHOOK_REFUSED = env.int("ALERT_BILLING_WEBHOOK_REFUSED", default=3)
ALERT_STRATEGY_WEBHOOK_REFUSED = env.int("ALERT_STRATEGY_WEBHOOK_REFUSED", default=50)
# Queues that must have a worker consuming them; a queue left out is never alerted on.
ALERT_WORKER_QUEUES = env.list(
    "ALERT_WORKER_QUEUES", default=[TASK_QUEUE_URGENT, TASK_QUEUE_DEFAULT, TASK_QUEUE_BACKTESTS]
)
# The daily instrument-master refresh: which brokers' masters it loads, how much smaller a download may be than what
# the broker lists now, the indices it must still list, and how often a failed or refused one is tried again.
INSTRUMENT_MASTER_BROKERS = env.list("INSTRUMENT_MASTER_BROKERS", default=["zerodha", "dhan", "fyers"])
INSTRUMENT_MASTER_MAX_DROP = env.float("INSTRUMENT_MASTER_MAX_DROP", default=0.2)
INSTRUMENT_MASTER_REQUIRED_INDICES = env.list(
    "INSTRUMENT_MASTER_REQUIRED_INDICES", default=["NSE:NIFTY 50", "NSE:NIFTY BANK", "BSE:SENSEX"]
)
INSTRUMENT_MASTER_RETRIES = env.int("INSTRUMENT_MASTER_RETRIES", default=3)
INSTRUMENT_MASTER_RETRY_SECONDS = env.float("INSTRUMENT_MASTER_RETRY_SECONDS", default=600.0)
INSTRUMENT_MASTER_TIMEOUT_SECONDS = env.float("INSTRUMENT_MASTER_TIMEOUT_SECONDS", default=120.0)
CELERY_BEAT_SCHEDULE = {
    "system.heartbeat": {"task": "algoterm.tasks.heartbeat", "schedule": timedelta(seconds=10)},
    # Platform alerts (algoterm.console.alerts): each condition raised once when it starts, cleared once when it ends.
    "system.evaluate_alerts": {
        "task": "algoterm.tasks.evaluate_alerts",
        "schedule": timedelta(seconds=ALERT_EVALUATE_SECONDS),
    },
    # Next year's NSE holiday list is due in December; admins are told once a year when it is missing.
    "system.check_holiday_lists": {
        "task": "algoterm.tasks.check_holiday_lists",
        "schedule": crontab(hour=9, minute=0),
    },
    "accounts.purge_expired_tokens": {
        "task": "accounts.tasks.purge_expired_tokens",
        "schedule": timedelta(hours=6),
    },
    "brokers.expire_sessions": {"task": "brokers.tasks.expire_sessions", "schedule": timedelta(minutes=5)},
    "brokers.remind_logins": {
        "task": "brokers.tasks.remind_logins",
        "schedule": crontab(hour=8, minute=45, day_of_week="mon-fri"),
    },
    # Broker sessions renewed where the user agreed, in the last BROKER_SESSION_RENEW_AHEAD_SECONDS before the daily
    # cut-off (so the 08:45 login reminders reach only those who must log in by hand); instrument masters before the
    # open, each retried on its own.
    "brokers.renew_sessions": {"task": "brokers.tasks.renew_sessions", "schedule": timedelta(minutes=15)},
    "marketdata.refresh_instrument_masters": {
        "task": "marketdata.tasks.refresh_instrument_masters",
        "schedule": crontab(hour=7, minute=30, day_of_week="mon-fri"),
    },
    "orders.reconcile_open": {"task": "orders.tasks.reconcile_open", "schedule": timedelta(seconds=5)},
    "rms.sweep": {"task": "rms.tasks.sweep", "schedule": timedelta(seconds=RMS_SWEEP_SECONDS)},
    "orders.trail_stops": {"task": "orders.tasks.trail_stops", "schedule": timedelta(seconds=2)},
    "orders.purge_idempotency_keys": {
        "task": "orders.tasks.purge_idempotency_keys",
        "schedule": timedelta(hours=6),
    },
    # Rule strategies read the last closed candle; each bar is acted on once, so a short interval is harmless.
    "strategies.evaluate_rules": {
        "task": "strategies.tasks.evaluate_rules",
        "schedule": timedelta(seconds=STRATEGY_RULE_SECONDS),
    },
    "billing.expire_trials": {"task": "billing.tasks.expire_trials", "schedule": timedelta(minutes=10)},
    "accounts.purge_old_notifications": {
        "task": "accounts.tasks.purge_old_notifications",
        "schedule": timedelta(hours=24),
    },
    "strategies.expire_backtests": {"task": "strategies.tasks.expire_backtests", "schedule": timedelta(minutes=1)},
    # Time-based strategies' entry and exit times, in IST (CELERY_TIMEZONE), at the start of every minute.
    "strategies.dispatch_fires": {"task": "strategies.tasks.dispatch_fires", "schedule": crontab(minute="*")},
    # The operators' /ws/ops `orders` topic: the minute that just ended, per broker.
    "system.publish_order_rates": {"task": "algoterm.tasks.publish_order_rates", "schedule": crontab(minute="*")},
    "strategies.recover_fires": {
        "task": "strategies.tasks.recover_fires",
        "schedule": timedelta(seconds=STRATEGY_FIRE_RECOVER_SECONDS),
    },
}
NOTIFICATION_RETENTION = timedelta(days=env.int("NOTIFICATION_RETENTION_DAYS", default=90))

# Security headers; production adds HTTPS-only ones below.
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
# Request bodies are refused with 413 before they are read (algoterm.api.middleware): any route up to
# REQUEST_BODY_MAX_BYTES, the unauthenticated machine-to-machine routes (webhooks, broker postbacks) far less.
REQUEST_BODY_MAX_BYTES = env.int("REQUEST_BODY_MAX_BYTES", default=2 * 1024 * 1024)
WEBHOOK_BODY_MAX_BYTES = env.int("WEBHOOK_BODY_MAX_BYTES", default=64 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_BODY_MAX_BYTES

if IS_PRODUCTION:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    SECURE_REDIRECT_EXEMPT = [r"^api/health$"]
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    if env.bool("TRUST_X_FORWARDED_PROTO", default=NUM_PROXIES > 0):
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "context": {"()": "algoterm.logging.RequestContextFilter"},
        "redact": {"()": "algoterm.logging.RedactSecretsFilter"},
    },
    "formatters": {
        "json": {"()": "algoterm.logging.JsonFormatter"},
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT if LOG_FORMAT in {"json", "plain"} else "json",
            "filters": ["context", "redact"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        # Our own access log replaces the servers' (which would print query strings carrying WebSocket tokens).
        "uvicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        # The server's own lines (a WebSocket handshake names its URL, token and all) go through our redaction too.
        "uvicorn": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "celery": {"level": "INFO"},
    },
}

# Brokers. Base URLs point the SDKs at the brokers or, with BROKER_SIMULATORS (on by default outside production and
# tests), at the local simulators that `manage.py serve` starts, so the demo trades "at Zerodha" with no internet.
BROKER_SIMULATORS = env.bool("BROKER_SIMULATORS", default=DJANGO_ENV == "development")
# The sandbox (simulators, demo seeding) is for the demo and the tests; a production server without the simulators
# never loads it. Outside production it stays installed with the simulators off, so a laptop can still seed the demo.
SANDBOX_INSTALLED = BROKER_SIMULATORS or not IS_PRODUCTION
if SANDBOX_INSTALLED:
    INSTALLED_APPS.append("algoterm.sandbox.apps.SandboxConfig")
SIMULATOR_PORTS = {
    "kite": env.int("KITE_SIMULATOR_PORT", default=8101),
    "dhan": env.int("DHAN_SIMULATOR_PORT", default=8102),
    "fyers": env.int("FYERS_SIMULATOR_PORT", default=8103),
}
_sim = {name: f"http://127.0.0.1:{port}" for name, port in SIMULATOR_PORTS.items()}
PUBLIC_BASE_URL = env.str(
    "PUBLIC_BASE_URL", default=f"http://{env.str('HOST', default='127.0.0.1')}:{env.int('PORT', default=8000)}"
)
KITE_ROOT_URL = env.str("KITE_ROOT_URL", default=_sim["kite"] if BROKER_SIMULATORS else "https://api.kite.trade")
KITE_LOGIN_URL = env.str(
    "KITE_LOGIN_URL",
    default=f"{_sim['kite']}/connect/login" if BROKER_SIMULATORS else "https://kite.zerodha.com/connect/login",
)
DHAN_BASE_URL = env.str(
    "DHAN_BASE_URL", default=f"{_sim['dhan']}/v2" if BROKER_SIMULATORS else "https://api.dhan.co/v2"
)
# Dhan's compact scrip master (a public CSV, no login), the source of Dhan's security ids.
DHAN_SCRIP_MASTER_URL = env.str(
    "DHAN_SCRIP_MASTER_URL",
    default=f"{_sim['dhan']}/api-data/api-scrip-master.csv"
    if BROKER_SIMULATORS
    else "https://images.dhan.co/api-data/api-scrip-master.csv",
)
FYERS_API_URL = env.str(
    "FYERS_API_URL", default=f"{_sim['fyers']}/api/v3" if BROKER_SIMULATORS else "https://api-t1.fyers.in/api/v3"
)
FYERS_DATA_URL = env.str(
    "FYERS_DATA_URL", default=f"{_sim['fyers']}/data" if BROKER_SIMULATORS else "https://api-t1.fyers.in/data"
)
# Fyers' public symbol master: one header-less CSV per exchange segment (NSE_CM.csv, NSE_FO.csv...) under this URL.
FYERS_SYMBOL_MASTER_URL = env.str(
    "FYERS_SYMBOL_MASTER_URL",
    default=f"{_sim['fyers']}/sym_details" if BROKER_SIMULATORS else "https://public.fyers.in/sym_details",
)
BROKER_TIMEOUT_SECONDS = env.float("BROKER_TIMEOUT_SECONDS", default=7.0)
BROKER_LOGIN_STATE_MAX_AGE = timedelta(minutes=env.int("BROKER_LOGIN_STATE_MINUTES", default=15))
# SEBI: unregistered algos stay under 10 orders/second per client; we pace at 9 unless told otherwise.
BROKER_MAX_ORDERS_PER_SECOND = env.int("BROKER_MAX_ORDERS_PER_SECOND", default=9)
BROKER_PACING_MAX_WAIT_SECONDS = env.float("BROKER_PACING_MAX_WAIT_SECONDS", default=10.0)
BROKER_CIRCUIT_FAILURES = env.int("BROKER_CIRCUIT_FAILURES", default=5)
BROKER_CIRCUIT_OPEN_SECONDS = env.int("BROKER_CIRCUIT_OPEN_SECONDS", default=30)
BROKER_DEFAULT_ALGO_ID = env.str("BROKER_DEFAULT_ALGO_ID", default="ALGOTERM-GENERIC")
# The daily re-login rule: sessions end at this IST time (Kite tokens die at 06:00; SEBI wants a daily 2FA login).
BROKER_SESSION_EXPIRY_TIME = env.str("BROKER_SESSION_EXPIRY_TIME", default="06:00")
# Consented sessions (Fyers' refresh token with the PIN, Dhan's RenewToken) are renewed this long before the cut-off.
BROKER_SESSION_RENEW_AHEAD_SECONDS = env.int("BROKER_SESSION_RENEW_AHEAD_SECONDS", default=45 * 60)
PAPER_SLIPPAGE_BPS = env.int("PAPER_SLIPPAGE_BPS", default=5)

# Orders: how soon a lost broker answer is reconciled, and how long an order may sit unconfirmed before reconciliation
# decides from the broker's order book alone; how long Idempotency-Keys are kept.
ORDER_RECONCILE_DELAY_SECONDS = env.float("ORDER_RECONCILE_DELAY_SECONDS", default=2.0)
ORDER_RECONCILE_GRACE_SECONDS = env.float("ORDER_RECONCILE_GRACE_SECONDS", default=30.0)
# A broker's push only makes us read the order from the broker: pushes for one order while a read is queued share
# it. This bounds how long a lost queued read can hold later pushes back (reconciliation settles the order anyway).
ORDER_PUSH_REFRESH_COALESCE_SECONDS = env.int("ORDER_PUSH_REFRESH_COALESCE_SECONDS", default=10)
IDEMPOTENCY_KEY_TTL = timedelta(hours=env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=48))
IDEMPOTENCY_WAIT_SECONDS = env.float("IDEMPOTENCY_WAIT_SECONDS", default=15.0)
# How long a claimed key is held without an answer before a retry may take it over (its holder died). Longer than
# any placement can take (broker timeouts and pacing), so a slow holder is never mistaken for a dead one.
IDEMPOTENCY_LEASE_SECONDS = env.float("IDEMPOTENCY_LEASE_SECONDS", default=60.0)
SQUARE_OFF_LOCK_WAIT_SECONDS = env.float("SQUARE_OFF_LOCK_WAIT_SECONDS", default=30.0)
PAPER_OPENING_BALANCE = env.str("PAPER_OPENING_BALANCE", default="1000000.00")

# Market data. The demo's simulated market trades around the clock so a newcomer can try everything at any hour;
# real brokers follow the NSE calendar whatever this says.
MARKET_ALWAYS_OPEN = env.bool("MARKET_ALWAYS_OPEN", default=DJANGO_ENV == "development")
# `manage.py serve` runs this feed with the stack ("" for none); production runs `manage.py runfeed` itself.
# "broker": the accounts an operator designated as market-data sources (admin) feed, one at a time, with failover.
MARKET_FEED = env.str("MARKET_FEED", default={"development": "simulated", "production": "broker"}.get(DJANGO_ENV, ""))
# The market-data supervisor: how often it checks the designated accounts, how often it brings the feed's
# subscriptions in line with what users hold and watch, and how long a /ws/market-data subscription counts as watched.
MARKET_DATA_POLL_SECONDS = env.float("MARKET_DATA_POLL_SECONDS", default=5.0)
MARKET_DATA_RESUBSCRIBE_SECONDS = env.float("MARKET_DATA_RESUBSCRIBE_SECONDS", default=30.0)
MARKET_DATA_WATCHED_SECONDS = env.float("MARKET_DATA_WATCHED_SECONDS", default=24 * 3600.0)
# A market-data feed silent this long while the market is open hands over to the next live designated account, and is
# passed over for MARKET_DATA_BENCH_SECONDS.
MARKET_DATA_STALL_SECONDS = env.float("MARKET_DATA_STALL_SECONDS", default=60.0)
MARKET_DATA_BENCH_SECONDS = env.float("MARKET_DATA_BENCH_SECONDS", default=300.0)
MARKET_FEED_INTERVAL_SECONDS = env.float("MARKET_FEED_INTERVAL_SECONDS", default=1.0)
WS_MAX_SYMBOLS = env.int("WS_MAX_SYMBOLS", default=100)
WS_SEND_QUEUE = env.int("WS_SEND_QUEUE", default=1000)  # messages queued per market-data socket before it is dropped
# A market-data socket whose one send has not finished for this long (its client stopped reading) is dropped with 4429;
# it then has WS_SLOW_CLIENT_FAREWELL_SECONDS to read the error and the close before its consumer is let go.
WS_SLOW_CLIENT_SECONDS = env.float("WS_SLOW_CLIENT_SECONDS", default=5.0)
WS_SLOW_CLIENT_FAREWELL_SECONDS = env.float("WS_SLOW_CLIENT_FAREWELL_SECONDS", default=10.0)
OPTION_RISK_FREE_RATE = env.float("OPTION_RISK_FREE_RATE", default=0.065)  # for IV and Greeks (annual, decimal)
KITE_TICKER_URL = env.str(
    "KITE_TICKER_URL",
    default=f"ws://127.0.0.1:{SIMULATOR_PORTS['kite'] + 10}" if BROKER_SIMULATORS else "wss://ws.kite.trade",
)
DHAN_FEED_URL = env.str(
    "DHAN_FEED_URL",
    default=f"ws://127.0.0.1:{SIMULATOR_PORTS['dhan'] + 10}" if BROKER_SIMULATORS else "wss://api-feed.dhan.co",
)
FYERS_FEED_URL = env.str(
    "FYERS_FEED_URL",
    default=f"ws://127.0.0.1:{SIMULATOR_PORTS['fyers'] + 10}"
    if BROKER_SIMULATORS
    else "wss://socket.fyers.in/hsm/v1-5/prod",
)
# What the Fyers data socket's SDK reads over HTTP before subscribing: symbol -> HSM token, and the indices' names.
FYERS_SYMBOL_TOKEN_URL = env.str("FYERS_SYMBOL_TOKEN_URL", default=f"{FYERS_DATA_URL}/symbol-token")
FYERS_INDEX_MAPPING_URL = env.str(
    "FYERS_INDEX_MAPPING_URL",
    default=f"{_sim['fyers']}/sym_details/index_hsm_mapping.json"
    if BROKER_SIMULATORS
    else "https://public.fyers.in/sym_details/index_hsm_mapping.json",
)
# The order sockets (pushed order updates): a broker's order-socket simulator listens at its REST port + 20.
DHAN_ORDER_SOCKET_URL = env.str(
    "DHAN_ORDER_SOCKET_URL",
    default=f"ws://127.0.0.1:{SIMULATOR_PORTS['dhan'] + 20}" if BROKER_SIMULATORS else "wss://api-order-update.dhan.co",
)
FYERS_ORDER_SOCKET_URL = env.str(
    "FYERS_ORDER_SOCKET_URL",
    default=f"ws://127.0.0.1:{SIMULATOR_PORTS['fyers'] + 20}"
    if BROKER_SIMULATORS
    else "wss://socket.fyers.in/trade/v3",
)

# Billing through Razorpay. With BROKER_SIMULATORS the SDK talks to the local Razorpay simulator `serve` starts, with
# these demo keys; production needs the real keys and webhook secret (refused otherwise, see below).
SIMULATOR_PORTS["razorpay"] = env.int("RAZORPAY_SIMULATOR_PORT", default=8104)
DEV_RAZORPAY_KEY_SECRET = "demo-razorpay-secret"  # noqa: S105 - the simulator's, refused in production
DEV_RAZORPAY_WEBHOOK_SECRET = "demo-razorpay-webhook-secret"  # noqa: S105 - the simulator's, refused in production
RAZORPAY_KEY_ID = env.str("RAZORPAY_KEY_ID", default="rzp_test_demo")
RAZORPAY_KEY_SECRET = env.str("RAZORPAY_KEY_SECRET", default=DEV_RAZORPAY_KEY_SECRET)
RAZORPAY_WEBHOOK_SECRET = env.str("RAZORPAY_WEBHOOK_SECRET", default=DEV_RAZORPAY_WEBHOOK_SECRET)
RAZORPAY_BASE_URL = env.str(
    "RAZORPAY_BASE_URL",
    default=f"http://127.0.0.1:{SIMULATOR_PORTS['razorpay']}" if BROKER_SIMULATORS else "https://api.razorpay.com",
)
RAZORPAY_TIMEOUT_SECONDS = env.float("RAZORPAY_TIMEOUT_SECONDS", default=10.0)
# A user who never subscribed gets the trial plan's limits; once every subscription has ended, no live trading and
# no running strategies (see billing.selectors.Entitlements).
BILLING_PLAN_THROTTLE = env.bool("BILLING_PLAN_THROTTLE", default=True)

# Who may read GET /api/metrics and GET /api/health/components besides admins: a scraper sending
# `Authorization: Bearer <METRICS_TOKEN>` (off while empty), and with METRICS_ALLOW_LOCAL any client whose address
# (after NUM_PROXIES) is loopback, e.g. a Prometheus on the same host. Never turn that on behind a local proxy
# without setting NUM_PROXIES, or every request through the proxy looks local.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_ALLOW_LOCAL = env.bool("METRICS_ALLOW_LOCAL", default=False)

VERSION = "0.1.0"
GIT_COMMIT = env.str("GIT_COMMIT", default="")


def _refuse_unsafe_production_settings() -> None:
    problems = []
    if DEBUG:
        problems.append("DEBUG must be off")
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 50:
        problems.append("SECRET_KEY must be set to a long random value")
    if SIMPLE_JWT["SIGNING_KEY"] == DEV_SECRET_KEY:
        problems.append("JWT_SIGNING_KEY (or SECRET_KEY) must not be the development key")
    if not ENCRYPTION_KEYS:
        problems.append("ENCRYPTION_KEYS must hold at least one Fernet key")
    if DEV_ENCRYPTION_KEY in ENCRYPTION_KEYS:
        problems.append("ENCRYPTION_KEYS must not contain the development key")
    if not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS:
        problems.append("ALLOWED_HOSTS must name the served hosts")
    if RAZORPAY_KEY_SECRET == DEV_RAZORPAY_KEY_SECRET or RAZORPAY_WEBHOOK_SECRET == DEV_RAZORPAY_WEBHOOK_SECRET:
        problems.append("RAZORPAY_KEY_SECRET and RAZORPAY_WEBHOOK_SECRET must be the account's own")
    if env.str("ALGOTERM_FAILPOINTS", default=""):
        problems.append("ALGOTERM_FAILPOINTS is for fault drills and must not be set")
    if problems:
        raise ImproperlyConfigured("Refusing to start in production: " + "; ".join(problems) + ".")


if IS_PRODUCTION:
    _refuse_unsafe_production_settings()
