"""Route middleware on a real server: CORS, rate limits, auth, security headers, request ids, merge rule."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.modules.http.conftest import FakeClock, Serve, requests_total
from workflow_engine.modules.http.middleware import (
    AuthConfig,
    CorsConfig,
    JwtConfig,
    MiddlewareConfig,
    RateLimitConfig,
    merge_middleware,
)
from workflow_engine.observability.logging import log_context
from workflow_engine.observability.metrics import Metrics

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"


async def ok(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def whoami(request: Request) -> Response:
    return JSONResponse({"auth": request.state.auth})


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256")


# --- CORS ------------------------------------------------------------------------------------------

CORS = MiddlewareConfig(cors=CorsConfig(allow_origins=["https://app.example"], allow_headers=["X-Tenant"],
                                        expose_headers=["X-Request-Id"], max_age="10m"))


async def test_cors_preflight_is_answered_without_the_endpoint(serve: Serve, metrics: Metrics) -> None:
    calls = 0

    async def counting(request: Request) -> Response:
        nonlocal calls
        calls += 1
        return await ok(request)

    _, client = await serve([("POST", "/orders", counting, CORS)])

    response = await client.options("/orders", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-tenant",
    })

    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in response.headers["access-control-allow-methods"]
    assert response.headers["access-control-allow-headers"] == "content-type, x-tenant"
    assert response.headers["access-control-max-age"] == "600"
    assert response.headers["vary"] == "Origin"
    assert calls == 0
    assert requests_total(metrics, server="web", method="OPTIONS", path="/orders", status_code="204") == 1


async def test_cors_preflight_refuses_unknown_origin_and_headers(serve: Serve) -> None:
    _, client = await serve([("POST", "/orders", ok, CORS)])
    asks = {"Access-Control-Request-Method": "POST"}

    evil = await client.options("/orders", headers={"Origin": "https://evil.example", **asks})
    header = await client.options("/orders", headers={
        "Origin": "https://app.example", "Access-Control-Request-Headers": "x-secret", **asks})

    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers
    assert header.status_code == 400
    assert "x-secret" in header.json()["error"]["message"]


async def test_cors_headers_on_responses_to_allowed_origins_only(serve: Serve) -> None:
    _, client = await serve([("GET", "/orders", ok, CORS)])

    allowed = await client.get("/orders", headers={"Origin": "https://app.example"})
    other = await client.get("/orders", headers={"Origin": "https://evil.example"})
    same_origin = await client.get("/orders")

    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.headers["access-control-expose-headers"] == "X-Request-Id"
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in same_origin.headers


async def test_cors_wildcard_with_credentials_echoes_the_origin(serve: Serve) -> None:
    config = MiddlewareConfig(cors=CorsConfig(allow_origins=["*"], allow_credentials=True))
    _, client = await serve([("GET", "/orders", ok, config)])

    response = await client.get("/orders", headers={"Origin": "https://any.example"})

    assert response.headers["access-control-allow-origin"] == "https://any.example"
    assert response.headers["access-control-allow-credentials"] == "true"


async def test_options_without_cors_is_405(serve: Serve) -> None:
    _, client = await serve([("POST", "/orders", ok)])

    response = await client.options("/orders", headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})

    assert response.status_code == 405


# --- rate limit ------------------------------------------------------------------------------------

async def test_rate_limit_refuses_with_429_then_recovers(
    serve: Serve, clock: FakeClock, metrics: Metrics
) -> None:
    config = MiddlewareConfig(rate_limit=RateLimitConfig(rate=1, burst=2))
    _, client = await serve([("GET", "/limited", ok, config)])

    statuses = [(await client.get("/limited")).status_code for _ in range(2)]
    refused = await client.get("/limited")
    clock.advance(1.0)
    recovered = await client.get("/limited")

    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "rate_limited"
    assert recovered.status_code == 200
    assert requests_total(metrics, server="web", method="GET", path="/limited", status_code="429") == 1


async def test_rate_limit_per_header_keeps_a_bounded_set_of_buckets(serve: Serve) -> None:
    config = MiddlewareConfig(rate_limit=RateLimitConfig(rate=1, burst=1, key="header:X-Tenant", max_keys=2))
    _, client = await serve([("GET", "/limited", ok, config)])

    async def status(tenant: str) -> int:
        return (await client.get("/limited", headers={"X-Tenant": tenant})).status_code

    assert [await status("a"), await status("a"), await status("b")] == [200, 429, 200]
    # A third tenant evicts the least recently used bucket ("a"), which starts full when it returns.
    assert await status("c") == 200
    assert await status("b") == 429
    assert await status("a") == 200


def test_rate_limit_key_is_validated() -> None:
    with pytest.raises(ValidationError):
        RateLimitConfig(rate=1, key="cookie:session")
    with pytest.raises(ValidationError):
        RateLimitConfig(rate=0)


# --- auth ------------------------------------------------------------------------------------------

async def test_api_key_is_required(serve: Serve) -> None:
    config = MiddlewareConfig(auth=AuthConfig(api_keys=["key-one", "key-two"]))
    _, client = await serve([("GET", "/me", whoami, config)])

    missing = await client.get("/me")
    wrong = await client.get("/me", headers={"X-API-Key": "key-three"})
    right = await client.get("/me", headers={"X-API-Key": "key-two"})

    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
    assert missing.json()["error"]["code"] == "unauthorized"
    assert wrong.status_code == 401
    assert right.status_code == 200
    assert right.json() == {"auth": {"api_key": True}}


async def test_jwt_claims_reach_the_endpoint(serve: Serve) -> None:
    config = MiddlewareConfig(auth=AuthConfig(jwt=JwtConfig(secret=SECRET, audience="orders")))
    _, client = await serve([("GET", "/me", whoami, config)])

    good = await client.get("/me", headers={"Authorization": f"Bearer {token(aud='orders')}"})

    assert good.status_code == 200
    assert good.json()["auth"]["sub"] == "alice"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic YWxpY2U6cHc=",
        f"Bearer {token(aud='orders', exp=int(time.time()) - 600)}",
        f"Bearer {token(aud='billing')}",
        "Bearer " + jwt.encode({"sub": "x", "aud": "orders", "exp": int(time.time()) + 60}, "x" * 40),
        "Bearer " + jwt.encode({"sub": "x", "aud": "orders"}, SECRET, "HS256"),
    ],
    ids=["missing", "basic", "expired", "wrong-audience", "wrong-secret", "no-exp"],
)
async def test_bad_jwts_get_401(serve: Serve, authorization: str | None) -> None:
    config = MiddlewareConfig(auth=AuthConfig(jwt=JwtConfig(secret=SECRET, audience="orders")))
    _, client = await serve([("GET", "/me", whoami, config)])

    response = await client.get("/me", headers={"Authorization": authorization} if authorization else {})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="workflow"')
    assert response.json()["error"]["code"] == "unauthorized"


def test_auth_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="api_keys, jwt or both"):
        AuthConfig()
    with pytest.raises(ValidationError, match="at least 32"):
        JwtConfig(secret="short")
    with pytest.raises(ValidationError, match="unsupported algorithm"):
        JwtConfig(secret=SECRET, algorithms=["none"])
    assert "key-one" not in repr(AuthConfig(api_keys=["key-one"]))


# --- security headers and request id ---------------------------------------------------------------

async def test_security_headers_by_default(serve: Serve) -> None:
    async def cached(request: Request) -> Response:
        return Response("hello", media_type="text/plain", headers={"Cache-Control": "max-age=60"})

    _, client = await serve([("GET", "/json", ok), ("GET", "/cached", cached)])

    json_answer = await client.get("/json")
    text_answer = await client.get("/cached")

    for response in (json_answer, text_answer):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert json_answer.headers["cache-control"] == "no-store"
    assert json_answer.headers["content-security-policy"] == "default-src 'none'"
    assert text_answer.headers["cache-control"] == "max-age=60"
    assert "content-security-policy" not in text_answer.headers


async def test_request_id_is_echoed_generated_and_bound_to_logs(serve: Serve) -> None:
    async def context(request: Request) -> Response:
        return JSONResponse(log_context())

    _, client = await serve([("GET", "/ctx", context)])

    echoed = await client.get("/ctx", headers={"X-Request-Id": "abc-123"})
    generated = await client.get("/ctx")
    too_long = await client.get("/ctx", headers={"X-Request-Id": "a" * 129})

    assert echoed.headers["x-request-id"] == "abc-123"
    assert echoed.json()["request_id"] == "abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    assert generated.json()["request_id"] == generated.headers["x-request-id"]
    assert too_long.headers["x-request-id"] != "a" * 129
    assert "request_id" not in log_context()


async def test_middleware_can_be_turned_off(serve: Serve) -> None:
    off = {"request_id": False, "security_headers": False}
    _, client = await serve([("GET", "/bare", ok)], middleware=off)

    response = await client.get("/bare", headers={"X-Request-Id": "abc"})

    assert "x-request-id" not in response.headers
    assert "x-frame-options" not in response.headers


# --- merge rule ------------------------------------------------------------------------------------

async def test_route_fields_replace_server_defaults(serve: Serve) -> None:
    server_wide = {"auth": {"api_keys": ["k"]}}
    routes = [
        ("GET", "/inherits", ok, None),
        ("GET", "/limited", ok, MiddlewareConfig(rate_limit=RateLimitConfig(rate=100))),
        ("GET", "/public", ok, MiddlewareConfig(auth=None)),
    ]
    _, client = await serve(routes, middleware=server_wide)

    assert (await client.get("/inherits")).status_code == 401
    assert (await client.get("/limited")).status_code == 401
    assert (await client.get("/limited", headers={"X-API-Key": "k"})).status_code == 200
    assert (await client.get("/public")).status_code == 200


def test_merge_replaces_only_fields_set() -> None:
    base = MiddlewareConfig(auth=AuthConfig(api_keys=["k"]), max_body_size=10)
    route = MiddlewareConfig.model_validate({"security_headers": False, "max_body_size": "1KB"})

    merged = merge_middleware(base, route)

    assert merged.auth == base.auth
    assert merged.security_headers is False
    assert merged.max_body_size == 1000
    assert merged.request_id is True
    assert merge_middleware(base, None) is base
