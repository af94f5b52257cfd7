"""One view answering JSON about the request; Django's own 404 for everything else."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.urls import path


def describe(request: HttpRequest, name: str) -> JsonResponse:
    return JsonResponse(
        {
            "path": request.path,
            "name": name,
            "method": request.method,
            "GET": {key: request.GET.getlist(key) for key in request.GET},
            "POST": {key: request.POST.getlist(key) for key in request.POST},
            "script_name": request.META.get("SCRIPT_NAME", ""),
            "host": request.get_host(),
        }
    )


urlpatterns = [path("echo/<str:name>/", describe)]
