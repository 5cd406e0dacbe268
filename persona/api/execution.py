"""graphql-core's executor, with a short path for the commonest field of all: a scalar read
straight off its object (an event's `type`, a profile's `attributes`), and each object's
fields collected once per document rather than once per execution.

For such a field graphql-core builds a path, a resolve-info object and a completion for
every object it appears on — most of the cost of a page of 50 events. Here those fields
are read and coerced directly; anything else (arguments, lists, objects, a null in a
non-null field, a value that does not coerce, an exception) goes the standard way, which
also reports its errors exactly as graphql-core does.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLLeafType, GraphQLNonNull, GraphQLObjectType, get_nullable_type, is_leaf_type
from graphql.execution.collect_fields import CollectedFields, FieldDetailsList, GroupedFieldSet
from graphql.pyutils import Path, Undefined
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

PLAIN = "_persona_plain"  # set on resolvers that only read their object (persona.api.schema)

Plain = dict[str, tuple[Any, GraphQLLeafType]]
_plain_fields: dict[GraphQLObjectType, Plain] = {}


def mark_plain(resolve: Any) -> Any:
    setattr(resolve, PLAIN, True)
    return resolve


def _plain(parent: GraphQLObjectType) -> Plain:
    found = _plain_fields.get(parent)
    if found is None:
        found = {}
        for name, field in parent.fields.items():
            leaf = get_nullable_type(field.type)
            if getattr(field.resolve, PLAIN, False) and not field.args and is_leaf_type(leaf):
                found[name] = (field.resolve, leaf)
        _plain_fields[parent] = found
    return found


class Executor(StrawberryGraphQLCoreExecutionContext):
    def collect_subfields(self, return_type: GraphQLObjectType, field_details_list: FieldDetailsList
                          ) -> CollectedFields:
        """graphql-core collects an object's fields again at every execution; for a document without
        directives they depend on nothing else (not on variables), so the plan keeps them, keyed by
        the type and the very nodes of its own document, which it holds."""
        plan = getattr(self.context_value, "plan", None)
        kept = None if plan is None else plan.subfields
        if kept is None:
            return super().collect_subfields(return_type, field_details_list)
        key = (return_type, tuple(id(details.node) for details in field_details_list))
        found: CollectedFields | None = kept.get(key)
        if found is None:
            found = kept[key] = super().collect_subfields(return_type, field_details_list)
        return found

    def execute_fields(self, parent_type: GraphQLObjectType, source_value: Any, path: Path | None,
                       grouped_field_set: GroupedFieldSet, position_context: Any) -> Any:
        plain = _plain(parent_type)
        if not plain:
            return super().execute_fields(parent_type, source_value, path, grouped_field_set, position_context)
        quick: dict[str, Any] = {}
        rest: GroupedFieldSet = {}
        for response_name, details in grouped_field_set.items():
            node = details[0].node
            entry = plain.get(node.name.value)
            if entry is None or node.arguments or len(details) > 1:
                rest[response_name] = details
                continue
            resolve, leaf = entry
            try:
                value = resolve(source_value, None)
                coerced = None if value is None else leaf.coerce_output_value(value)
            except Exception:
                rest[response_name] = details  # the standard path raises it again, and reports it
                continue
            if coerced is Undefined or (coerced is None and (value is not None or _non_null(parent_type, node))):
                rest[response_name] = details
                continue
            quick[response_name] = coerced
        if not rest:
            return quick
        others = super().execute_fields(parent_type, source_value, path, rest, position_context)
        order = list(grouped_field_set)
        if self.is_awaitable(others):
            async def merged() -> dict[str, Any]:
                done = await others
                return _in_order(order, quick, done)

            return merged()
        assert isinstance(others, dict)
        return _in_order(order, quick, others)


def _non_null(parent: GraphQLObjectType, node: Any) -> bool:
    return isinstance(parent.fields[node.name.value].type, GraphQLNonNull)


def _in_order(order: list[str], quick: dict[str, Any], others: dict[str, Any]) -> dict[str, Any]:
    """Fields in the order the query asked for them (a GraphQL response keeps it)."""
    return {name: quick[name] if name in quick else others[name] for name in order
            if name in quick or name in others}
