"""Admin API input and output shapes: strict (unknown fields refused), documented."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ObjectId = Annotated[str, StringConstraints(min_length=1, max_length=40)]
Tag = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:/=+-]{1,64}$")]
Email = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=320,
                                         pattern=r"^[^@\s]+@[^@\s]+$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OrgIn(Strict):
    name: Name


class Org(BaseModel):
    id: str
    name: str
    created_at: datetime


class TeamIn(Strict):
    name: Name
    org_id: ObjectId


class Team(BaseModel):
    id: str
    org_id: str
    name: str
    created_at: datetime


class UserIn(Strict):
    email: Email
    role: Annotated[str, Field(pattern="^(org_admin|finance|team_admin|viewer|member)$")] = "member"
    team_ids: Annotated[list[ObjectId], Field(max_length=100)] = []
    org_id: ObjectId | None = None


class User(BaseModel):
    id: str
    org_id: str
    email: str
    role: str
    team_ids: list[str]
    created_at: datetime


class AgentIn(Strict):
    name: Name
    team_id: ObjectId | None = None
    org_id: ObjectId | None = None


class Agent(BaseModel):
    id: str
    org_id: str
    team_id: str | None
    name: str
    created_at: datetime


class KeyIn(Strict):
    name: Name
    org_id: ObjectId
    team_id: ObjectId | None = None
    user_id: ObjectId | None = None
    agent_id: ObjectId | None = None
    tags: Annotated[list[Tag], Field(max_length=20)] = []
    models: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=200)]],
                      Field(max_length=500)] = []
    allow_request_tags: bool = False
    expires_at: datetime | None = None


class Key(BaseModel):
    id: str
    org_id: str
    team_id: str | None
    user_id: str | None
    agent_id: str | None
    name: str
    key_prefix: str
    tags: list[str]
    models: list[str]
    allow_request_tags: bool
    expires_at: datetime | None
    revoked_at: datetime | None
    status: str
    created_at: datetime


class KeyWithSecret(Key):
    key: str = Field(description="The secret, shown this once; only its hash is stored.")


class UsageRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: str
    unpriced_requests: int


class UsageReport(BaseModel):
    group_by: list[str]
    start: datetime | None
    end: datetime | None
    rows: list[UsageRow]
    total_cost_usd: str
    unpriced_requests: int


class Event(BaseModel):
    id: str
    type: str
    timestamp: datetime
    org_id: str | None
    data: dict[str, object]


class ErrorDetail(BaseModel):
    message: str
    code: str
    param: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail
