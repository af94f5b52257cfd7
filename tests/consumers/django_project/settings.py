"""Settings of the test project. The SQLite files live in ``$ROOMCAST_TEST_DB_DIR``; the test
database is a file (``TEST["NAME"]``), because the closed-connection bug and the live server
only show on a database materialised on disk. ``ROOMCAST_TEST_DB_MEMORY=1`` makes it in-memory
(the live server must refuse that)."""

import os
from pathlib import Path

DB_DIR = Path(os.environ["ROOMCAST_TEST_DB_DIR"])

SECRET_KEY = "roomcast-test-project-not-a-secret-0123456789abcdef"
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "tests.consumers.django_project.notes",
]
ROOT_URLCONF = "tests.consumers.django_project.urls"
ASGI_APPLICATION = "tests.consumers.django_project.asgi.application"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(DB_DIR / "notes.sqlite3"),
        "TEST": {
            "NAME": None
            if os.environ.get("ROOMCAST_TEST_DB_MEMORY") == "1"
            else str(DB_DIR / "test_notes.sqlite3")
        },
    }
}
CHANNEL_LAYERS = {"default": {"BACKEND": "roomcast.layers.memory.InMemoryChannelLayer"}}
STATIC_URL = "static/"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
