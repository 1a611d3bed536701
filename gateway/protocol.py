"""The wire protocol: every request and response body the gateway reads or writes, as pydantic models.

Request models validate only the fields the gateway itself relies on; everything else (tools, tool_choice,
response_format, n, logprobs, seed, stop, ...) is kept as extra and passed to the upstream unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from feedback.models import FeedbackCreate, FeedbackPublic, InteractionPublic


class PassThrough(BaseModel):
    model_config = ConfigDict(extra="allow")


# The roles OpenAI's chat API accepts ("function" is its deprecated predecessor of "tool").
ChatRole = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(PassThrough):
    role: ChatRole
    content: str | list[Any] | None = None


class StreamOptions(PassThrough):
    include_usage: StrictBool = False


class SamplingFields(PassThrough):
    """Fields both endpoints share; bounds as OpenAI documents them."""

    model: str = Field(min_length=1)
    stream: StrictBool = False  # as OpenAI's API: "yes" or 1 is an error, not a stream
    stream_options: StreamOptions | None = None
    user: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "tuneloop"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    store: Literal["ok", "unavailable"]


__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ErrorDetail",
    "ErrorResponse",
    "FeedbackCreate",
    "FeedbackPublic",
    "HealthResponse",
    "InteractionPublic",
    "ModelCard",
    "ModelList",
]
