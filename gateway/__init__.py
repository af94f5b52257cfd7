"""roomcast gateway: the ASGI server (HTTP/1.1, WebSocket, HTTP/2)."""

if __name__ != "roomcast.gateway":  # the source folder, imported by its folder name
    raise ImportError(
        f"{__name__!r} is roomcast's source folder gateway/: import roomcast.gateway "
        "(pip install -e . maps it there)"
    )
