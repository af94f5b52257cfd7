"""A small Django project for the tests that need a real database: ``notes`` (one model), a
consumer that reads it through ``database_sync_to_async``, and Django TestCases (``cases``) that
``run`` executes in a subprocess, so that the pytest process never configures Django."""
