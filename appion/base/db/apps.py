from django.apps import AppConfig


class SinedonConfig(AppConfig):
    """All Leginon, project and Appion tables live in this one Django app; a router spreads them over databases."""

    name = "appion.base.db"
    label = "sinedon"
    default_auto_field = "django.db.models.AutoField"
