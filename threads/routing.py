from __future__ import annotations

from django.urls import path

from .consumers import ThreadConsumer

websocket_urlpatterns = [
    path("ws/threads/<uuid:code>/", ThreadConsumer.as_asgi()),
]
