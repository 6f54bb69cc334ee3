"""The routing config (BATON_CONFIG) as the processes use it: loaded once at start, errors stop the start."""

from __future__ import annotations

from activities.third_party_desk import ThirdPartyDeskEndpoint
from models.config import BatonConfig, ConfigError, default_config, load_config
from runtime.settings import Settings


def load(settings: Settings) -> BatonConfig:
    """The file named by BATON_CONFIG, or the built-in default (every handoff to queue `general`)."""
    if settings.config is None:
        return default_config()
    try:
        return load_config(settings.config)
    except ConfigError as err:
        raise SystemExit(f"baton: BATON_CONFIG is not valid:\n{err}") from None


def apply_timeouts(settings: Settings, config: BatonConfig) -> Settings:
    """The config's `timeouts` win over the environment's defaults (they are the documented place for them)."""
    t = config.timeouts
    updates = {}
    if t.inactivity_seconds is not None:
        updates["inactivity_timeout_seconds"] = t.inactivity_seconds
    if t.handoff_sla_seconds is not None:
        updates["handoff_sla_seconds"] = t.handoff_sla_seconds
    return settings.model_copy(update=updates) if updates else settings


def desk_lookup(config: BatonConfig):
    """A configured third-party desk by name, its secret read from the environment (never from the file);
    None when the desk is unknown or its secret is not set."""

    def lookup(name: str) -> ThirdPartyDeskEndpoint | None:
        desk = config.desks.get(name)
        secret = desk.secret() if desk is not None else None
        return ThirdPartyDeskEndpoint(name=name, url=str(desk.url), secret=secret) if desk and secret else None

    return lookup
