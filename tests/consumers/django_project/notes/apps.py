from django.apps import AppConfig


class NotesConfig(AppConfig):
    name = "tests.consumers.django_project.notes"
    label = "notes"
