"""What a GraphQL document asks for, worked out once per document and cached.

A document's depth, cost and required scopes depend only on its text (never on the
data), so the server parses, validates and analyses each distinct document once and
then checks a request in a few set operations: no token may read a field its scopes
do not cover, and nothing too deep or too costly is executed at all.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    get_named_type,
    parse,
    validate,
)

# (type, field) -> the scope needed to select it. Root fields must all be listed (a test
# checks it); other fields need only what their parent needed unless listed here.
FIELD_SCOPES: dict[tuple[str, str], str] = {
    ("Query", "profile"): "profiles:read",
    ("Query", "profiles"): "profiles:read",
    ("Query", "insights"): "insights:read",
    ("Mutation", "ingestEvents"): "events:write",
    ("Mutation", "eraseProfile"): "erasure:write",
    ("Subscription", "profileUpdated"): "profiles:read",
    ("Profile", "history"): "history:read",
    ("Profile", "predictions"): "predictions:read",
}
# list fields whose `first` argument multiplies the cost of what they select
PAGED: dict[tuple[str, str], int] = {
    ("Query", "profiles"): 20,
    ("Profile", "history"): 20,
}
INTROSPECTION = frozenset({"__schema", "__type", "__typename"})


@dataclass(frozen=True)
class Limits:
    max_depth: int = 8
    max_cost: int = 5_000
    max_page: int = 100
    max_document_bytes: int = 20_000
    max_aliases: int = 30


@dataclass(frozen=True)
class Plan:
    document: DocumentNode
    operation: OperationDefinitionNode | None
    errors: tuple[GraphQLError, ...]  # anything here: the request is refused as a whole
    scopes: frozenset[str] = frozenset()
    profile_fields: str = ""  # Profile fields selected anywhere, for the audit log
    depth: int = 0
    cost: int = 0

    @property
    def kind(self) -> OperationType | None:
        return None if self.operation is None else self.operation.operation


class _Walk:
    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode], limits: Limits) -> None:
        self.schema = schema
        self.fragments = fragments
        self.limits = limits
        self.scopes: set[str] = set()
        self.profile_fields: set[str] = set()
        self.depth = 0
        self.aliases = 0
        self.errors: list[GraphQLError] = []

    def cost(self, parent: GraphQLObjectType, selections: SelectionSetNode, depth: int, seen: frozenset[str]) -> int:
        total = 0
        for node in selections.selections:
            if isinstance(node, FieldNode):
                total += self.field(parent, node, depth, seen)
            elif isinstance(node, InlineFragmentNode):
                on = parent
                if node.type_condition is not None:
                    named = self.schema.get_type(node.type_condition.name.value)
                    on = named if isinstance(named, GraphQLObjectType) else parent
                total += self.cost(on, node.selection_set, depth, seen)
            elif isinstance(node, FragmentSpreadNode):
                name = node.name.value
                fragment = self.fragments.get(name)
                if fragment is None or name in seen:
                    continue  # validation reports unknown or cyclic fragments
                named = self.schema.get_type(fragment.type_condition.name.value)
                on = named if isinstance(named, GraphQLObjectType) else parent
                total += self.cost(on, fragment.selection_set, depth, seen | {name})
        return total

    def field(self, parent: GraphQLObjectType, node: FieldNode, depth: int, seen: frozenset[str]) -> int:
        name = node.name.value
        if name in INTROSPECTION:
            return 0  # schema introspection reads no one's data: free, whatever its depth
        if node.alias is not None:
            self.aliases += 1
        key = (parent.name, name)
        scope = FIELD_SCOPES.get(key)
        if scope is not None:
            self.scopes.add(scope)
        if parent.name == "Profile":
            self.profile_fields.add(name)
        self.depth = max(self.depth, depth)
        definition = parent.fields.get(name)
        if definition is None or node.selection_set is None:
            return 1
        inner = get_named_type(definition.type)
        if not isinstance(inner, GraphQLObjectType):
            return 1
        times = 1
        if key in PAGED:
            times = PAGED[key]
            for argument in node.arguments or ():
                if argument.name.value == "first":
                    # a literal is taken at its word; a variable might be anything up to the page limit
                    value = argument.value
                    times = int(value.value) if isinstance(value, IntValueNode) else self.limits.max_page
        return 1 + max(times, 1) * self.cost(inner, node.selection_set, depth + 1, seen)


def plan(schema: GraphQLSchema, source: str, operation_name: str | None, limits: Limits) -> Plan:
    """Parse, validate and analyse one document for one operation."""
    try:
        document = parse(source, max_tokens=limits.max_document_bytes // 2)
    except GraphQLError as e:
        return Plan(DocumentNode(definitions=()), None, (GraphQLError(e.message),))
    errors = validate(schema, document)
    if errors:
        return Plan(document, None, tuple(errors))
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if operation_name is not None:
        operations = [o for o in operations if o.name is not None and o.name.value == operation_name]
    if len(operations) != 1:
        message = ("unknown operation name" if operation_name is not None
                   else "the document holds several operations: say which with operationName")
        return Plan(document, None, (GraphQLError(message),))
    return analyse(schema, document, operations[0], limits)


def analyse(schema: GraphQLSchema, document: DocumentNode | None, operation: OperationDefinitionNode,
            limits: Limits, fragments: dict[str, FragmentDefinitionNode] | None = None) -> Plan:
    """Depth, cost and scopes of a validated operation (also used for subscriptions)."""
    if fragments is None:
        assert document is not None
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    root = schema.get_root_type(operation.operation)
    assert root is not None
    walk = _Walk(schema, fragments, limits)
    cost = walk.cost(root, operation.selection_set, 1, frozenset())
    errors = []
    if walk.depth > limits.max_depth:
        errors.append(GraphQLError(f"the query is {walk.depth} levels deep; at most {limits.max_depth} are allowed"))
    if cost > limits.max_cost:
        errors.append(GraphQLError(
            f"the query would cost {cost} (fields × page sizes); at most {limits.max_cost} is allowed: ask for"
            " smaller pages or fewer nested lists"))
    if walk.aliases > limits.max_aliases:
        errors.append(GraphQLError(f"the query uses {walk.aliases} aliases; at most {limits.max_aliases} are allowed"))
    return Plan(document or DocumentNode(definitions=()), operation, tuple(errors), frozenset(walk.scopes),
                ",".join(sorted(walk.profile_fields)), walk.depth, cost)


class PlanCache:
    """Plans by (document text, operation name): the parse and validation of a repeated query are free."""

    def __init__(self, schema: GraphQLSchema, limits: Limits, size: int = 1_000) -> None:
        self.schema = schema
        self.limits = limits
        self.size = size
        self._plans: OrderedDict[tuple[str, str | None], Plan] = OrderedDict()

    def get(self, source: str, operation_name: str | None) -> Plan:
        key = (source, operation_name)
        found = self._plans.get(key)
        if found is not None:
            return found
        made = plan(self.schema, source, operation_name, self.limits)
        self._plans[key] = made
        if len(self._plans) > self.size:
            self._plans.popitem(last=False)
        return made
