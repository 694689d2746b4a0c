"""The review app's HTTP side (FastAPI): the page, its API, and only the shoot's own photos.

Files are served by their path relative to the shoot folder, and only when that exact path is one of the
photos found when the shoot was analysed and, with every link resolved, still lies inside the folder:
``..``, encoded or absolute paths and links leading out all answer 404. The server binds 127.0.0.1 by
default, answers only requests addressed to the host it serves (no DNS rebinding) and takes state-changing
requests only as JSON (which a foreign page cannot send without a CORS preflight this server refuses).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..culling.xmp import XmpError
from ..fileio import atomic_path
from ..images import ImageLoadError, open_image
from .session import ReviewSession

PREVIEW_SIZE = 1600  # long side of the large view, pixels
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC = resources.files("clip_aesthetics.app") / "static"


class LabelRequest(BaseModel):
    path: str
    action: str
    stars: int | None = None


class PathRequest(BaseModel):
    path: str


def create_app(session: ReviewSession, host: str = "127.0.0.1") -> FastAPI:
    """The FastAPI application over ``session``."""
    api = FastAPI(title="clip-aesthetics review", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted({host, "127.0.0.1", "localhost", "[::1]"}))

    @api.middleware("http")
    async def headers(request: Request, call_next):
        if (
            request.method == "POST"
            and request.headers.get("content-type", "").split(";")[0] != "application/json"
        ):
            return JSONResponse({"detail": "send JSON"}, status_code=415)
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @api.get("/")
    def index() -> Response:
        return Response((STATIC / "index.html").read_text(encoding="utf-8"), media_type="text/html")

    api.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @api.get("/api/status")
    def status() -> dict:
        return {**session.status, "folder": str(session.root)}

    @api.get("/api/photos")
    def photos() -> dict:
        if session.shoot is None:
            raise HTTPException(409, "the shoot is still being analysed")
        return session.photos()

    @api.get("/thumb/{rel:path}")
    def thumb(rel: str) -> FileResponse:
        frame = _frame(session, rel)
        return FileResponse(session.shoot.cache / "thumbs" / frame["thumb"], headers=_cache_headers())

    @api.get("/photo/{rel:path}")
    def photo(rel: str) -> FileResponse:
        frame = _frame(session, rel)
        return FileResponse(_preview(session, rel, frame), headers=_cache_headers())

    @api.post("/api/label")
    def label(request: LabelRequest) -> dict:
        try:
            return session.label(request.path, request.action, request.stars)
        except KeyError:
            raise HTTPException(404, "not a photo of this shoot") from None
        except (ValueError, XmpError, OSError) as exc:
            raise HTTPException(422, str(exc).splitlines()[0]) from None

    @api.post("/api/taste")
    def taste() -> dict:
        try:
            return session.learn_taste()
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @api.post("/api/why")
    def why(request: PathRequest) -> dict:
        try:
            return session.why(request.path)
        except KeyError:
            raise HTTPException(404, "not a photo of this shoot") from None
        except ImageLoadError as exc:
            raise HTTPException(422, str(exc)) from None

    return api


def _frame(session: ReviewSession, rel: str) -> dict:
    frame = session.frame(rel)
    if frame is None:
        raise HTTPException(404, "not a photo of this shoot")
    return frame


def _cache_headers() -> dict:
    return {"Cache-Control": "private, max-age=3600"}


def _preview(session: ReviewSession, rel: str, frame: dict) -> Path:
    """The large-view JPEG of a photo (EXIF orientation applied), made once and cached with the thumbnails."""
    target = session.shoot.cache / "previews" / frame["thumb"]
    if not target.is_file():
        try:
            image = open_image(session.root / rel)
        except ImageLoadError as exc:
            raise HTTPException(422, str(exc)) from None
        image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            image.save(tmp, "JPEG", quality=90)
    return target


def serve(session: ReviewSession, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Analyse in the background and serve until interrupted."""
    import uvicorn

    session.start()
    uvicorn.run(create_app(session, host), host=host, port=port, log_level="warning")
