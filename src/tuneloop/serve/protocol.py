"""Request and response schemas of the OpenAI-compatible API (pydantic), fields in the OpenAI reference's order.

    req = ChatCompletionRequest.model_validate({"model": "airline", "messages": [{"role": "user", "content": "hi"}]})

Requests forbid unknown fields, so a misspelt parameter is a 400 rather than silently ignored. Fields that are
tuneloop's own (not in OpenAI's API) sit below a `# --- tuneloop extensions ---` line in each class.
Server-side limits (prompt length, max_tokens cap) are checked in handlers, since they depend on settings.
"""

from __future__ import annotations

import time
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

Seed = Field(default=None, ge=-(2**63), le=2**63 - 1)
Stop = Optional[Union[str, list[str]]]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- chat ----

class TextPart(Request):
    type: Literal["text"]
    text: str


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(Request):
    include_usage: bool = False


class ChatCompletionRequest(Request):
    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=8)
    seed: Optional[int] = Seed
    stop: Stop = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    user: Optional[str] = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(BaseModel):
    content: Optional[list[TokenLogprobOut]] = None
    refusal: Optional[list[TokenLogprobOut]] = None


class AssistantMessage(BaseModel):
    content: Optional[str]
    refusal: Optional[str] = None
    role: Literal["assistant"] = "assistant"


FinishReason = Literal["stop", "length"]


class ChatChoice(BaseModel):
    finish_reason: FinishReason
    index: int
    logprobs: Optional[ChoiceLogprobs] = None
    message: AssistantMessage


class Usage(BaseModel):
    completion_tokens: int
    prompt_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    choices: list[ChatChoice]
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    usage: Usage


class ChunkDelta(BaseModel):
    content: Optional[str] = None
    role: Optional[Literal["assistant"]] = None


class ChunkChoice(BaseModel):
    delta: ChunkDelta
    finish_reason: Optional[FinishReason] = None
    index: int
    logprobs: Optional[ChoiceLogprobs] = None


class ChatCompletionChunk(BaseModel):
    id: str
    choices: list[ChunkChoice]
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Optional[Usage] = None


# ---- completions (legacy; what log-likelihood evaluators use) ----

class CompletionRequest(Request):
    model: str
    prompt: Union[str, list[str], list[int], list[list[int]]] = Field(min_length=1)
    echo: bool = False
    logprobs: Optional[int] = Field(default=None, ge=0, le=5)
    max_tokens: int = Field(default=16, ge=0)
    n: int = Field(default=1, ge=1, le=8)
    seed: Optional[int] = Seed
    stop: Stop = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    user: Optional[str] = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int] = []
    token_logprobs: list[Optional[float]] = []
    tokens: list[str] = []
    top_logprobs: list[Optional[dict[str, float]]] = []


class CompletionChoice(BaseModel):
    finish_reason: FinishReason
    index: int
    logprobs: Optional[CompletionLogprobs] = None
    text: str


class Completion(BaseModel):
    id: str
    choices: list[CompletionChoice]
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    object: Literal["text_completion"] = "text_completion"
    usage: Optional[Usage] = None


class CompletionChunkChoice(BaseModel):
    # null until the last chunk of a choice, as OpenAI streams it (the SDK's type says non-null; see tests)
    finish_reason: Optional[FinishReason] = None
    index: int
    logprobs: Optional[CompletionLogprobs] = None
    text: str


class CompletionChunk(BaseModel):
    id: str
    choices: list[CompletionChunkChoice]
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    object: Literal["text_completion"] = "text_completion"
    usage: Optional[Usage] = None


# ---- embeddings ----

class EmbeddingRequest(Request):
    input: Union[str, list[str], list[int], list[list[int]]] = Field(min_length=1)
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[str] = None


class Embedding(BaseModel):
    embedding: Union[list[float], str]
    index: int
    object: Literal["embedding"] = "embedding"


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    data: list[Embedding]
    model: str
    object: Literal["list"] = "list"
    usage: EmbeddingUsage


# ---- models ----

class Model(BaseModel):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str = "tuneloop"
    # --- tuneloop extensions ---
    parent: Optional[str] = None  # the base model an adapter runs on


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


# ---- errors (OpenAI's error envelope) ----

class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- tuneloop extensions: adapters (vLLM's admin routes), feedback ---

class LoadAdapterRequest(Request):
    lora_name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    lora_path: str = Field(min_length=1, max_length=4096)


class UnloadAdapterRequest(Request):
    lora_name: str = Field(min_length=1, max_length=64)


class AdapterStatus(BaseModel):
    lora_name: str
    status: Literal["loaded", "unloaded"]


class FeedbackRequest(Request):
    request_id: str = Field(min_length=1, max_length=128)
    rating: int = Field(ge=-1, le=1, description="1 = good answer, 0 = neutral, -1 = bad answer")
    correction: Optional[str] = Field(default=None, max_length=100_000,
                                      description="the answer the model should have given")


class FeedbackAck(BaseModel):
    request_id: str
    object: Literal["feedback"] = "feedback"
    status: Literal["recorded"] = "recorded"


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    adapters: list[str]
    running: int
    waiting: int
