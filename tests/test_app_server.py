"""The review server in this process (uvicorn on 127.0.0.1 in a thread): it answers before the model has
loaded, checks every value in a request (422, never 500), and a wildcard --host takes LAN addresses."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from clip_aesthetics.app.server import create_app
from clip_aesthetics.app.session import ReviewSession
from clip_aesthetics.culling.xmp import sidecar_path
from clip_aesthetics.encoders.backbones import load_backbone
from clip_aesthetics.encoders.prompts import PromptGroups
from clip_aesthetics.scorers import ZeroShotScorer


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def request(port: int, method: str, path: str, body: str | None = None, host: str | None = None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if host is not None:
        headers["Host"] = host
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def serving(session: ReviewSession, bind_as: str = "127.0.0.1") -> Iterator[int]:
    """Serve ``create_app(session, bind_as)`` on 127.0.0.1 (the app is told it binds ``bind_as``)."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(session, bind_as), "127.0.0.1", port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def scorer(tiny_clip_spec: str) -> ZeroShotScorer:
    return ZeroShotScorer(load_backbone(tiny_clip_spec), PromptGroups(("a good photo",), ("a bad photo",)))


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 60
    while json.loads(request(port, "GET", "/api/status")[1])["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_page_is_served_while_the_model_loads(photo_dir: Path, scorer) -> None:
    gate = threading.Event()
    session = ReviewSession(photo_dir, lambda: gate.wait(30) and scorer, workers=0)
    for port in serving(session):
        session.start()
        assert request(port, "GET", "/")[0] == 200
        deadline = time.monotonic() + 10
        while (status := json.loads(request(port, "GET", "/api/status")[1]))["state"] != "loading":
            assert time.monotonic() < deadline
        assert "encoding" in status["phase"]
        assert request(port, "GET", "/api/photos")[0] == 409  # not analysed yet: says so
        gate.set()
        wait_ready(port)
        assert request(port, "GET", "/api/photos")[0] == 200


@pytest.mark.parametrize("stars", ["NaN", "Infinity", "1e400", "9", "-1", '"five"', "3.5"])
def test_bad_stars_answer_422_and_write_nothing(photo_dir: Path, scorer, stars: str) -> None:
    session = ReviewSession(photo_dir, scorer, workers=0)
    session.start()
    for port in serving(session):
        wait_ready(port)
        body = f'{{"path": "img1.jpg", "action": "stars", "stars": {stars}}}'
        status, answer = request(port, "POST", "/api/label", body)
        assert status == 422, answer
        assert len(json.loads(answer)["detail"]) < 300
        assert not sidecar_path(photo_dir / "img1.jpg").exists()
        assert (
            request(port, "POST", "/api/label", '{"path": "img1.jpg", "action": "stars", "stars": 2}')[0]
            == 200
        )


def test_a_wildcard_host_answers_requests_to_this_machines_addresses(photo_dir: Path, scorer) -> None:
    session = ReviewSession(photo_dir, scorer, workers=0)
    session.start()
    for port in serving(session, bind_as="0.0.0.0"):
        for host in (
            f"192.168.1.20:{port}",
            f"[fe80::1]:{port}",
            f"{socket.gethostname()}:{port}",
            "10.0.0.7",
        ):
            assert request(port, "GET", "/api/status", host=host)[0] == 200, host
        for host in (f"evil.example:{port}", "attacker.test", f"127.0.0.1.nip.io:{port}"):
            assert request(port, "GET", "/api/status", host=host)[0] == 400, host  # DNS rebinding
    for port in serving(session, bind_as="192.168.1.20"):  # one address: that address only
        assert request(port, "GET", "/api/status", host=f"192.168.1.20:{port}")[0] == 200
        assert request(port, "GET", "/api/status", host=f"10.0.0.7:{port}")[0] == 400
        assert request(port, "GET", "/api/status", host=f"localhost:{port}")[0] == 200


def test_the_app_command_serves_before_building_the_scorer(
    photo_dir: Path, tiny_clip_spec: str, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from clip_aesthetics.app import server as server_module
    from clip_aesthetics.cli import app
    from test_cli_score import PROMPT_ARGS

    served = []
    monkeypatch.setattr(server_module, "serve", lambda session, host, port: served.append(session))
    args = ["app", str(photo_dir), "--port", str(free_port()), "--model", tiny_clip_spec, *PROMPT_ARGS]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    session = served[0]
    assert session.scorer is None and session.status["state"] == "starting"  # nothing loaded before serving
    session._analyse()  # what the background thread does
    assert session.status["state"] == "ready" and session.scorer.method == "zeroshot"


def test_thumbnails_and_previews_are_served_while_the_shoot_is_analysed(photo_dir: Path, scorer) -> None:
    """The page lists the photos analysed so far; their thumbnails and previews must load then too."""
    from urllib.parse import quote

    from PIL import Image

    session = ReviewSession(photo_dir, scorer, workers=0)
    session.scorer = scorer
    session._analyse()
    # the state while analysing: only the photos so far, no whole shoot yet
    session.partial, session.partial_index, session.shoot = session.shoot, session.index, None
    rel = next(iter(session.partial_index))
    for port in serving(session):
        for route in ("thumb", "photo"):
            status, body = request(port, "GET", f"/{route}/{quote(rel)}")
            assert status == 200, (route, body[:200])
            assert Image.open(io.BytesIO(body)).size[0] > 0
