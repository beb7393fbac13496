"""Graph payloads, shaped for a D3 force view: nodes, edges, communities, and how many nodes were left out."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field

from finsecure.core.schemas import ApiModel

#: Entity types a caller may name; ``src_ip`` and ``dst_ip`` are both the graph's ``ip``.
EntityTypeParam = Literal[
    "user_id",
    "account_id",
    "card_id",
    "device_id",
    "ip",
    "src_ip",
    "dst_ip",
    "merchant_id",
    "terminal_id",
    "payee_id",
    "principal_id",
]


class GraphNode(ApiModel):
    id: str = Field(description='"<type>:<key>", e.g. "card_id:tok_9f2c"')
    type: str
    key: str
    label: str = Field(description="The entity in plain words, e.g. 'card tok_9f2c'")
    risk: float = Field(ge=0.0, le=1.0, description="0..1: nearness to known-bad entities or ring patterns")
    community: int | None = Field(description="Community (Leiden) id, or null when not analysed yet")
    blocked: bool


class GraphEdge(ApiModel):
    source: str
    target: str
    relation: str = Field(description="e.g. used_at (card -> terminal), used_device, paid (account -> payee)")
    count: int = Field(ge=0, description="How many events made this link")
    amount: float = Field(description="Money moved over this link, in the events' currencies")
    first_seen: dt.datetime
    last_seen: dt.datetime


class GraphCommunity(ApiModel):
    id: int
    size: int = Field(ge=0, description="How many entities the community holds in the whole graph")
    risk: float = Field(ge=0.0, le=1.0)
    reasons: list[str] = Field(description="Why it looks like a fraud ring, in plain words")


class GraphView(ApiModel):
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    communities: list[GraphCommunity]
    nodes_omitted: int = Field(
        ge=0, description="Nodes that matched but were left out to keep the view readable"
    )


class GraphPath(ApiModel):
    found: bool
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    explanation: str = Field(description="The path in plain words, one link per sentence")
