"""roomcast gateway: the ASGI server (HTTP/1.1, WebSocket, HTTP/2). Built in a later issue."""
