"""Bearer-token auth of the management API: 401 without a valid token, 403 for a role too low, token sources."""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher

from tests.api.conftest import TOKENS, api_engine, engine_yaml
from tests.factories import app_yaml, config_issues, running_engine
from workflow_engine.api.auth import (
    ENV_TOKEN,
    Authenticator,
    Credential,
    Role,
    TokenError,
    hash_token,
    load_credentials,
)
from workflow_engine.api.config import ApiConfig, ApiToken

HELLO = """
hello:
  steps:
    - id: greet
      set: {greeting: hi}
"""


async def test_no_token_is_401_with_bearer_challenge() -> None:
    async with api_engine(HELLO) as api:
        for method, path in (("GET", "/api/status"), ("POST", "/api/workflows/hello/executions"),
                             ("GET", "/api/executions/x"), ("POST", "/api/config/validate")):
            response = await api.http.request(method, path)
            assert response.status_code == 401, (method, path)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert response.json()["error"]["code"] == "unauthorized"


async def test_wrong_token_and_wrong_scheme_are_401() -> None:
    async with api_engine(HELLO) as api:
        wrong = await api.http.get("/api/status", headers={"Authorization": "Bearer not-a-token"})
        basic = await api.http.get("/api/status", headers={"Authorization": f"Basic {TOKENS['admin']}"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == {"code": "unauthorized", "message": "invalid bearer token"}
    assert basic.status_code == 401


async def test_viewer_reads_but_cannot_start() -> None:
    async with api_engine(HELLO) as api:
        status = await api.get("/api/status", "viewer")
        start = await api.post("/api/workflows/hello/executions", "viewer")
        cancel = await api.post("/api/executions/x/cancel", "viewer")
    assert status.status_code == 200
    assert start.status_code == 403
    assert start.json()["error"] == {"code": "forbidden", "message": "role viewer cannot start executions"}
    assert cancel.json()["error"]["message"] == "role viewer cannot cancel executions"


async def test_operator_starts_but_cannot_validate_configs_and_admin_can() -> None:
    async with api_engine(HELLO) as api:
        start = await api.post("/api/workflows/hello/executions?wait=true", "operator")
        operator = await api.post("/api/config/validate", "operator", content=api.engine.app.source_text)
        admin = await api.post("/api/config/validate", "admin", content=api.engine.app.source_text)
    assert start.status_code == 200
    assert operator.status_code == 403
    assert operator.json()["error"]["message"] == "role operator cannot validate configs"
    assert admin.status_code == 200
    assert admin.json() == {"valid": True, "issues": []}


async def test_no_tokens_configured_answers_401_saying_how_but_health_stays_open() -> None:
    async with api_engine(HELLO, tokens="") as api:
        response = await api.get("/api/status", "admin")
        ready = await api.http.get("/readyz")
        metrics = await api.http.get("/metrics")
    assert response.status_code == 401
    assert "engine.api.tokens" in response.json()["error"]["message"]
    assert "WORKFLOW_API_TOKEN" in response.json()["error"]["message"]
    assert ready.status_code == 200
    assert metrics.status_code == 200


async def test_env_token_is_an_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_TOKEN, "quickstart-token")
    async with api_engine(HELLO, tokens="") as api:
        response = await api.http.post("/api/config/validate", content=api.engine.app.source_text,
                                       headers={"Authorization": "Bearer quickstart-token"})
    assert response.status_code == 200


async def test_token_file_and_token_env_grant_their_roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "operator.token"
    secret.write_text("file-token-123\n")
    monkeypatch.setenv("VIEWER_TOKEN", "env-token-456")
    tokens = (f"{{name: ops, role: operator, token_file: '{secret}'}}, "
              "{name: dash, role: viewer, token_env: VIEWER_TOKEN}")
    async with api_engine(HELLO, tokens=tokens) as api:
        start = await api.http.post("/api/workflows/hello/executions",
                                    headers={"Authorization": "Bearer file-token-123"})
        viewer = await api.http.get("/api/status", headers={"Authorization": "Bearer env-token-456"})
        viewer_start = await api.http.post("/api/workflows/hello/executions",
                                           headers={"Authorization": "Bearer env-token-456"})
    assert start.status_code == 202
    assert viewer.status_code == 200
    assert viewer_start.status_code == 403


def test_file_and_env_secrets_are_held_only_as_argon2_hashes(tmp_path: Path) -> None:
    (tmp_path / "ops.token").write_text("file-token-123\n")
    config = ApiConfig(tokens=[ApiToken(name="ops", role="operator", token_file="ops.token"),
                               ApiToken(name="dash", role="viewer", token_env="DASH")])
    credentials = load_credentials(config, {"DASH": "env-token-456", ENV_TOKEN: "dev-token"}, tmp_path)
    assert [(c.name, c.role) for c in credentials] == [
        ("ops", Role.OPERATOR), ("dash", Role.VIEWER), (ENV_TOKEN, Role.ADMIN)]
    for credential, secret in zip(credentials, ("file-token-123", "env-token-456", "dev-token"), strict=True):
        assert credential.token_hash.startswith("$argon2id$")
        assert secret not in credential.token_hash
        assert PasswordHasher().verify(credential.token_hash, secret)


def test_an_unset_token_variable_is_an_error() -> None:
    config = ApiConfig(tokens=[ApiToken(name="dash", role="viewer", token_env="DASH")])
    with pytest.raises(TokenError, match="api token 'dash': token_env 'DASH' is empty or unset"):
        load_credentials(config, {}, Path())


async def test_unreadable_token_file_stops_the_engine_from_starting(tmp_path: Path) -> None:
    missing = f"{tmp_path}/absent.token"
    yaml = app_yaml(HELLO, engine=engine_yaml(f"{{name: ops, role: operator, token_file: '{missing}'}}"))
    with pytest.raises(TokenError, match="api token 'ops': cannot read token_file"):
        async with running_engine(yaml):
            pass


def test_a_token_needs_exactly_one_source() -> None:
    yaml = app_yaml(HELLO, engine="{api: {tokens: [{name: a, role: admin, token_env: A, token_hash: '$argon2id$x'}, "
                                  "{name: b, role: root, token_env: B}]}}")
    issues = config_issues(yaml)
    assert any("engine.api.tokens[0]" in i and "exactly one of token_hash, token_file, token_env" in i
               for i in issues), issues
    assert any("engine.api.tokens[1].role" in i for i in issues), issues


async def test_verifications_are_cached_in_a_bounded_map() -> None:
    tokens = ["t-one", "t-two", "t-three"]
    authenticator = Authenticator([Credential(t, Role.VIEWER, hash_token(t)) for t in tokens], cache_size=2)
    for token in tokens:
        principal = await authenticator.authenticate(token)
        assert principal is not None
        assert principal.name == token
    assert await authenticator.authenticate("t-four") is None
    assert len(authenticator._cache) == 2
    assert all(len(key) == 32 for key in authenticator._cache)  # SHA-256 digests, never the tokens


async def test_a_client_without_auth_header_sees_401_on_every_documented_route() -> None:
    async with api_engine(HELLO) as api:
        document = (await api.http.get("/openapi.json")).json()
        for path, item in document["paths"].items():
            for method in item:
                concrete = path.replace("{name}", "hello").replace("{execution_id}", "x")
                response = await api.http.request(method.upper(), concrete)
                assert response.status_code == 401, (method, path)
