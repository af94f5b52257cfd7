"""The Django project of the Django chat example (the Channels tutorial, on roomcast)."""
