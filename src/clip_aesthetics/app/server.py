"""The review app's HTTP side (FastAPI): the page, its API, and only the shoot's own photos.

Files are served by their path relative to the shoot folder, and only when that exact path is one of the
photos found when the shoot was analysed and, with every link resolved, still lies inside the folder:
``..``, encoded or absolute paths and links leading out all answer 404. The server binds 127.0.0.1 by
default and answers only requests addressed to the host it serves (no DNS rebinding): with ``--host``
set to an address of this machine, requests to that address; with a wildcard (``0.0.0.0``, ``::``),
requests to any IP address (a name can be rebound to an address, an address cannot) or to this
machine's own names. State-changing requests are taken only as JSON (which a foreign page cannot send
without a CORS preflight this server refuses). Values in requests are checked (finite, in range); a bad
one answers 422 with a one-line reason.
"""

from __future__ import annotations

import ipaddress
import socket
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from ..culling.xmp import XmpError
from ..fileio import text_name
from .session import NotReady, ReviewSession

PREVIEW_SIZE = 1600  # long side of the large view, pixels
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
)
STATIC = resources.files("clip_aesthetics.app") / "static"
WILDCARDS = ("0.0.0.0", "::", "")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class LabelRequest(BaseModel):
    path: str
    action: str
    stars: int | None = None


class PathRequest(BaseModel):
    path: str


def host_names(host: str) -> set[str]:
    """The names (lower case, no port) a request may address this server by, besides IP addresses
    (which a wildcard bind accepts too, see :func:`host_allowed`)."""
    names = {host.lower().strip("[]"), *LOOPBACK_NAMES}
    if host in WILDCARDS:
        hostname = socket.gethostname().lower()
        names |= {hostname, f"{hostname}.local", socket.getfqdn().lower()}
    return names


def host_allowed(header: str, host: str, names: set[str]) -> bool:
    """Whether a ``Host`` header addresses this server."""
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:8765
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:
        value = value.rsplit(":", 1)[0]
    if value in names:
        return True
    if host not in WILDCARDS:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def create_app(session: ReviewSession, host: str = "127.0.0.1") -> FastAPI:
    """The FastAPI application over ``session``."""
    api = FastAPI(title="clip-aesthetics review", docs_url=None, redoc_url=None, openapi_url=None)
    names = host_names(host)

    @api.middleware("http")
    async def headers(request: Request, call_next):
        if not host_allowed(request.headers.get("host", ""), host, names):
            return JSONResponse({"detail": "Invalid host header"}, status_code=400)
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

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer echoes the input, and NaN or 1e400 cannot be written as JSON: a 500
        reasons = [f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"detail": "; ".join(reasons)[:300]}, status_code=422)

    @api.exception_handler(NotReady)
    async def not_ready(request: Request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @api.get("/")
    def index() -> Response:
        return Response((STATIC / "index.html").read_text(encoding="utf-8"), media_type="text/html")

    api.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @api.get("/api/status")
    def status() -> dict:
        export_to = None if session.export_to is None else str(session.export_to)
        folder = text_name(session.root)
        return {**session.status, "folder": folder, "export_to": export_to and text_name(export_to)}

    @api.get("/api/photos")
    def photos() -> dict:
        return session.photos()

    @api.get("/thumb/{rel:path}")
    def thumb(rel: str) -> FileResponse:
        frame = _frame(session, rel)  # rel as text: see ReviewSession.frame
        return FileResponse(session.cache / "thumbs" / frame["thumb"], headers=_cache_headers())

    @api.get("/photo/{rel:path}")
    def photo(rel: str) -> FileResponse:
        frame = _frame(session, rel)
        return FileResponse(_preview(session, rel, frame), headers=_cache_headers())

    @api.get("/original/{rel:path}")
    def original(rel: str) -> FileResponse:
        frame = _frame(session, rel)
        return FileResponse(_original(session, rel, frame), headers=_cache_headers())

    @api.post("/api/label")
    def label(request: LabelRequest) -> dict:
        return _labelled(lambda: session.label(request.path, request.action, request.stars))

    @api.post("/api/undo")
    def undo() -> dict:
        return _labelled(session.undo)

    @api.post("/api/redo")
    def redo() -> dict:
        return _labelled(session.redo)

    @api.post("/api/export")
    def export() -> dict:
        return _labelled(session.export)

    @api.post("/api/taste")
    def taste() -> dict:
        try:
            return session.learn_taste()
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @api.post("/api/why")
    def why(request: PathRequest) -> dict:
        from ..pipeline.images import ImageLoadError

        try:
            return session.why(request.path)
        except KeyError:
            raise HTTPException(404, "not a photo of this shoot") from None
        except ImageLoadError as exc:
            raise HTTPException(422, str(exc)) from None

    return api


def _labelled(change) -> dict:
    try:
        return change()
    except KeyError:
        raise HTTPException(404, "not a photo of this shoot") from None
    except (ValueError, XmpError, OSError) as exc:
        raise HTTPException(422, text_name(str(exc).splitlines()[0])) from None


def _frame(session: ReviewSession, rel: str) -> dict:
    frame = session.frame(rel)
    if frame is None:
        raise HTTPException(404, "not a photo of this shoot")
    return frame


def _cache_headers() -> dict:
    return {"Cache-Control": "private, max-age=3600"}


def _preview(session: ReviewSession, rel: str, frame: dict) -> Path:
    """The large-view JPEG of a photo (upright), made once and cached with the thumbnails."""
    from ..fileio import atomic_path
    from ..pipeline.images import ImageLoadError, open_image

    target = session.cache / "previews" / frame["thumb"]
    if not target.is_file():
        try:  # a RAW file's embedded preview when it is large enough, else LibRaw's decode
            image = open_image(session.root / frame["rel"], draft_size=PREVIEW_SIZE)
        except ImageLoadError as exc:
            raise HTTPException(422, str(exc)) from None
        image.thumbnail((PREVIEW_SIZE, PREVIEW_SIZE))
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            image.save(tmp, "JPEG", quality=90)
    return target


BROWSER_FORMATS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".avif")  # shown by browsers as they are


def _original(session: ReviewSession, rel: str, frame: dict) -> Path:
    """The photo at full resolution for the 100% loupe: the file itself where browsers show it, else (RAW,
    HEIC, TIFF) a full decode (LibRaw's for RAW files) saved once as a high-quality JPEG."""
    from ..fileio import atomic_path
    from ..pipeline.images import ImageLoadError, open_image

    path = session.root / frame["rel"]  # the name on disk (rel is its text form)
    if path.suffix.lower() in BROWSER_FORMATS:
        return path
    target = session.cache / "originals" / frame["thumb"]
    if not target.is_file():
        try:
            image = open_image(path)  # no draft size: every pixel
        except ImageLoadError as exc:
            raise HTTPException(422, str(exc)) from None
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            image.save(tmp, "JPEG", quality=95)
    return target


def page_url(host: str, port: int) -> str:
    """The address to open: a wildcard bind is reached through this machine's name."""
    shown = socket.gethostname() if host in WILDCARDS else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"


def serve(session: ReviewSession, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Listen at once; load the scorer and analyse the shoot in the background; serve until interrupted."""
    import uvicorn

    session.start()
    uvicorn.run(create_app(session, host), host=host, port=port, log_level="warning")
