"""The ops console's guard rails over HTTP (the real gateway under uvicorn): sign-in with an admin key only, a
signed HttpOnly SameSite=Strict cookie, CSRF on every change, tampered or foreign cookies refused, and the
actions' refusals. The pages in a real browser: tests/test_console_browser.py."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.api_keys import Scope, create_key, revoke_key
from registry import store
from tests.gateway_helpers import RunningGateway, running_gateway
from tests.test_deploy_helpers import base_and_candidate
from tuneloop.console.session import COOKIE_NAME, SessionCodec

PAGES = ["/console", "/console/cycles", "/console/cycles/1", "/console/versions", "/console/versions/assistant-v1",
         "/console/interactions", "/console/interactions/someid", "/console?window=24h"]


@pytest.fixture
def gateway(any_db_url: str, tmp_path: Path) -> Iterator[RunningGateway]:
    with running_gateway(any_db_url, tmp_path / "home", upstreams={}) as running:
        yield running


def sign_in(gateway: RunningGateway, key: str | None = None) -> httpx.Client:
    client = httpx.Client(base_url=gateway.url, timeout=30)
    answer = client.post("/console/signin", data={"key": key or gateway.admin_key, "next": "/console"})
    assert answer.status_code == 303, answer.text
    return client


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def test_every_page_sends_a_stranger_to_sign_in(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        for path in PAGES:
            answer = client.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/console/signin?next=%2Fconsole"), path
        # a change without a session changes nothing and asks for a sign-in
        answer = client.post("/console/actions", data={"action": "promote", "alias": "assistant", "version": "x"})
        assert answer.status_code == 303 and answer.headers["location"].startswith("/console/signin")


def test_the_session_cookie_is_signed_http_only_strict_and_never_the_key(gateway: RunningGateway) -> None:
    client = httpx.Client(base_url=gateway.url)
    answer = client.post("/console/signin", data={"key": gateway.admin_key, "next": "/console/versions"})
    assert answer.status_code == 303 and answer.headers["location"] == "/console/versions"
    header = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in header.lower()
    assert gateway.admin_key not in header
    for path in PAGES[:1] + PAGES[3:4] + PAGES[5:6]:
        assert client.get(path).status_code == 200, path
    page = client.get("/console").text
    assert gateway.admin_key not in page  # nor in any page


def test_sign_in_refuses_app_keys_and_unknown_keys(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        app = client.post("/console/signin", data={"key": gateway.app_key})
        assert app.status_code == 403 and "app key" in app.text and "set-cookie" not in app.headers
        unknown = client.post("/console/signin", data={"key": "tl-" + "x" * 40})
        assert unknown.status_code == 401 and "not valid" in unknown.text and "set-cookie" not in unknown.headers
        assert client.get("/console").status_code == 303


def test_an_open_redirect_after_sign_in_goes_home_instead(gateway: RunningGateway) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        for target in ("https://evil.example/", "//evil.example/console", "/v1/models"):
            answer = client.post("/console/signin", data={"key": gateway.admin_key, "next": target})
            assert answer.headers["location"] == "/console", target


def test_tampered_or_foreign_cookies_are_refused(gateway: RunningGateway) -> None:
    client = sign_in(gateway)
    good = client.cookies[COOKIE_NAME]
    payload, stamp, signature = good.split(".")
    # another key's id under the same signature; a signature with one byte changed (a middle character: the last
    # one of unpadded base64 carries spare bits, and some changes to it decode to the same bytes)
    other_id = base64.urlsafe_b64encode(json.dumps({"k": "admin-bootstrap", "c": "x"}).encode()).decode().rstrip("=")
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1:]
    foreign, _ = SessionCodec("some other secret", 3600).issue("admin-bootstrap")
    for cookie in (f"{other_id}.{stamp}.{signature}", f"{payload}.{stamp}.{flipped}", foreign, "junk"):
        with httpx.Client(base_url=gateway.url, cookies={COOKIE_NAME: cookie}) as forged:
            assert forged.get("/console").status_code == 303, cookie
    with httpx.Client(base_url=gateway.url, cookies={COOKIE_NAME: good}) as same:
        assert same.get("/console").status_code == 200  # the control: the untouched cookie works


def test_a_session_ends_at_its_max_age(monkeypatch: pytest.MonkeyPatch) -> None:
    import itsdangerous.timed

    codec = SessionCodec("secret", max_age_s=3600)
    cookie, session = codec.issue("key_1")
    assert codec.read(cookie) == session
    issued = itsdangerous.timed.time.time()
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: issued + 3599)
    assert codec.read(cookie) == session
    monkeypatch.setattr(itsdangerous.timed.time, "time", lambda: issued + 3602)
    assert codec.read(cookie) is None


def test_sign_out_ends_the_session_and_a_revoked_key_ends_it_too(gateway: RunningGateway) -> None:
    client = sign_in(gateway)
    token = csrf_of(client.get("/console").text)
    assert client.post("/console/signout", data={"csrf_token": token}).status_code == 303
    assert client.get("/console").status_code == 303

    public, plain = create_key(gateway.engine, Scope.admin, "short-lived admin")
    second = sign_in(gateway, plain)
    assert second.get("/console").status_code == 200
    revoke_key(gateway.engine, public.id)
    assert second.get("/console").status_code == 303


def test_a_change_without_the_csrf_token_is_refused_and_changes_nothing(gateway: RunningGateway,
                                                                          tmp_path: Path) -> None:
    engine = gateway.engine
    production, candidate = base_and_candidate(engine, tmp_path)
    store.start_canary(engine, candidate, 10, "test", "a canary to act on")
    client = sign_in(gateway)
    form = {"action": "weight", "alias": "assistant", "version": candidate, "weight": "50"}
    for token in (None, "", "wrong-token"):
        data = form if token is None else {**form, "csrf_token": token}
        answer = client.post("/console/actions", data=data)
        assert answer.status_code == 403 and "CSRF" in answer.text
        assert store.get_aliases(engine, "assistant") == (production, candidate, 10)
    # the control: the same form with the page's token changes the weight
    token = csrf_of(client.get("/console").text)
    answer = client.post("/console/actions", data={**form, "csrf_token": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/console?notice=weight"
    assert store.get_aliases(engine, "assistant") == (production, candidate, 50)
    assert store.audit_log(engine, "assistant")[-1].actor.startswith("console:")


def test_refusals_are_shown_with_the_registrys_reason(gateway: RunningGateway, tmp_path: Path) -> None:
    engine = gateway.engine
    production, candidate = base_and_candidate(engine, tmp_path)
    store.start_canary(engine, candidate, 10, "test", "a canary to act on")
    client = sign_in(gateway)
    token = csrf_of(client.get("/console").text)
    cases = [
        ({"action": "weight", "version": candidate, "weight": "150"}, "weight"),
        ({"action": "weight", "version": candidate, "weight": "lots"}, "weight: 'lots'"),
        ({"action": "promote", "version": production}, "canary"),  # the page is stale: that is not the canary
        ({"action": "launch", "version": candidate}, "action: 'launch'"),
        ({"action": "rollback", "version": ""}, "version: missing"),
    ]
    for fields, expected in cases:
        answer = client.post("/console/actions", data={"csrf_token": token, "alias": "assistant", **fields})
        assert answer.status_code == 409, fields
        shown = html.unescape(answer.text)
        assert "Refused:" in shown and expected in shown, (fields, shown[-800:])
        assert store.get_aliases(engine, "assistant") == (production, candidate, 10)


def test_console_can_be_turned_off(any_db_url: str, tmp_path: Path) -> None:
    with running_gateway(any_db_url, tmp_path / "off", upstreams={}, console={"enabled": False}) as gateway, \
            httpx.Client(base_url=gateway.url) as client:
        assert client.get("/console").status_code == 404


def test_hostile_page_parameters_get_a_page_or_a_400_never_a_500(gateway: RunningGateway) -> None:
    client = sign_in(gateway)
    answers = {path: client.get(path).status_code for path in (
        "/console/interactions?page=99999999999999999999", "/console/interactions?page=-5",
        "/console/interactions?q=" + "%25" * 3000, "/console?window=%3Cscript%3E",
        "/console/cycles/99999999999999999999", "/console/cycles/-1", "/console/interactions/%00",
        "/console/static/..%2fsession.py", "/console/versions/%00", "/console/interactions?q=%00&alias=%00")}
    assert answers == {
        "/console/interactions?page=99999999999999999999": 200, "/console/interactions?page=-5": 200,
        "/console/interactions?q=" + "%25" * 3000: 200, "/console?window=%3Cscript%3E": 200,
        "/console/cycles/99999999999999999999": 400, "/console/cycles/-1": 400, "/console/interactions/%00": 404,
        "/console/static/..%2fsession.py": 404, "/console/versions/%00": 404,
        "/console/interactions?q=%00&alias=%00": 200}
    assert "<script>" not in client.get("/console?window=%3Cscript%3E").text
