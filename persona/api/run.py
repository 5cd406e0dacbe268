"""Running a planned request (authorized already) on the schema: what the HTTP endpoint and the
console (persona.console) share, so that a page of the console reads exactly as an API request
does, with the same resolvers, audit entries and masked errors."""

from __future__ import annotations

from typing import Any

from graphql import ExecutionResult, execute
from graphql.pyutils import is_awaitable
from strawberry.execution.is_awaitable import optimized_is_awaitable

from persona.api.context import ApiState, RequestContext
from persona.api.errors import ApiError, masked, request_values, schema_names
from persona.api.execution import Executor
from persona.api.plan import Plan
from persona.api.schema import schema
from persona.tokens import Token

GRAPHQL_SCHEMA = schema._schema
# codes of errors that refuse a field for who is asking or for the server's state (audited as refusals)
REFUSALS = frozenset({"UNAUTHENTICATED", "FORBIDDEN", "RATE_LIMITED", "BUDGET_EXHAUSTED", "BUSY", "UNAVAILABLE"})


async def execute_plan(context: RequestContext, variables: dict[str, Any] | None,
                       operation_name: str | None = None) -> ExecutionResult:
    """Execute a request's plan (authorized already) on the schema, with persona's executor."""
    assert context.plan is not None
    result = execute(GRAPHQL_SCHEMA, context.plan.document, context_value=context, variable_values=variables,
                     operation_name=operation_name, is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]
                     executor_class=Executor)
    if is_awaitable(result):
        result = await result
    assert isinstance(result, ExecutionResult)
    return result


def answer_of(state: ApiState, token: Token, plan: Plan, variables: dict[str, Any] | None,
              result: ExecutionResult) -> dict[str, Any]:
    """The answer a client is given, errors masked; refusals among them counted in the audit log."""
    out: dict[str, Any] = {"data": result.data}
    if result.errors:
        values = request_values(plan.document, variables, schema_names(GRAPHQL_SCHEMA))
        out["errors"] = [masked(e, values) for e in result.errors]
        for e in result.errors:
            original = e.original_error
            if isinstance(original, ApiError) and original.code in REFUSALS and e.nodes:
                state.audit.refuse(token.name, e.nodes[0].name.value, original.code)  # type: ignore[attr-defined]
    return out


def operations_of(plan: Plan) -> str:
    """What a refused request asked for, for the audit log: its root fields (schema names)."""
    return ",".join(plan.roots) or "request"
