"""The chat app: index and room pages over HTTP, the room's WebSocket consumer."""
