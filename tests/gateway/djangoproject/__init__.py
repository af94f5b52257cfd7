"""A minimal Django project served by the gateway in a subprocess (see ``serve.py``)."""
