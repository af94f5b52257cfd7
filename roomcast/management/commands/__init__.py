"""roomcast's management commands: ``runserver`` (the gateway) and ``runworker`` (the worker)."""
