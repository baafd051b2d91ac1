"""The CloudEvents 1.0 envelope every Homeward message travels in (structured JSON mode)."""

from typing import Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from contracts.values import Timestamp

PayloadT = TypeVar("PayloadT")


class Envelope(BaseModel, Generic[PayloadT]):
    """Unknown envelope fields are ignored, as the contract says."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    specversion: Literal["1.0"]
    id: UUID
    type: str = Field(min_length=1, max_length=200)
    source: str = Field(min_length=1, max_length=200)
    time: Timestamp
    subject: str = Field(min_length=1, max_length=200)
    correlationid: UUID
    causationid: UUID | None = None
    datacontenttype: Literal["application/json"]
    data: PayloadT


class RawEnvelope(Envelope[dict[str, object]]):
    """An envelope whose payload is not yet validated against its topic's model."""
