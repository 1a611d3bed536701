"""The one settings object: environment (TUNELOOP_ prefix, `__` for nesting) over an optional YAML file.

`TUNELOOP_CONFIG=path.yaml` names the YAML file; environment variables win over it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from core.policies import CanaryPolicy, GatePolicy

# Where the embedded default base model (trainer/real_model.py) is converted to, under HOME/models.
DEFAULT_BASE_DIR = "smollm2-135m-instruct"


class Timeouts(BaseModel):
    """Upstream timeouts, in seconds."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    connect: float = Field(3.0, gt=0, description="TCP connect to an upstream replica.")
    first_byte: float = Field(120.0, gt=0, description="Request sent to response headers / first chunk.")
    chunk_gap: float = Field(60.0, gt=0, description="Longest silence between two streamed chunks.")
    total: float = Field(600.0, gt=0, description="Whole request, first byte to last.")


class LogWriterSettings(BaseModel):
    """Group-commit writer for the interaction log."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    max_batch: int = Field(256, ge=1, description="Rows committed in one transaction at most.")
    queue_max: int = Field(10_000, ge=1, description="Rows waiting to be written before callers get 503.")
    store_wait_s: float = Field(5.0, gt=0, description="How long a response waits for its row to commit.")


DEFAULT_CLAUDE_MODEL = "claude-sonnet-4-6"


class JudgeSettings(BaseModel):
    """Which judge scores answers for the gate and `tuneloop eval`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    kind: Literal["auto", "anthropic", "openai", "reference"] = Field(
        "auto", description="auto: Claude when an API key is set, else the offline reference judge.")
    model: str = Field("", description=f"Judge model; Claude's default {DEFAULT_CLAUDE_MODEL}.")
    base_url: str = Field("", description="Endpoint; required for openai, optional for anthropic.")
    api_key: SecretStr = Field(SecretStr(""), description="Key for the judge endpoint.")
    anthropic_api_key: SecretStr = Field(
        SecretStr(""), description="Read from ANTHROPIC_API_KEY (the SDK's variable); used by auto and anthropic.")
    anthropic_base_url: str = Field("", description="Read from ANTHROPIC_BASE_URL; used by auto and anthropic.")
    concurrency: int = Field(4, ge=1, description="Judge requests in flight at most.")
    max_attempts: int = Field(5, ge=1, description="Attempts per verdict (429/5xx/timeouts/unparseable replies).")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout, seconds.")

    @property
    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        return "anthropic" if self.resolved_api_key else "reference"

    @property
    def resolved_api_key(self) -> str:
        """The judge's key; Anthropic's own variable never goes to another kind of endpoint."""
        if self.api_key.get_secret_value() or self.kind in ("openai", "reference"):
            return self.api_key.get_secret_value()
        return self.anthropic_api_key.get_secret_value()

    @property
    def resolved_base_url(self) -> str:
        return self.base_url or (self.anthropic_base_url if self.kind in ("auto", "anthropic") else "")

    @model_validator(mode="after")
    def _complete(self) -> JudgeSettings:
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError("an openai judge needs TUNELOOP_JUDGE__BASE_URL and TUNELOOP_JUDGE__MODEL")
        if self.kind == "anthropic" and not self.resolved_api_key:
            raise ValueError("an anthropic judge needs ANTHROPIC_API_KEY or TUNELOOP_JUDGE__API_KEY")
        return self


class CycleSettings(BaseModel):
    """The scheduled improvement cycle (deploy/): when it runs and what it may do."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    cron: str = Field("0 3 * * *", description="Default schedule (crontab, server local time): nightly at 03:00.")
    aliases: list[str] = Field(default_factory=lambda: ["demo"], description="Aliases the scheduler improves.")
    min_new_examples: int = Field(20, ge=1, description="Fewer new training examples: the cycle is skipped.")
    canary_weight: int = Field(20, ge=1, le=100, description="First canary share of traffic, percent.")
    canary_watch_s: float = Field(60.0, gt=0, description="How often the canary analysis runs.")
    serve_mode: str = Field("auto", pattern="^(auto|merged|adapter)$", description="How candidates are served.")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig overrides for cycle runs.")
    canary: CanaryPolicy = Field(default_factory=CanaryPolicy, description="When a canary is promoted or rolled back.")
    gate: GatePolicy = Field(default_factory=GatePolicy, description="What a candidate must pass to reach canary.")
    lease_ttl_s: float = Field(300.0, gt=0, description="A cycle's lease without heartbeat expires after this.")
    train_timeout_s: float = Field(
        6 * 3600.0, gt=0, description="A training run (its own process) is killed after this long; the cycle fails.")
    merge_timeout_s: float = Field(
        3600.0, gt=0, description="A merge (its own process) is killed after this long; the cycle fails.")


class WorkerSettings(BaseModel):
    """The worker process (`tuneloop worker`): the scheduler, the cycle and the vLLM servers it starts."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a default

    leader_ttl_s: float = Field(
        30.0, gt=0, description="The scheduler leader's lease: a standby worker takes over this long after the "
                                "leader's last heartbeat (heartbeats every third of it).")
    metrics_port: int = Field(9464, ge=0, le=65535, description="The worker's own /metrics; 0: not served.")
    supervise_s: float = Field(
        15.0, gt=0, description="How often the leader checks the vLLM servers of its machine and restarts dead ones.")


class ConsoleSettings(BaseModel):
    """The ops console (`/console` on the gateway): admin keys sign in, the browser keeps a signed cookie."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve the console at /console on the gateway.")
    secret: SecretStr = Field(
        SecretStr(""), description="Signs session cookies; gateways on several machines need one value. Empty: "
                                   "a random secret kept in HOME/console-secret.")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="A sign-in lasts this long.")


class Settings(BaseSettings):
    """Everything tuneloop reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="TUNELOOP_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(Path("var"), description="Data directory: database, datasets, runs, models, logs.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means SQLite at HOME/tuneloop.db.")
    upstreams: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Static routes: model name -> base URLs of OpenAI-compatible replicas (…/v1 not included).",
    )
    admin_key: str = Field("", description="Bootstrap admin key (plain text, like LiteLLM's master key).")
    redis_url: str = Field(
        "", description="Redis for the per-key rate-limit counters (redis://host:6379/0), shared by every gateway "
                        "process; empty: each process counts in its own memory.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest accepted request body.")
    timeouts: Timeouts = Field(default_factory=Timeouts)
    log_writer: LogWriterSettings = Field(default_factory=LogWriterSettings)
    cycle: CycleSettings = Field(default_factory=CycleSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    routing_cache_s: float = Field(2.0, ge=0, description="How long a gateway trusts its routing table.")
    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8000, ge=1, le=65535, description="Port the gateway listens on.")
    vllm_host: str = Field(
        "127.0.0.1", description="Address the vLLM servers started here listen on (0.0.0.0 when gateways on other "
                                 "machines route to them).")
    advertised_host: str = Field(
        "", description="Host name or address gateways on other machines reach this machine's vLLM servers at "
                        "(recorded in each deployment's URL); empty: vllm_host (one machine).")
    vllm_python: str = Field("", description="Python of the vLLM environment; empty: .venv-vllm/bin/python.")
    base_model: str = Field(
        "", description="Base model path or HF id; empty: SmolLM2-135M-Instruct, converted once from its PyPI "
                        "wheel into HOME/models/smollm2-135m-instruct.")
    otel_endpoint: str = Field(
        "", description="OpenTelemetry traces over OTLP/HTTP (http://collector:4318, or its full /v1/traces URL): a "
                        "span per gateway request and per cycle step; empty: tracing off.")
    otel_sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of requests traced (by trace id; 1: all). A traced call cost "
                                         "~310 us more gateway CPU on 2 cores (benchmarks/gateway).")
    otel_service_name: str = Field(
        "tuneloop", min_length=1, description="Traces' service.name prefix: NAME-gateway and NAME-worker.")

    @field_validator("upstreams")
    @classmethod
    def _urls_look_like_urls(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, urls in value.items():
            if not urls:
                raise ValueError(f"upstreams.{name}: needs at least one base URL")
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"upstreams.{name}: {url!r} is not an http(s) URL")
        return {name: [u.rstrip("/") for u in urls] for name, urls in value.items()}

    @field_validator("otel_endpoint")
    @classmethod
    def _otel_endpoint_is_a_url(cls, value: str) -> str:
        url = urlsplit(value)
        if value and not (url.scheme in ("http", "https") and url.hostname):
            raise ValueError(f"{value!r} is not an http(s) URL (e.g. http://collector:4318)")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("TUNELOOP_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        sources.append(AnthropicEnvSource(settings_cls))
        return tuple(sources)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'tuneloop.db').resolve()}"

    @property
    def resolved_base_model(self) -> str:
        return self.base_model or str((self.home / "models" / DEFAULT_BASE_DIR).resolve())



class AnthropicEnvSource(PydanticBaseSettingsSource):
    """ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL, the Anthropic SDK's own variables, as the judge's fallbacks."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        found = {name: os.environ[variable] for name, variable in
                 (("anthropic_api_key", "ANTHROPIC_API_KEY"), ("anthropic_base_url", "ANTHROPIC_BASE_URL"))
                 if os.environ.get(variable)}
        return {"judge": found} if found else {}


class SettingsError(ValueError):
    """Invalid settings; the message names each offending variable."""


# Read before the settings (the YAML file's path), or by the test suite; not settings themselves.
NOT_SETTINGS = ("TUNELOOP_CONFIG",)
NOT_SETTINGS_PREFIXES = ("TUNELOOP_TEST_",)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """TUNELOOP_ variables that name no setting (pydantic-settings would ignore them), each with a hint: a
    misspelt or renamed variable must not leave its setting silently at the default."""
    fields = sorted(name.upper() for name in Settings.model_fields)
    problems = []
    for name in sorted(environ):
        if not name.startswith("TUNELOOP_") or name in NOT_SETTINGS or name.startswith(NOT_SETTINGS_PREFIXES):
            continue
        head = name.removeprefix("TUNELOOP_").split("__")[0]
        if head in fields:
            continue
        nested = next((f for f in fields if head.startswith(f + "_")), None)
        if nested is not None:  # TUNELOOP_JUDGE_KIND: nesting is spelt with two underscores
            hint = f"; did you mean TUNELOOP_{nested}__{head[len(nested) + 1:]}?"
        else:
            close = difflib.get_close_matches(head, fields, n=1)
            hint = f"; did you mean TUNELOOP_{close[0]}?" if close else ""
        problems.append(f"{name}: not a setting{hint}")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Read settings; a bad value raises SettingsError naming the variable (TUNELOOP_TIMEOUTS__CONNECT)."""
    unknown = unknown_variables(os.environ)
    if unknown:
        raise SettingsError("invalid settings: " + "; ".join(unknown))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            location = "__".join(str(part) for part in error["loc"]).upper()
            problems.append(f"TUNELOOP_{location}: {error['msg']}" if location else error["msg"])
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
