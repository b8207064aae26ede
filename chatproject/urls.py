from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from telemetry import views as telemetry_views
from threads.api import ApiError, error_body
from threads.api import router as threads_router

api = NinjaAPI(
    title="Chat API",
    version="1",
    description=(
        "Authenticate with `Authorization: Bearer <api key>` (create one with "
        "`manage.py create_api_key --org SLUG`). Errors are JSON: "
        '`{"error": {"code", "message", "field"?}}`.'
    ),
    urls_namespace="api",
)
api.add_router("/", threads_router)


@api.exception_handler(ApiError)
def on_api_error(request: HttpRequest, exc: ApiError) -> HttpResponse:
    return api.create_response(
        request, error_body(exc.code, exc.message, exc.field), status=exc.status
    )


@api.exception_handler(AuthenticationError)
def on_auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return api.create_response(
        request, error_body("unauthorized", "Send a valid API key as a Bearer token."), status=401
    )


def _field_of(error: dict[str, Any]) -> str:
    # ninja's loc is like ["body", "payload", "content"] or ["query", "limit"].
    loc = [
        str(part)
        for part in error.get("loc", ())
        if part not in ("body", "payload", "query", "path")
    ]
    return ".".join(loc) or "body"


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = list(exc.errors)
    first = errors[0] if errors else {}
    field = _field_of(first)
    message = f"{field}: {first.get('msg', 'invalid value')}"
    body = error_body("validation_error", message, field)
    body["error"]["details"] = [
        {"field": _field_of(e), "message": e.get("msg", "")} for e in errors
    ]
    return api.create_response(request, body, status=422)


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    return api.create_response(request, error_body("http_error", str(exc)), status=exc.status_code)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/metrics", telemetry_views.api_metrics),
    path("api/", api.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("telemetry.urls")),
    path("", include("threads.urls")),
]
