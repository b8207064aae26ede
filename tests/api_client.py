from __future__ import annotations

import json
from typing import Any

from django.test import AsyncClient


class ApiClient:
    """AsyncClient with the API key sent on every request.

    (AsyncClient(headers=...) turns constructor headers into `http-…` names, so they are
    passed per request here.)
    """

    def __init__(self, key: str | None, org: str | None = None) -> None:
        self.client = AsyncClient()
        self.headers: dict[str, str] = {}
        if key is not None:
            self.headers["Authorization"] = f"Bearer {key}"
        if org is not None:
            self.headers["x-org-id"] = org

    async def get(self, path: str, **kwargs: Any):
        return await self.client.get(
            path, headers=self.headers | kwargs.pop("headers", {}), **kwargs
        )

    async def delete(self, path: str, **kwargs: Any):
        return await self.client.delete(
            path, headers=self.headers | kwargs.pop("headers", {}), **kwargs
        )

    async def post(self, path: str, data: Any = None, **kwargs: Any):
        return await self._send("post", path, data, **kwargs)

    async def patch(self, path: str, data: Any = None, **kwargs: Any):
        return await self._send("patch", path, data, **kwargs)

    async def _send(self, method: str, path: str, data: Any, raw: bool = False, **kwargs: Any):
        body = data if raw else json.dumps(data if data is not None else {})
        return await getattr(self.client, method)(
            path,
            body,
            content_type="application/json",
            headers=self.headers | kwargs.pop("headers", {}),
            **kwargs,
        )
