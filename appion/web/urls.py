"""URLconf of the viewer (set as ROOT_URLCONF by `appion serve`, not in the global settings)."""
from django.urls import path

from appion.web import views

urlpatterns = [
    path("", views.sessions_view, name="sessions"),
    path("session/<int:session_id>/", views.session_view, name="session"),
    path("session/<int:session_id>/rows.json", views.session_rows_json, name="session-rows"),
    path("session/<int:session_id>/series.json", views.session_series_json, name="session-series"),
    path("exposure/<int:image_id>/", views.exposure_view, name="exposure"),
    path("exposure/<int:image_id>/verdict/", views.verdict_view, name="verdict"),  # the one write (POST)
    path("exposure/<int:image_id>/thumb.png", views.thumbnail_view, name="thumbnail"),
    path("exposure/<int:image_id>/plot/<str:name>.png", views.plot_view, name="plot"),
    path("static/<str:name>", views.static_view, name="static"),
]
