"""The chat's pages: the index (pick a room) and a room."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render

from .rooms import is_room_name


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/index.html")


def room(request: HttpRequest, room_name: str) -> HttpResponse:
    if not is_room_name(room_name):
        raise Http404("Room names are letters, digits, '.', '_' and '-', up to 50 of them.")
    return render(request, "chat/room.html", {"room_name": room_name})
