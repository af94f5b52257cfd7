"""The Django project of the Django chat example (the Channels tutorial, served by gateway)."""
