"""The entity graph for the dashboard (viewers and up): a neighbourhood, risky communities, a path."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from finsecure.auth.deps import ViewerUser
from finsecure.core.deps import Context
from finsecure.core.errors import NotFound, Unavailable, Unprocessable, error_responses
from finsecure.graph import service as graph_service
from finsecure.graph.edges import ENTITY_TYPES, entity_type_of
from finsecure.graph.schemas import EntityTypeParam, GraphPath, GraphView
from finsecure.graph.store import GraphStore, split_node_key

router = APIRouter(prefix="/graph", tags=["graph"])

EntityId = Annotated[str, Path(min_length=1, max_length=128)]
_NODE_HELP = 'An entity as "<type>:<id>", e.g. "card_id:tok_9f2c" (the type may also be src_ip or dst_ip)'


def _store(context: Context) -> GraphStore:
    if context.platform is None:
        raise Unavailable("The entity graph lives with the data plane, which this process does not run")
    return context.platform.graph


@router.get(
    "/entity/{entity_type}/{entity_id}",
    response_model=GraphView,
    summary="An entity, its neighbourhood (up to 3 links away), their communities and risk",
    responses=error_responses(401, 403, 404, 422, 503),
)
def read_entity(
    entity_type: EntityTypeParam,
    entity_id: EntityId,
    _viewer: ViewerUser,
    context: Context,
    hops: Annotated[int, Query(ge=1, le=3)] = 2,
    max_nodes: Annotated[int, Query(ge=1, le=graph_service.MAX_NODES)] = graph_service.MAX_NODES,
    local: Annotated[bool, Query(description="Communities of this neighbourhood alone")] = False,
) -> GraphView:
    view = graph_service.entity_view(
        store=_store(context),
        entity_type=entity_type,
        entity_id=entity_id,
        hops=hops,
        max_nodes=max_nodes,
        local=local,
    )
    if view is None:
        raise NotFound("That entity has not been seen in recent events")
    return view


@router.get(
    "/communities",
    response_model=GraphView,
    summary="Communities that look like fraud rings, riskiest first, with their most telling members",
    responses=error_responses(401, 403, 422, 503),
)
def list_communities(
    _viewer: ViewerUser,
    context: Context,
    min_risk: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> GraphView:
    return graph_service.communities_view(store=_store(context), min_risk=min_risk, limit=limit)


def _endpoint(
    entity_type: str | None, entity_id: str | None, combined: str | None, name: str
) -> tuple[str, str]:
    if combined is not None:
        entity_type, entity_id = split_node_key(combined)
        if not entity_id:
            raise Unprocessable(f"'{name}' must look like card_id:tok_9f2c")
    if entity_type is None or entity_id is None:
        raise Unprocessable(f"Name the '{name}' entity: {name}=<type>:<id>, or {name}_type and {name}_id")
    if entity_type_of(entity_type) not in ENTITY_TYPES:
        raise Unprocessable(f"'{entity_type}' is not an entity type of the graph")
    return entity_type, entity_id


@router.get(
    "/path",
    response_model=GraphPath,
    summary="How two entities are linked: the shortest path that avoids busy hubs, in plain words",
    responses=error_responses(401, 403, 404, 422, 503),
)
def read_path(
    _viewer: ViewerUser,
    context: Context,
    from_type: EntityTypeParam | None = None,
    from_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    to_type: EntityTypeParam | None = None,
    to_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    from_: Annotated[
        str | None, Query(alias="from", min_length=3, max_length=160, description=_NODE_HELP)
    ] = None,
    to: Annotated[str | None, Query(min_length=3, max_length=160, description=_NODE_HELP)] = None,
) -> GraphPath:
    source = _endpoint(from_type, from_id, from_, "from")
    target = _endpoint(to_type, to_id, to, "to")
    path = graph_service.path_view(store=_store(context), source=source, target=target)
    if path is None:
        raise NotFound("At least one of the two entities has not been seen in recent events")
    return path
