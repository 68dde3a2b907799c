"""Property-based fuzzing of the HTTP API: no request, however odd, gets a 5xx, and every
well-formed /recommend gets a 200 with a valid line."""

from __future__ import annotations

import http.client
import json
import re
import string
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.conftest import TOKEN

_URL_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/"
_LINE = re.compile(r"^[^, ]*(,[^, ]+)*$")

_segment = st.one_of(
    st.integers(-(10**12), 10**25).map(str),
    st.text(_URL_CHARS, max_size=30),
    st.binary(max_size=8).map(lambda raw: "".join(f"%{byte:02X}" for byte in raw)),
)
_paths = st.one_of(
    st.sampled_from(
        [
            "/healthz",
            "/health",
            "/readyz",
            "/metrics",
            "/openapi.json",
            "/admin/routing",
            "/admin/live",
            "/admin/canary",
            "/admin/promote",
            "/recommend/",
            "/recommend",
            "/",
        ]
    ),
    _segment.map(lambda segment: f"/recommend/{segment}"),
    st.tuples(_segment, _segment).map(lambda parts: f"/recommend/{parts[0]}/{parts[1]}"),
    st.tuples(st.sampled_from(["/admin/", "/", "/recommend/1?"]), _segment).map("".join),
)
_authorization = st.one_of(
    st.none(),
    st.just(f"Bearer {TOKEN}"),
    st.text(string.printable.strip(), max_size=40).map(lambda t: f"Bearer {t}"),
    st.text(string.printable.strip(), max_size=40),
)
_versions = st.one_of(st.text(max_size=70), st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True))
_json_bodies = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(_versions, st.integers(), st.none()),
        "share": st.one_of(st.floats(allow_nan=True), st.integers(), st.booleans(), st.text()),
        "salt": st.one_of(st.text(max_size=200), st.integers(), st.none()),
        "force": st.one_of(st.booleans(), st.integers(), st.text(max_size=3)),
    },
)
_bodies = st.one_of(
    st.none(),
    st.binary(max_size=300),
    _json_bodies.map(lambda document: json.dumps(document).encode()),
)


def _request(
    base_url: str, method: str, path: str, headers: dict[str, str], body: bytes | None
) -> tuple[int, bytes, dict[str, str]]:
    url = urlsplit(base_url)
    assert url.hostname is not None and url.port is not None
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    path=_paths,
    authorization=_authorization,
    content_type=st.sampled_from([None, "application/json", "text/plain", "x/y; charset=zz"]),
    body=_bodies,
)
def test_no_request_gets_a_server_error(
    live_server: str,
    method: str,
    path: str,
    authorization: str | None,
    content_type: str | None,
    body: bytes | None,
) -> None:
    headers = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if content_type is not None:
        headers["Content-Type"] = content_type
    status, _, _ = _request(live_server, method, path, headers, body)
    assert status < 500, (method, path, headers, body)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(user_id=st.integers(0, 10_000_000), zeros=st.integers(0, 3))
def test_every_valid_user_id_gets_a_line(live_server: str, user_id: int, zeros: int) -> None:
    status, body, headers = _request(
        live_server, "GET", f"/recommend/{'0' * zeros}{user_id}", {}, None
    )
    assert status == 200
    line = body.decode()
    assert _LINE.match(line) and len(line.split(",")) <= 20
    assert headers["X-Request-Id"] and headers["X-Model-Version"]
