"""Route middleware as plain endpoint wrappers: request id, security headers, CORS, rate limit, auth, size.

Each wrapper takes and returns an `Endpoint` (`async (Request) -> Response`); `wrap_endpoint` composes only
the enabled ones once, at route registration, so a request pays for nothing it does not use. Outermost first:
request id → security headers → CORS → rate limit → auth → body limit and error handling → endpoint. CORS
sits outside auth and rate limiting so preflights need no credentials and 401/429 answers stay readable by
browsers.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import orjson
import structlog
from jwt.algorithms import get_default_algorithms
from pydantic import Field, SecretStr, field_validator, model_validator
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Message, Receive

from workflow_engine.config.models import Strict
from workflow_engine.durations import ByteSize, Duration
from workflow_engine.errors import QueueFullError, WorkflowEngineError
from workflow_engine.ids import random_hex
from workflow_engine.observability.logging import bind_log_context, reset_log_context

Endpoint = Callable[[Request], Awaitable[Response]]
Clock = Callable[[], float]

_HMAC_ALGORITHMS = frozenset(a for a in get_default_algorithms() if a != "none")
_SAFELISTED_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type"})
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_NO_STORE = (b"cache-control", b"no-store")
_JSON_CSP = (b"content-security-policy", b"default-src 'none'")


class CorsConfig(Strict):
    """Cross-origin resource sharing for browser clients."""

    allow_origins: list[str] = Field(description="Origins allowed to call the route (`*` for any).")
    allow_methods: list[str] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
        description="Methods a preflight may ask for (`*` for any).",
    )
    allow_headers: list[str] = Field(
        default_factory=list,
        description="Request headers a preflight may ask for beyond the safelisted ones (`*`: any).",
    )
    expose_headers: list[str] = Field(
        default_factory=list, description="Response headers scripts may read (e.g. X-Request-Id)."
    )
    allow_credentials: bool = Field(False, description="Allow cookies and Authorization cross-origin.")
    max_age: Duration = Field(600.0, description="How long browsers may cache a preflight answer.")


class RateLimitConfig(Strict):
    """A token bucket per key; requests over the limit get 429 with Retry-After."""

    rate: float = Field(gt=0, description="Sustained requests per second allowed per key.")
    burst: int | None = Field(
        None, ge=1, description="Requests allowed at once from a full bucket; default: one second's worth."
    )
    key: str = Field(
        "global",
        pattern=r"^(global|ip|header:[A-Za-z0-9_-]+)$",
        description="What gets its own bucket: `global`, `ip` (client address) or `header:<Name>` (falls "
        "back to the client address when the header is missing).",
    )
    max_keys: int = Field(
        10_000, ge=1, description="Buckets kept; the least recently used is dropped (and starts full again)."
    )


class JwtConfig(Strict):
    """Bearer JWTs signed with a shared HMAC secret."""

    secret: SecretStr = Field(min_length=32, description="HMAC secret, at least 32 bytes (RFC 7518 §3.2).")
    algorithms: list[str] = Field(
        default_factory=lambda: ["HS256"], min_length=1, description="Accepted `alg` values (HMAC)."
    )
    audience: str | None = Field(None, description="Required `aud` claim.")
    issuer: str | None = Field(None, description="Required `iss` claim.")
    leeway: Duration = Field(0.0, description="Clock skew tolerated on `exp`, `nbf` and `iat`.")
    require: list[str] = Field(default_factory=lambda: ["exp"], description="Claims every token must carry.")

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        unknown = [a for a in value if a not in _HMAC_ALGORITHMS]
        if unknown:
            raise ValueError(f"unsupported algorithm(s) {unknown}; use {sorted(_HMAC_ALGORITHMS)}")
        return value


class AuthConfig(Strict):
    """Request authentication: API keys, bearer JWTs, or both (either one suffices)."""

    api_keys: list[SecretStr] = Field(default_factory=list, description="Accepted API keys.")
    api_key_header: str = Field("X-API-Key", description="Header that carries the API key.")
    jwt: JwtConfig | None = Field(None, description="Accept `Authorization: Bearer <JWT>`.")

    @model_validator(mode="after")
    def _something_accepted(self) -> AuthConfig:
        if not self.api_keys and self.jwt is None:
            raise ValueError("auth needs api_keys, jwt or both")
        return self


class MiddlewareConfig(Strict):
    """Middleware of a route; a route's own fields replace the server's defaults field by field."""

    request_id: bool = Field(True, description="Accept or generate X-Request-Id, echo it, bind it to logs.")
    cors: CorsConfig | None = Field(None, description="Cross-origin access for browsers.")
    rate_limit: RateLimitConfig | None = Field(None, description="Refuse requests above a rate with 429.")
    auth: AuthConfig | None = Field(None, description="Require an API key or a JWT; 401 otherwise.")
    security_headers: bool = Field(True, description="Add nosniff, frame, referrer, cache and CSP headers.")
    max_body_size: ByteSize | None = Field(None, description="Largest request body; 413 above it.")


def merge_middleware(base: MiddlewareConfig, override: MiddlewareConfig | None) -> MiddlewareConfig:
    """`base` with every field that `override` sets explicitly replaced (whole field, no deep merge)."""
    if override is None:
        return base
    return base.model_copy(update={name: getattr(override, name) for name in override.model_fields_set})


class BodyTooLargeError(WorkflowEngineError):
    """The request body is larger than the route allows."""

    code = "body_too_large"
    http_status = 413


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """The engine's JSON error answer: `{"error": {"code": ..., "message": ...}}`."""
    return json_response(status, {"error": {"code": code, "message": message}}, headers)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response serialised with orjson."""
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def wrap_endpoint(
    endpoint: Endpoint,
    config: MiddlewareConfig,
    *,
    clock: Clock = time.monotonic,
    log: Any = None,
) -> Endpoint:
    """`endpoint` inside the middleware `config` enables; exceptions always become JSON errors."""
    log = log if log is not None else structlog.get_logger("workflow_engine.http")
    wrapped = _guard(endpoint, config.max_body_size, log)
    if config.auth is not None:
        wrapped = _Authenticator(config.auth).wrap(wrapped)
    if config.rate_limit is not None:
        wrapped = _RateLimiter(config.rate_limit, clock).wrap(wrapped)
    if config.cors is not None:
        wrapped = _Cors(config.cors).wrap(wrapped)
    if config.request_id:
        wrapped = _request_id(wrapped, security_headers=bool(config.security_headers))
    elif config.security_headers:
        wrapped = _security_headers(wrapped)
    return wrapped


def _guard(endpoint: Endpoint, limit: int | None, log: Any) -> Endpoint:
    """Enforce the body limit and turn exceptions into JSON errors (never a stack trace to the client)."""

    async def guarded(request: Request) -> Response:
        try:
            if limit is not None:
                request = _limit_body(request, limit)
            return await endpoint(request)
        except WorkflowEngineError as exc:
            if exc.http_status >= 500:
                log.error("request_failed", error_code=exc.code, exc_info=True)
            headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFullError) else None
            return json_response(exc.http_status, {"error": exc.to_dict()}, headers)
        except ClientDisconnect:
            # Nobody is left to read an answer; 499 (nginx's convention) keeps it apart in metrics.
            return json_error(499, "client_disconnected", "client closed the connection")
        except Exception:
            log.error("endpoint_failed", exc_info=True)
            return json_error(500, "internal_error", "internal server error")

    return guarded


def _raw_header(request: Request, name: bytes) -> bytes | None:
    # Scanning the raw list is cheaper than building `request.headers` on the hot path.
    headers: list[tuple[bytes, bytes]] = request.scope["headers"]
    for key, value in headers:
        if key == name:
            return value
    return None


def _limit_body(request: Request, limit: int) -> Request:
    length = _raw_header(request, b"content-length")
    if length is not None:
        # The HTTP parser never delivers more than Content-Length, so checking it up front is enough.
        if length.isdigit() and int(length) > limit:
            raise BodyTooLargeError(f"request body of {int(length)} bytes exceeds the limit of {limit} bytes")
        return request
    return Request(request.scope, _limited_receive(request.receive, limit))


def _limited_receive(receive: Receive, limit: int) -> Receive:
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            raise BodyTooLargeError(f"request body exceeds the limit of {limit} bytes")
        return message

    return limited


def _request_id(endpoint: Endpoint, *, security_headers: bool = False) -> Endpoint:
    """The request id middleware; with `security_headers`, it adds those too (one layer for both: each
    layer is a coroutine per request)."""

    async def with_request_id(request: Request) -> Response:
        request_id = _sane_request_id(_raw_header(request, b"x-request-id")) or random_hex(16)
        # Same dict as `request.state`, without building a State object per request.
        request.scope.setdefault("state", {})["request_id"] = request_id
        token = bind_log_context(request_id=request_id)
        try:
            response = await endpoint(request)
        finally:
            reset_log_context(token)
        if security_headers:
            _add_security_headers(response.raw_headers)
        response.raw_headers.append((b"x-request-id", request_id.encode("latin-1")))
        return response

    return with_request_id


def _sane_request_id(raw: bytes | None) -> str | None:
    # An id we echo and log must be short and printable; anything else is replaced, not trusted.
    if not raw or len(raw) > 128 or not raw.isascii():
        return None
    text = raw.decode("ascii")
    return text if text.isprintable() else None


def _security_headers(endpoint: Endpoint) -> Endpoint:
    async def with_security_headers(request: Request) -> Response:
        response = await endpoint(request)
        _add_security_headers(response.raw_headers)
        return response

    return with_security_headers


def _add_security_headers(raw: list[tuple[bytes, bytes]]) -> None:
    has_cache_control = is_json = False
    for key, value in raw:
        if key == b"cache-control":
            has_cache_control = True
        elif key == b"content-type" and b"json" in value:
            is_json = True
    raw.extend(_SECURITY_HEADERS)
    if not has_cache_control:
        raw.append(_NO_STORE)
    if is_json:
        raw.append(_JSON_CSP)


class _Cors:
    def __init__(self, config: CorsConfig) -> None:
        self._any_origin = "*" in config.allow_origins
        self._origins = frozenset(config.allow_origins)
        self._any_method = "*" in config.allow_methods
        self._methods = frozenset(m.upper() for m in config.allow_methods)
        self._any_header = "*" in config.allow_headers
        self._headers = frozenset(h.lower() for h in config.allow_headers) | _SAFELISTED_HEADERS
        # Browsers ignore `*` on credentialed requests, so the origin is echoed instead.
        self._echo_origin = not self._any_origin or config.allow_credentials
        common = [(b"access-control-allow-credentials", b"true")] if config.allow_credentials else []
        if self._echo_origin:
            common.append((b"vary", b"Origin"))
        self._common = common
        expose = ", ".join(config.expose_headers).encode("latin-1")
        self._expose = [(b"access-control-expose-headers", expose)] if expose else []
        self._preflight_common = {
            "Access-Control-Allow-Methods": ", ".join(sorted(self._methods)),
            "Access-Control-Max-Age": str(int(config.max_age)),
        }

    def wrap(self, endpoint: Endpoint) -> Endpoint:
        async def with_cors(request: Request) -> Response:
            origin = request.headers.get("origin")
            if origin is None:
                return await endpoint(request)
            if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
                return self._preflight(request, origin)
            response = await endpoint(request)
            if self._any_origin or origin in self._origins:
                response.raw_headers.extend(self._simple_headers(origin))
            return response

        return with_cors

    def _simple_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        allow = origin.encode("latin-1") if self._echo_origin else b"*"
        return [(b"access-control-allow-origin", allow), *self._common, *self._expose]

    def _preflight(self, request: Request, origin: str) -> Response:
        method = request.headers["access-control-request-method"].upper()
        asked = request.headers.get("access-control-request-headers", "")
        names = [h.strip().lower() for h in asked.split(",") if h.strip()]
        if not (self._any_origin or origin in self._origins):
            return json_error(400, "cors_rejected", f"origin '{origin}' is not allowed")
        if not (self._any_method or method in self._methods):
            return json_error(400, "cors_rejected", f"method '{method}' is not allowed cross-origin")
        refused = [h for h in names if h not in self._headers]
        if refused and not self._any_header:
            return json_error(400, "cors_rejected", f"request headers not allowed: {', '.join(refused)}")
        headers = dict(self._preflight_common)
        if self._any_method:
            headers["Access-Control-Allow-Methods"] = method
        if names:
            headers["Access-Control-Allow-Headers"] = asked
        response = Response(status_code=204, headers=headers)
        response.raw_headers.extend(self._simple_headers(origin))
        return response


class _RateLimiter:
    def __init__(self, config: RateLimitConfig, clock: Clock) -> None:
        self._rate = config.rate
        self._burst = float(config.burst if config.burst is not None else max(1, math.ceil(config.rate)))
        self._max_keys = config.max_keys
        self._clock = clock
        # key -> [tokens, last refill time]; ordered by last use so the stalest is evicted first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()
        self._key = _key_function(config.key)

    def wrap(self, endpoint: Endpoint) -> Endpoint:
        async def with_rate_limit(request: Request) -> Response:
            wait = self.take(self._key(request))
            if wait:
                retry_after = max(1, math.ceil(wait))
                return json_error(
                    429, "rate_limited", f"rate limit of {self._rate:g} requests/s exceeded; retry after "
                    f"{retry_after}s", {"Retry-After": str(retry_after)},
                )
            return await endpoint(request)

        return with_rate_limit

    def take(self, key: str) -> float:
        """Take a token for `key`: 0.0 when allowed, else the seconds until one is available."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = [self._burst, now]
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self._burst, bucket[0] + (now - bucket[1]) * self._rate)
            bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self._rate


def _key_function(key: str) -> Callable[[Request], str]:
    def client_ip(request: Request) -> str:
        client = request.scope.get("client")
        return f"ip:{client[0]}" if client else "ip:"

    if key == "global":
        return lambda request: ""
    if key == "ip":
        return client_ip
    header = key.removeprefix("header:").lower()

    def by_header(request: Request) -> str:
        value = request.headers.get(header)
        return f"h:{value}" if value is not None else client_ip(request)

    return by_header


class _Denied(Exception):
    def __init__(self, message: str, challenge: str) -> None:
        super().__init__(message)
        self.message = message
        self.challenge = challenge


class _Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self._header = config.api_key_header.lower()
        self._keys = [key.get_secret_value().encode() for key in config.api_keys]
        self._jwt = config.jwt
        self._secret = config.jwt.secret.get_secret_value() if config.jwt else ""
        header = config.api_key_header
        self._challenge = 'Bearer realm="workflow"' if config.jwt else f'ApiKey header="{header}"'
        ways = ([header] if self._keys else []) + (["Authorization: Bearer <token>"] if config.jwt else [])
        self._missing = "missing credentials: send " + " or ".join(ways)

    def wrap(self, endpoint: Endpoint) -> Endpoint:
        async def with_auth(request: Request) -> Response:
            try:
                request.state.auth, header = self.authenticate(request)
            except _Denied as denied:
                return json_error(401, "unauthorized", denied.message, {"WWW-Authenticate": denied.challenge})
            # The trigger keeps the credential out of the execution's input (and so out of the store).
            request.state.credential_header = header
            return await endpoint(request)

        return with_auth

    def authenticate(self, request: Request) -> tuple[dict[str, Any], str]:
        """The JWT's claims, or `{"api_key": True}` for an accepted API key, and the (lower-case) header that
        carried the credential; raises `_Denied` otherwise."""
        if self._keys:
            presented = request.headers.get(self._header)
            if presented is not None:
                if self._key_matches(presented.encode("latin-1")):
                    return {"api_key": True}, self._header
                raise _Denied("invalid API key", self._challenge)
        if self._jwt is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return self._decode(token.strip(), self._jwt), "authorization"
        raise _Denied(self._missing, self._challenge)

    def _key_matches(self, presented: bytes) -> bool:
        # Compare against every key so the time taken does not reveal which one (if any) matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched

    def _decode(self, token: str, config: JwtConfig) -> dict[str, Any]:
        try:
            return jwt.decode(
                token, self._secret, algorithms=config.algorithms, audience=config.audience,
                issuer=config.issuer, leeway=config.leeway, options={"require": config.require},
            )
        except jwt.InvalidTokenError as exc:
            raise _Denied(f"invalid token: {exc}", f'{self._challenge}, error="invalid_token"') from None
