"""The Django side of roomcast: ``manage.py runserver`` and ``runworker`` (``"roomcast"`` in
``INSTALLED_APPS``). Its modules import Django; ``import roomcast`` never loads them."""
