"""Refuse query parameters an operation does not take (see docs/decisions/0003-unknown-query-parameters.md).

A mistyped filter (``/api/alerts?severty=critical``) would otherwise be ignored and answer with every
alert, which an analyst can take for the filtered list. Every route under ``/api`` therefore answers 422
``unknown_query_parameter`` naming the parameters it does not know.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

from finsecure.core.errors import Unprocessable

#: How many unknown names an error lists at most (a hostile URL may carry thousands).
_MAX_LISTED = 10


def _query_names(dependant: Dependant) -> set[str]:
    names: set[str] = set()
    for field in dependant.query_params:
        model = getattr(field, "field_info", None)
        annotation = getattr(model, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):  # a model of query fields
            names |= {info.alias or name for name, info in annotation.model_fields.items()}
        else:
            names.add(field.alias)
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


#: id(route) -> (route, its names); the route is kept so that its id is never reused while cached.
_KNOWN: dict[int, tuple[APIRoute, frozenset[str]]] = {}


def _known(route: APIRoute) -> frozenset[str]:
    """The query parameter names ``route`` declares, its dependencies' included."""
    cached = _KNOWN.get(id(route))
    if cached is None or cached[0] is not route:
        if len(_KNOWN) > 4096:  # apps built again and again (tests): start over rather than grow
            _KNOWN.clear()
        cached = _KNOWN[id(route)] = (route, frozenset(_query_names(route.dependant)))
    return cached[1]


async def reject_unknown_query_params(request: Request) -> None:
    """A dependency: 422 when the query string holds a name the matched operation does not declare.

    Raises
    ------
    Unprocessable
        With code ``unknown_query_parameter`` and the unknown names (at most 10) in ``details``.
    """
    route: Any = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params:
        return
    known = _known(route)
    unknown = sorted({name for name in request.query_params if name not in known})
    if unknown:
        raise Unprocessable(
            f"This operation does not take the query parameter(s) {', '.join(map(repr, unknown[:3]))}"
            + (" and more" if len(unknown) > 3 else "")
            + "; check the spelling against the API documentation",
            code="unknown_query_parameter",
            details={"unknown": unknown[:_MAX_LISTED], "allowed": sorted(known)},
        )
