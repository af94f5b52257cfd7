"""A background worker example: thumbnails made off the request path (``roomcast worker``)."""
