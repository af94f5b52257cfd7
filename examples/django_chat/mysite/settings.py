"""Settings of the Django chat example, read from the environment where a deployment differs.

=======================  ===========================================  ===========================
variable                 what                                         default
=======================  ===========================================  ===========================
``DJANGO_SECRET_KEY``    Django's ``SECRET_KEY``                      a dev key (DEBUG only)
``DJANGO_DEBUG``         ``1``/``true``/``on`` or ``0``/``false``     ``1``
``DJANGO_ALLOWED_HOSTS`` comma-separated hosts; also the WebSocket    ``127.0.0.1,localhost,[::1]``
                         origins allowed
``DJANGO_DB_PATH``       the SQLite database file                     ``db.sqlite3`` next to
                                                                      ``manage.py``
``ROOMCAST_LAYER_URL``   the channel layer: ``memory://``,            in memory (one process)
                         ``redis://host:6379/0``
=======================  ===========================================  ===========================

With ``DJANGO_DEBUG`` off, ``DJANGO_SECRET_KEY`` must be set: the dev key is public.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from roomcast.layers.settings import layer_config_from_url

BASE_DIR = Path(__file__).resolve().parent.parent  # examples/django_chat


def _flag(name: str, default: str) -> bool:
    value = os.environ.get(name, "").strip().lower() or default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: expected 1/true/yes/on or 0/false/no/off")


DEBUG = _flag("DJANGO_DEBUG", "1")

_DEV_SECRET_KEY = "django-insecure-roomcast-django-chat-example-dev-only"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "").strip() or _DEV_SECRET_KEY
if not DEBUG and SECRET_KEY == _DEV_SECRET_KEY:
    raise ImproperlyConfigured("DJANGO_DEBUG is off: set DJANGO_SECRET_KEY (the dev key is public)")

# HTTP Host headers Django answers, and (through AllowedHostsOriginValidator in asgi.py) the
# origins whose pages may open the chat's WebSocket.
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if host.strip()
]

# "roomcast" first, above django.contrib.staticfiles (as Daphne asks for "daphne"): its
# runserver (roomcast's gateway, with WebSockets) then wins over staticfiles' WSGI one, and
# `manage.py runworker` is roomcast's worker.
INSTALLED_APPS = [
    "roomcast",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# What `manage.py runserver` serves (and `roomcast serve mysite.asgi:application` in
# production): HTTP goes to Django's get_asgi_application(), WebSockets to the consumers.
ASGI_APPLICATION = "mysite.asgi.application"

# In memory by default (one server process); with ROOMCAST_LAYER_URL=redis://127.0.0.1:6379/0
# several server processes share the rooms through Redis.
CHANNEL_LAYERS = layer_config_from_url(
    os.environ.get("ROOMCAST_LAYER_URL", "").strip() or "memory://"
)

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", "").strip() or BASE_DIR / "db.sqlite3",
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "chat:index"
LOGOUT_REDIRECT_URL = "chat:index"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# The admin's CSS and JS: `manage.py runserver` serves them in DEBUG (or with --insecure);
# in production run collectstatic and serve STATIC_ROOT from the proxy.
STATIC_URL = "static/"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Request errors on stderr in any mode (Django's default shows them only in DEBUG); the
# server's own log lines (roomcast.gateway.*) are configured by the server and left alone.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django": {"handlers": ["stderr"], "level": "WARNING"},
        "roomcast.consumers": {"handlers": ["stderr"], "level": "WARNING"},
    },
}
