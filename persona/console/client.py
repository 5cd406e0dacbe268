"""The console reads and acts through the GraphQL schema, in process: a page asks what an API
client would ask, under the signed-in token, so the same scopes, rate limit, audit entries,
consent rules and masked errors apply. Nothing a page shows comes by another door."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from persona.api.context import ApiState, RequestContext
from persona.api.run import answer_of, execute_plan, operations_of
from persona.tokens import Token


class ConsoleFault(Exception):
    """A document of the console's own that the schema refuses: a bug of ours, never the user's."""


@dataclass(frozen=True)
class Problem:
    message: str
    code: str


@dataclass(frozen=True)
class Answer:
    data: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)
    missing: tuple[str, ...] = ()  # scopes the token lacks for what was asked (then nothing was run)

    @property
    def refused(self) -> bool:
        return bool(self.missing)

    def code(self) -> str | None:
        return self.problems[0].code if self.problems else None


async def ask(state: ApiState, token: Token, document: str, variables: dict[str, Any] | None = None) -> Answer:
    """Run one of the console's documents as `token` would over HTTP: refused (and audited as
    refused) when the token lacks a scope, else executed, its errors masked."""
    plan = state.plans.get(document, None)
    if plan.errors:
        raise ConsoleFault("; ".join(e.message for e in plan.errors))
    missing = plan.scopes - token.scopes
    if missing:
        state.audit.refuse(token.name, operations_of(plan), "FORBIDDEN", {"missing": sorted(missing)})
        return Answer(None, [], tuple(sorted(missing)))
    if plan.scans:
        too_costly = plan.too_costly(state.population, state.options.limits)
        if too_costly is not None:
            state.audit.refuse(token.name, operations_of(plan), "BAD_REQUEST", {"over": ["cost"]})
            return Answer(None, [Problem(too_costly.message, "BAD_REQUEST")])
    result = await execute_plan(RequestContext(state, token, plan), variables)
    out = answer_of(state, token, plan, variables, result)
    problems = [Problem(e["message"], e["extensions"]["code"]) for e in out.get("errors", ())]
    return Answer(out["data"], problems)
