"""The OpenAPI document (`/openapi.json`) describes each route's real body, so tools can fuzz the server.

Routes read their bodies by hand (to keep Ollama's error texts), so FastAPI cannot see the body types; each route
states its pydantic schema through `openapi_extra=request_body(Model)`. Pydantic puts nested models under `$defs`
inside that schema; `install()` moves them to `components/schemas`, where the `$ref`s point, once the document is
built. Routes that answer to GET and HEAD get one operationId per method (FastAPI gives both the same one).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

REF = "#/components/schemas/{model}"


def request_body(model: type[Any]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, ref_template=REF)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _hoist_defs(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    defs: dict[str, Any] = schema.pop("$defs", {})
    renames: dict[str, str] = {}
    for name, body in defs.items():
        target = name
        n = 2
        # Two dialects may both have a `Message`, say, that differ: keep both under distinct names.
        while target in components and components[target] != body:
            target = f"{name}{n}"
            n += 1
        renames[name] = target
    text = json.dumps({"schema": schema, "defs": defs})
    for name, target in renames.items():
        if name != target:
            text = text.replace(f'"{REF.format(model=name)}"', f'"{REF.format(model=target)}"')
    moved = json.loads(text)
    for name, body in moved["defs"].items():
        components[renames[name]] = body
    return moved["schema"]  # type: ignore[no-any-return]


def install(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = build()
        components = doc.setdefault("components", {}).setdefault("schemas", {})
        for item in doc.get("paths", {}).values():
            for method, operation in item.items():
                if method == "head" and "operationId" in operation:
                    operation["operationId"] += "_head"
                content = operation.get("requestBody", {}).get("content", {}).get("application/json")
                if content and isinstance(content.get("schema"), dict) and "$defs" in content["schema"]:
                    content["schema"] = _hoist_defs(content["schema"], components)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
