"""Bearer-token auth for the management API: argon2-hashed tokens, roles, and a short cache of verifications."""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from workflow_engine.api.config import ApiConfig, ApiToken
from workflow_engine.errors import WorkflowEngineError

ENV_TOKEN = "WORKFLOW_API_TOKEN"
NO_TOKENS_MESSAGE = (
    "the management API has no tokens configured: add engine.api.tokens to the config "
    "(token_hash from `workflow hash-token`, token_file or token_env), or set WORKFLOW_API_TOKEN"
)
CACHE_TTL = 60.0
CACHE_SIZE = 1024
# argon2 verification is deliberately slow and memory-hungry: bound how many run at once.
VERIFY_CONCURRENCY = 2


class Role(enum.IntEnum):
    """API roles; each includes the rights of the ones below it."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    def __str__(self) -> str:
        return self.name.lower()


class TokenError(WorkflowEngineError):
    """A configured token cannot be loaded (unreadable file, unset variable, empty secret)."""

    code = "api_token_error"
    http_status = 503


class ApiAuthError(WorkflowEngineError):
    """A request is not authenticated (401) or its role does not allow the action (403)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's name and role."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class Credential:
    """A token as held in memory: its name, role and argon2 hash."""

    name: str
    role: Role
    token_hash: str


def hash_token(token: str) -> str:
    """An argon2id hash of `token` (what `engine.api.tokens[].token_hash` takes)."""
    return PasswordHasher().hash(token)


def load_credentials(config: ApiConfig, environ: Mapping[str, str], base_dir: Path) -> list[Credential]:
    """Every configured token as a hash; file and environment secrets are read and hashed now."""
    credentials = [_credential(token, environ, base_dir) for token in config.tokens]
    extra = environ.get(ENV_TOKEN, "").strip()
    if extra:
        credentials.append(Credential(ENV_TOKEN, Role.ADMIN, hash_token(extra)))
    return credentials


def _credential(token: ApiToken, environ: Mapping[str, str], base_dir: Path) -> Credential:
    role = Role[token.role.upper()]
    if token.token_hash is not None:
        return Credential(token.name, role, token.token_hash)
    if token.token_file is not None:
        path = base_dir / token.token_file
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise TokenError(f"api token '{token.name}': cannot read token_file '{path}': {err}") from err
        where = f"token_file '{path}'"
    else:
        assert token.token_env is not None  # ApiToken requires exactly one source
        secret = environ.get(token.token_env, "").strip()
        where = f"token_env '{token.token_env}'"
    if not secret:
        raise TokenError(f"api token '{token.name}': {where} is empty or unset")
    return Credential(token.name, role, hash_token(secret))


class Authenticator:
    """Checks presented tokens against the hashes; successes are cached briefly by the token's SHA-256."""

    def __init__(self, credentials: list[Credential], *, cache_ttl: float = CACHE_TTL,
                 cache_size: int = CACHE_SIZE) -> None:
        self.credentials = credentials
        self._hasher = PasswordHasher()
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._verifying = asyncio.Semaphore(VERIFY_CONCURRENCY)

    @property
    def configured(self) -> bool:
        """Whether any token is accepted at all."""
        return bool(self.credentials)

    async def authenticate(self, token: str) -> Principal | None:
        """The principal `token` belongs to, or None when it matches no configured token."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            self._cache.move_to_end(digest)
            return cached[0]
        async with self._verifying:
            principal = await asyncio.to_thread(self._verify, token)
        if principal is not None:
            self._remember(digest, principal, now)
        return principal

    def _verify(self, token: str) -> Principal | None:
        for credential in self.credentials:
            try:
                self._hasher.verify(credential.token_hash, token)
            except (VerificationError, InvalidHashError):
                continue
            return Principal(credential.name, credential.role)
        return None

    def _remember(self, digest: bytes, principal: Principal, now: float) -> None:
        self._cache[digest] = (principal, now + self._cache_ttl)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def unauthorized(message: str) -> ApiAuthError:
    """The 401 error (the handler adds `WWW-Authenticate: Bearer`)."""
    return ApiAuthError(message, code="unauthorized", http_status=401)


def forbidden(principal: Principal, action: str) -> ApiAuthError:
    """The 403 error naming the role and what it may not do."""
    return ApiAuthError(f"role {principal.role} cannot {action}", code="forbidden", http_status=403)


class Guard:
    """Authorises API requests against the running config's tokens (rebuilt when an applied config changes them)."""

    def __init__(self, source: Callable[[], tuple[ApiConfig, Path]], environ: Mapping[str, str]) -> None:
        self._source = source
        self._environ = dict(environ)
        self._config: ApiConfig | None = None
        self._authenticator: Authenticator | None = None
        self._rebuilding = asyncio.Lock()

    def load(self) -> None:
        """Load the tokens now (at mount: a bad token source stops the engine from starting)."""
        config, base_dir = self._source()
        self._authenticator = Authenticator(load_credentials(config, self._environ, base_dir))
        self._config = config

    async def check(self, token: str | None, role: Role, action: str) -> Principal:
        """The caller's principal when `token` is valid and its role allows `action`; else ApiAuthError."""
        authenticator = await self._current()
        if not authenticator.configured:
            raise unauthorized(NO_TOKENS_MESSAGE)
        if not token:
            raise unauthorized("missing bearer token: send `Authorization: Bearer <token>`")
        principal = await authenticator.authenticate(token)
        if principal is None:
            raise unauthorized("invalid bearer token")
        if principal.role < role:
            raise forbidden(principal, action)
        return principal

    async def _current(self) -> Authenticator:
        config, base_dir = self._source()
        if self._authenticator is not None and config == self._config:
            return self._authenticator
        async with self._rebuilding:
            if self._authenticator is None or config != self._config:
                credentials = await asyncio.to_thread(load_credentials, config, self._environ, base_dir)
                self._authenticator = Authenticator(credentials)
                self._config = config
            return self._authenticator
