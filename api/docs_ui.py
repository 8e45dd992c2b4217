"""The API docs page, from local assets (design §8 "Tools"): Swagger UI 5 from the npm package
`swagger-ui-dist` (pinned in package.json, installed by `make install` into `node_modules/`), served
by the broker under `/schema/assets/swagger-ui/`. No page loads anything from another host, so the
docs render offline and behind a strict egress policy.

`/schema` and `/schema/swagger` render Swagger UI; `/schema/openapi.json` (and `.yaml`) is the
document. When the assets are not installed, the page says how to install them instead of
rendering blank.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.openapi.plugins import OpenAPIRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin

ASSETS_PATH = "/schema/assets/swagger-ui"
PAGES = ["/", "/swagger"]
_FAVICON = f"<link rel='icon' type='image/png' href='{ASSETS_PATH}/favicon-32x32.png'>"


def swagger_assets_dir() -> Path | None:
    """`node_modules/swagger-ui-dist` of the project (next to this package), or of the current
    directory; None when neither holds the bundle."""
    for base in (Path(__file__).resolve().parents[1], Path.cwd()):
        candidate = base / "node_modules" / "swagger-ui-dist"
        if (candidate / "swagger-ui-bundle.js").is_file():
            return candidate
    return None


class _AssetsMissing(OpenAPIRenderPlugin):
    def __init__(self) -> None:
        super().__init__(path=PAGES, favicon="")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(str(openapi_schema.get("info", {}).get("title", "API")))
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
                f"<h1>{title}</h1><p>The docs UI assets are not installed: run <code>make install</code> "
                "(<code>npm ci</code> installs <code>swagger-ui-dist</code> into <code>node_modules/</code>).</p>"
                "<p>The OpenAPI document: <a href='/schema/openapi.json'>/schema/openapi.json</a>.</p>"
                "</body></html>").encode()


def docs_ui() -> tuple[list[OpenAPIRenderPlugin], list[Any]]:
    """(render plugins for `OpenAPIConfig`, route handlers serving the assets)."""
    from litestar.static_files import create_static_files_router

    assets = swagger_assets_dir()
    if assets is None:
        return [_AssetsMissing(), YamlRenderPlugin()], []
    plugin = SwaggerRenderPlugin(
        js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        css_url=f"{ASSETS_PATH}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-standalone-preset.js",
        path=PAGES,
        favicon=_FAVICON,
    )
    router = create_static_files_router(path=ASSETS_PATH, directories=[assets], include_in_schema=False,
                                        name="swagger-ui-assets")
    return [plugin, YamlRenderPlugin()], [router]
