"""Baton's settings from the environment (Temporal's own connection settings come from the SDK's envconfig)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr

from activities import sealing, webhooks
from runtime import codec
from models.names import TASK_QUEUE

KEYS_FILE = "keys.env"


class Settings(BaseModel):
    home: Path = Path(".baton")
    task_queue: str = TASK_QUEUE
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_key: str | None = None
    admin_key: str | None = None
    public_url: str = "http://127.0.0.1:8000"
    channel_url: str | None = None
    channel_secret: str | None = None
    secret_key: str | None = None
    ai_agent: str = "demo"
    ai_agent_secret: str | None = None
    # BATON_AI_AGENT=openai: any OpenAI-compatible Chat Completions endpoint (OpenAI, Azure OpenAI, vLLM, Ollama,
    # llama.cpp's server, LiteLLM). The key is optional (local servers need none) and never shown.
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: SecretStr | None = None
    ai_model: str | None = None
    # The demo AI hands technical problems to this external agent (`baton dev` connects `tech-support`).
    demo_tech_agent: str | None = None
    # Serve the demo chat page (`/chat`) and its demo sessions (`/demo/...`); `baton dev` turns it on.
    demo_pages: bool = False
    # Origins allowed to call /codec/* from a browser (the Temporal UI's, e.g. http://localhost:8233), comma
    # separated; none by default.
    codec_cors_origins: str = ""
    # The worker's own /metrics, /readyz and /healthz (unset: none; the API serves /metrics on its port).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Baton's store (activities.database): sqlite:///... or postgresql://...; None: <home>/baton.db.
    database_url: str | None = None
    inactivity_timeout_seconds: int = Field(default=1800, ge=10)
    handoff_sla_seconds: int = Field(default=300, ge=1)
    # The routing config file (YAML or TOML, see config/baton.yaml); None: models.config.default_config().
    config: Path | None = None
    # Run workflow code in the Temporal SDK's sandbox (a run-time guard against non-deterministic calls, at about
    # 40 % more worker CPU per message). Off by default; in-process test workers run with it on (workers/worker.py).
    workflow_sandbox: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        names = {
            "home": "BATON_HOME",
            "task_queue": "BATON_TASK_QUEUE",
            "api_host": "BATON_API_HOST",
            "api_port": "BATON_API_PORT",
            "api_key": "BATON_API_KEY",
            "admin_key": "BATON_ADMIN_KEY",
            "public_url": "BATON_PUBLIC_URL",
            "channel_url": "BATON_CHANNEL_URL",
            "channel_secret": "BATON_CHANNEL_SECRET",
            "secret_key": "BATON_SECRET_KEY",
            "ai_agent": "BATON_AI_AGENT",
            "ai_agent_secret": "BATON_AI_AGENT_SECRET",
            "openai_base_url": "OPENAI_BASE_URL",
            "openai_api_key": "OPENAI_API_KEY",
            "ai_model": "BATON_AI_MODEL",
            "demo_tech_agent": "BATON_DEMO_TECH_AGENT",
            "demo_pages": "BATON_DEMO_PAGES",
            "inactivity_timeout_seconds": "BATON_INACTIVITY_TIMEOUT",
            "handoff_sla_seconds": "BATON_HANDOFF_SLA",
            "config": "BATON_CONFIG",
            "workflow_sandbox": "BATON_WORKFLOW_SANDBOX",
            "codec_cors_origins": "BATON_CODEC_CORS_ORIGINS",
            "metrics_port": "BATON_METRICS_PORT",
            "database_url": "BATON_DATABASE_URL",
        }
        return cls(**{field: env[var] for field, var in names.items() if env.get(var)})

    def check(self, *, api: bool = False) -> None:
        """Fail at start, with the variable's name, rather than on the first request."""
        missing = []
        if api and not self.api_key:
            missing.append("BATON_API_KEY")
        if api and not self.secret_key:
            missing.append("BATON_SECRET_KEY")
        if self.channel_url and not self.channel_secret:
            missing.append("BATON_CHANNEL_SECRET (BATON_CHANNEL_URL is set)")
        if self.ai_agent == "openai" and not self.ai_model:
            raise SystemExit("baton: set BATON_AI_MODEL (BATON_AI_AGENT=openai): the model's name, as the provider spells it")
        if self.ai_agent == "openai" and not self.openai_base_url.startswith(("http://", "https://")):
            raise SystemExit("baton: OPENAI_BASE_URL must be an http(s) URL, e.g. https://api.openai.com/v1")
        if missing:
            raise SystemExit(f"baton: set {', '.join(missing)} (`baton dev` generates them into .baton/)")
        if self.secret_key:
            try:
                sealing.check_key(self.secret_key)
            except ValueError as err:
                raise SystemExit(f"baton: {err}") from None
        if payload_keys := os.environ.get(codec.ENV):
            try:
                codec.parse_keys(payload_keys)
            except codec.PayloadKeysError as err:
                raise SystemExit(f"baton: {err}") from None
        if self.channel_secret and not self.channel_secret.startswith("whsec_"):
            raise SystemExit("baton: BATON_CHANNEL_SECRET must be a whsec_<base64> secret")


def read_keys_file(path: Path) -> dict[str, str]:
    """The KEY=value lines of a keys file (comments skipped); empty when there is none."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def ensure_dev_keys(settings: Settings) -> tuple[Settings, dict[str, str]]:
    """Fill missing keys from .baton/keys.env, generating (owner-only) what is not there yet."""
    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.home / KEYS_FILE
    stored = read_keys_file(path)
    generators = {
        "BATON_API_KEY": lambda: "bk_" + secrets.token_urlsafe(24),
        "BATON_ADMIN_KEY": lambda: "ba_" + secrets.token_urlsafe(24),
        "BATON_SECRET_KEY": sealing.new_key,
        "BATON_CHANNEL_SECRET": webhooks.generate_secret,
    }
    fields = {"BATON_API_KEY": "api_key", "BATON_ADMIN_KEY": "admin_key", "BATON_SECRET_KEY": "secret_key",
              "BATON_CHANNEL_SECRET": "channel_secret"}
    updates = {}
    for var, make in generators.items():
        current = getattr(settings, fields[var])
        value = current or stored.get(var) or make()
        stored[var] = stored.get(var) or value
        updates[fields[var]] = value
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# Generated by `baton dev`. Keep private.\n")
        f.writelines(f"{k}={v}\n" for k, v in stored.items())
    os.chmod(path, 0o600)
    return settings.model_copy(update=updates), {k: stored[k] for k in generators}
