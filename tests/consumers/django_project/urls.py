from django.http import HttpRequest, HttpResponse
from django.urls import path

from .notes.models import Note


def count(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(Note.objects.count()))


urlpatterns = [path("count/", count)]
