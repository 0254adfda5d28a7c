"""Response models for OpenAPI: every error body, and the simple protocol's predictions."""

from typing import Any

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """Every error response."""

    error: str = Field(description="What went wrong, for a person.")
    code: str = Field(description="A stable machine-readable code.")
    detail: list[dict[str, Any]] | None = Field(None, description="One entry per problem.")


class LabelScore(BaseModel):
    label: str
    score: float


class LabelledPrediction(BaseModel):
    """A classifier's prediction for one instance."""

    label: str = Field(description="The most likely class.")
    score: float = Field(description="Its softmax probability.")
    output: list[Any] = Field(description="The model's raw output for this instance.")
    top_k: list[LabelScore] | None = Field(None, description="The k best classes, when asked.")


class PredictResponse(BaseModel):
    predictions: list[Any] = Field(description="One prediction per instance, in order.")
    model: str


class LabelledPredictResponse(BaseModel):
    predictions: list[LabelledPrediction] = Field(description="One per instance, in order.")
    model: str


def error_responses(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for error statuses, each with the ErrorBody schema."""
    return {status: {"model": ErrorBody, "description": text} for status, text in described.items()}
