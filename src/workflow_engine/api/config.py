"""The `engine.api` config section: who may call the management API, with which role."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RoleName = Literal["viewer", "operator", "admin"]


class ApiToken(BaseModel):
    """One bearer token: a name for logs, a role, and exactly one source of the secret (never the plain token)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]+$", description="Who holds the token (shown in logs).")
    role: RoleName = Field(
        description="viewer: read; operator: viewer + start, cancel, retry; admin: operator + config, components."
    )
    token_hash: str | None = Field(
        None, pattern=r"^\$argon2(id|i|d)\$",
        description="Argon2 hash of the token (`workflow hash-token` prints one).",
    )
    token_file: str | None = Field(
        None, description="File whose content is the token (a mounted secret); hashed when the engine starts."
    )
    token_env: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Environment variable holding the token; hashed when the engine starts.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ApiToken:
        given = [s for s in ("token_hash", "token_file", "token_env") if getattr(self, s) is not None]
        if len(given) != 1:
            found = ", ".join(given) or "none"
            raise ValueError(f"give exactly one of token_hash, token_file, token_env (found: {found})")
        return self


class ApiConfig(BaseModel):
    """Management API access. With no token at all (and no WORKFLOW_API_TOKEN), every `/api` call gets 401."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: list[ApiToken] = Field(default_factory=list, description="Bearer tokens accepted by the API.")
