"""The dashboard's files: ``/`` is ``web/index.html``, ``/static/...`` is ``web/static/``,
``/vendor/uplot/...`` is ``web/node_modules/uplot/dist/`` (installed by ``npm ci``).

Paths resolve inside their folder only (no ``..`` escapes, no symlinks out); anything missing is a
404 JSON answer, including the whole ``web/`` folder on a server installed without it.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

import service
from service.errors import NotFound

WEB_DIR = Path(service.__file__).resolve().parent.parent / "web"


def _resolve(root: Path, relative: str) -> Path:
    try:
        base = root.resolve()
        target = (base / relative).resolve()
    except (OSError, ValueError, RuntimeError):  # a NUL byte in the path; a symlink loop (RuntimeError before 3.13)
        raise NotFound(f"no file {relative!r}") from None
    if not target.is_relative_to(base) or not target.is_file():
        raise NotFound(f"no file {relative!r}")
    return target


def _folder_handler(root: Path):
    async def serve_file(request: web.Request) -> web.FileResponse:
        return web.FileResponse(_resolve(root, request.match_info["path"]))

    return serve_file


def routes(web_dir: Path = WEB_DIR) -> list[web.RouteDef]:
    async def index(request: web.Request) -> web.FileResponse:
        page = web_dir / "index.html"
        if not page.is_file():
            raise NotFound(f"the dashboard is not installed ({page} is missing); the API is under "
                           "/api/training/")
        return web.FileResponse(page, headers={"Cache-Control": "no-cache"})

    return [
        web.get("/", index),
        web.get("/static/{path:.+}", _folder_handler(web_dir / "static")),
        web.get("/vendor/uplot/{path:.+}", _folder_handler(web_dir / "node_modules" / "uplot" / "dist")),
    ]
