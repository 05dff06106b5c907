"""Exposure: API keys, Host allow-list (DNS rebinding), cross-origin refusal, refusing to listen
beyond loopback without a key, and paths that must not reach outside the data folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ris import Client, RISError

from .server import ROOT, Server, make_config, with_plugins

pytestmark = pytest.mark.slow
KEY = "test-key-123"


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("locked")
    cfg = make_config(tmp, tts={"enabled": True})
    cfg["server"] = {"api_keys": [KEY], "allowed_origins": ["https://app.example"]}
    srv = Server(tmp, cfg, api_key=KEY).start()
    yield srv
    srv.stop()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def test_every_endpoint_but_health_needs_the_key(locked: Server) -> None:
    assert httpx.get(f"{locked.url}/health").status_code == 200
    for path in ("/ready", "/api/stats", "/metrics", "/api/tasks", "/openapi.json"):
        r = httpx.get(f"{locked.url}{path}")
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    r = httpx.post(f"{locked.url}/api/llm/generate", json={"prompt": "hi"})
    assert r.status_code == 401
    r = httpx.get(f"{locked.url}/api/stats", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    # A key was sent: it is refused, not asked for.
    assert "not one this server accepts" in r.json()["error"]["message"]
    assert "needs an API key" in httpx.get(f"{locked.url}/api/stats").json()["error"]["message"]
    # The console's cookie with a key since taken away: to log in again, not "needs a key".
    r = httpx.get(f"{locked.url}/api/console/state", headers={"Cookie": "ris_key=an-old-key"})
    assert r.status_code == 401 and "log in again at /ui/login" in r.json()["error"]["message"]
    assert httpx.get(f"{locked.url}/api/stats", headers=auth()).status_code == 200


def test_openai_routes_answer_401_in_openai_shape(locked: Server) -> None:
    r = httpx.get(f"{locked.url}/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    openai = pytest.importorskip("openai")
    oa = openai.OpenAI(base_url=f"{locked.url}/v1", api_key=KEY, max_retries=0)
    assert any(m.id == "smollm2" for m in oa.models.list())


def test_sdk_sends_the_key(locked: Server) -> None:
    with Client(locked.url, api_key=KEY, max_retries=0) as c:
        assert c.generate("Hi", max_tokens=2, ignore_eos=True).usage["completion_tokens"] == 2
    with Client(locked.url, max_retries=0) as c, pytest.raises(RISError) as exc:
        c.stats()
    assert exc.value.status == 401


def test_foreign_host_header_is_refused(locked: Server) -> None:
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.nip.io"):
        r = httpx.get(f"{locked.url}/api/stats", headers={**auth(), "Host": host})
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed", host
    r = httpx.get(f"{locked.url}/health", headers={"Host": f"localhost:{locked.port}"})
    assert r.status_code == 200


def test_the_address_the_server_listens_on_is_served(tmp_path: Path) -> None:
    """`ris serve --host 127.0.0.2` (Linux routes all of 127/8 to loopback): requests
    addressed to it (Host: 127.0.0.2:PORT) are served, and to other addresses; names other
    than its own are not."""
    cfg = make_config(tmp_path, tts={"enabled": False}, image={"enabled": False})
    cfg["server"] = {"host": "127.0.0.2"}
    srv = Server(tmp_path, cfg)
    assert srv.url == f"http://127.0.0.2:{srv.port}"
    try:
        srv.start(timeout=120)
    except (RuntimeError, TimeoutError) as e:
        pytest.fail(f"the server did not answer at its own address: {e}")
    try:
        r = httpx.get(f"{srv.url}/api/stats")
        assert r.request.headers["host"] == f"127.0.0.2:{srv.port}"
        assert r.status_code == 200, r.text
        short = {"prompt": "Hi", "max_tokens": 2, "ignore_eos": True}
        r = httpx.post(f"{srv.url}/api/llm/generate", json=short)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
        # An address written as one is served (no DNS rebinding sends it); a name is not.
        r = httpx.get(f"{srv.url}/api/stats", headers={"Host": f"127.0.0.3:{srv.port}"})
        assert r.status_code == 200, r.text
        r = httpx.get(f"{srv.url}/api/stats", headers={"Host": f"box.example:{srv.port}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    finally:
        srv.stop()


def test_cross_origin_requests_are_refused_unless_configured(locked: Server) -> None:
    r = httpx.get(f"{locked.url}/api/stats", headers={**auth(), "Origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    r = httpx.get(f"{locked.url}/api/stats", headers={**auth(), "Origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    # Its script may read the headers answers carry (speech's warnings among them).
    exposed = {h.strip() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"X-Task-Id", "Retry-After", "X-Sample-Rate", "X-Warnings"} <= exposed
    pre = httpx.options(
        f"{locked.url}/api/llm/generate",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204 and "Authorization" in pre.headers["access-control-allow-headers"]
    # The OpenAI SDK for JavaScript in a browser: its own headers on every request.
    sdk = httpx.options(
        f"{locked.url}/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os,x-stainless-lang",
        },
    )
    allowed = {h.strip().lower() for h in sdk.headers["access-control-allow-headers"].split(",")}
    assert sdk.status_code == 204 and {"authorization", "x-stainless-os", "x-stainless-lang"} <= allowed
    same = httpx.get(f"{locked.url}/api/stats", headers={**auth(), "Origin": locked.url})
    assert same.status_code == 200  # the server's own pages (/docs) are same-origin


def test_listening_beyond_loopback_without_a_key_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ris", "serve", "--config", str(ROOT / "config.json"), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "'0.0.0.0' exposes the service" in out.stderr and "api_keys" in out.stderr


@pytest.mark.parametrize(
    "bad",
    [
        "../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e%2f%2e%2e",
        "..\\..\\windows",
        "abc%00def",
        "A" * 32,
        "0" * 31,
        "0" * 33,
    ],
)
def test_task_ids_are_validated_everywhere(server: Server, bad: str) -> None:
    for path in (
        f"/api/tasks/{bad}",
        f"/api/tts/audio/{bad}",
        f"/api/image/result/{bad}",
        f"/api/image/progress/{bad}",
    ):
        r = httpx.get(f"{server.url}{path}")
        assert r.status_code == 404, (path, r.status_code)
        assert "passwd" not in r.text.lower() or r.json()["error"]["code"] == "not_found"


def test_model_names_never_become_paths(server: Server) -> None:
    for name in ("../../etc/passwd", "/etc/passwd", "C:\\\\models\\\\x.gguf"):
        r = httpx.post(f"{server.url}/api/llm/generate", json={"prompt": "x", "model": name})
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_model"
        r = httpx.post(f"{server.url}/api/image/generate", json={"prompt": "x", "model": name})
        assert r.status_code == 404


@pytest.mark.skipif(os.name == "nt", reason="POSIX file modes")
def test_what_the_server_writes_is_private_to_its_user(server: Server) -> None:
    """At umask 022 the store (every user's prompts) and the results were readable by any local
    user, whatever the API keys said."""
    with Client(server.url, max_retries=0) as c:
        task_id = c.generate_image("x", width=64, height=64, steps=1)["task_id"]
        c.wait(task_id, timeout=60)
    data = Path(server.config["data_dir"])
    for path in (data, data / "tasks.db", data / "images", data / "images" / f"{task_id}.png"):
        assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))


def test_result_symlinked_out_of_the_data_folder_is_not_served(server: Server) -> None:
    with Client(server.url, max_retries=0) as c:
        task_id = c.generate_image("x", width=64, height=64, steps=1)["task_id"]
        c.wait(task_id, timeout=60)
        png = Path(server.config["data_dir"]) / "images" / f"{task_id}.png"
        png.unlink()
        os.symlink("/etc/passwd", png)
        r = httpx.get(f"{server.url}/api/image/result/{task_id}")
        assert r.status_code == 404 and "root:" not in r.text


def test_nothing_unpickles_untrusted_files() -> None:
    src = ROOT / "src" / "ris"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text, path
        for i, line in enumerate(text.splitlines()):
            if "torch.load(" in line:
                assert "weights_only=True" in line, f"{path}:{i + 1}"


def test_workers_listen_on_no_socket(server: Server) -> None:
    import psutil

    for lane in ("llm", "tts", "image"):
        proc = psutil.Process(server.worker_pid(lane))
        listening = [c for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening == [], (lane, listening)
        assert all(c.status != psutil.CONN_ESTABLISHED for c in proc.net_connections(kind="inet"))


def test_server_listens_on_loopback_only_by_default(server: Server) -> None:
    import psutil

    assert server.proc is not None
    ports = [
        c
        for c in psutil.Process(server.proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert ports and all(c.laddr.ip in ("127.0.0.1", "::1") for c in ports)


def test_wrong_content_type_is_a_clear_error(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/api/llm/generate",
        content=b"prompt=hi",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_guessing_keys_is_throttled_per_address_on_the_api_and_the_login(tmp_path: Path) -> None:
    """1,000 wrong keys from one address: ten are checked, the rest answered 429 unchecked
    (ris.api.keys); the console's login spends the same budget; the log never shows a key."""
    echo = {"cores": [0], "default_model": "up", "models": {"up": {"backend": "upper"}}}
    srv = with_plugins(tmp_path, ["ris_echo"], {"echo": echo}, {"api_keys": [KEY]})
    try:
        statuses: Counter[int] = Counter()
        with httpx.Client(base_url=srv.url) as http:  # one connection, as fast as it goes
            for i in range(1000):
                r = http.get("/api/stats", headers={"Authorization": f"Bearer guess-{i:04d}"})
                statuses[r.status_code] += 1
                if r.status_code == 429:
                    assert r.json()["error"]["code"] == "too_many_wrong_keys"
                    assert int(r.headers["retry-after"]) >= 1
            assert set(statuses) == {401, 429} and statuses[401] <= 20, statuses
            login = http.post("/ui/login", data={"key": "guess-login"})
            assert login.status_code == 429 and "Too many wrong keys" in login.text
            # An address of one's choosing in X-Forwarded-For is no way around it: the client
            # is the connection's peer (no proxy is trusted).
            for i in range(20):
                spoofed = {"Authorization": f"Bearer xff-{i}", "X-Forwarded-For": f"10.0.0.{i}"}
                assert http.get("/api/stats", headers=spoofed).status_code == 429
        assert "guess-" not in srv.log_path.read_text()
    finally:
        srv.stop()


def test_an_image_url_from_v1_opens_without_the_key_for_that_image_alone(locked: Server) -> None:
    """Chat UIs put /v1/images/generations' URLs in <img src>, which sends no key: every image
    answered 401 once keys were set. OpenAI's URLs open for whoever holds them, for an hour."""
    openai = pytest.importorskip("openai")
    oa = openai.OpenAI(base_url=f"{locked.url}/v1", api_key=KEY, max_retries=0)
    url = oa.images.generate(prompt="a red square", size="64x64").data[0].url
    assert url is not None
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
    # For that image alone, as signed: another id, a longer life or no signature needs the key.
    path, _, query = url.partition("?")
    assert httpx.get(f"{locked.url}/api/image/result/{'0' * 32}?{query}").status_code == 401
    longer = httpx.get(f"{path}?{query.replace('expires=', 'expires=9')}")
    assert longer.status_code == 401 and longer.json()["error"]["code"] == "url_invalid", longer.text
    assert f"GET /api/tasks/{path.rsplit('/', 1)[1]}" in longer.json()["error"]["message"]
    assert httpx.get(path).status_code == 401
    assert httpx.get(path, headers=auth()).status_code == 200


def test_the_seed_apis_result_urls_open_without_the_key_for_that_result_alone(locked: Server) -> None:
    """/api/tts/synthesize's audio_url and /api/image/generate's result_url go into <audio src>
    and <img src> as they are, which send no key: behind api_keys both answered 401. They come
    signed, as /v1's image URLs do; GET /api/tasks/{id} gives the same links."""
    spoken = httpx.post(
        f"{locked.url}/api/tts/synthesize",
        json={"text": "Hello there.", "format": "mp3"},
        headers=auth(),
        timeout=120,
    )
    assert spoken.status_code == 200, spoken.text
    audio_url = spoken.json()["audio_url"]
    assert "format=mp3&expires=" in audio_url and "signature=" in audio_url, audio_url
    r = httpx.get(f"{locked.url}{audio_url}", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg", r.text[:200]
    assert httpx.head(f"{locked.url}{audio_url}", timeout=30).status_code == 200
    path, _, query = audio_url.partition("?")
    as_wav = f"{locked.url}{path}?format=wav&{query.partition('&')[2]}"  # the same audio
    assert httpx.get(as_wav).status_code == 200
    assert httpx.get(f"{locked.url}{path}").status_code == 401
    assert httpx.post(f"{locked.url}{path}?{query}").status_code in (401, 405)  # GET and HEAD only
    task = httpx.get(f"{locked.url}/api/tasks/{spoken.json()['task_id']}", headers=auth()).json()
    assert task["result"]["audio_url"].startswith(path + "?expires="), task["result"]
    assert httpx.get(f"{locked.url}{task['result']['audio_url']}").status_code == 200

    accepted = httpx.post(
        f"{locked.url}/api/image/generate",
        json={"prompt": "a red square", "width": 64, "height": 64, "steps": 2},
        headers=auth(),
    )
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    deadline = time.monotonic() + 120
    while httpx.get(f"{locked.url}{body['progress_url']}", headers=auth()).json()["status"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    image = httpx.get(f"{locked.url}{body['result_url']}", timeout=30)
    assert image.status_code == 200 and image.content[:4] == b"\x89PNG"
    # The signature covers the path, which names the task: not another result's.
    other = f"{locked.url}/api/tts/audio/{spoken.json()['task_id']}?{body['result_url'].partition('?')[2]}"
    assert httpx.get(other).status_code == 401


def test_the_console_login_takes_posts_from_its_own_page_only(locked: Server) -> None:
    """Login CSRF: a page of an allowed origin (or another port of the host: same site) that
    posts its own key to the login form logged the browser's console in as that key, and what
    the person asked next became that key owner's tasks to read."""
    form = {"key": KEY, "next": "/ui/playground"}
    for headers in (
        {"Origin": "https://app.example"},  # allowed to call the API with a key of its own
        {"Sec-Fetch-Site": "same-site"},  # another port of this host, its Origin left out
        {"Origin": "null"},
    ):
        r = httpx.post(f"{locked.url}/ui/login", data=form, headers=headers)
        assert r.status_code == 403 and "set-cookie" not in r.headers, (headers, r.text)
    own = locked.url.removeprefix("http://")
    r = httpx.post(
        f"{locked.url}/ui/login",
        data=form,
        headers={"Origin": f"http://{own}", "Sec-Fetch-Site": "same-origin"},
    )
    assert r.status_code == 303 and KEY not in r.headers["set-cookie"]
    assert httpx.post(f"{locked.url}/ui/login", data=form).status_code == 303  # no browser: no CSRF
