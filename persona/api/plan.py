"""What a GraphQL document asks for, worked out once per document and cached.

A document's depth, cost and required scopes depend only on its text (never on the
data), so the server parses, validates and analyses each distinct document once and
then checks a request in a few set operations: no token may read a field its scopes
do not cover, and nothing too deep or too costly is executed at all.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from graphql import (
    DirectiveNode,
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    NamedTypeNode,
    Node,
    NullValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    VariableNode,
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
    ("Query", "models"): "predictions:read",
    ("Mutation", "ingestEvents"): "events:write",
    ("Mutation", "eraseProfile"): "erasure:write",
    ("Mutation", "linkIdentities"): "events:write",
    ("Mutation", "unlinkIdentities"): "events:write",
    ("Mutation", "trainModel"): "models:write",
    ("Mutation", "promoteModel"): "models:write",
    ("Mutation", "rollbackModel"): "models:write",
    ("Query", "segments"): "segments:read",
    ("Query", "operations"): "operations:read",
    ("Mutation", "createSegment"): "segments:write",
    ("Mutation", "mintToken"): "tokens:mint",
    ("Mutation", "deleteSegment"): "segments:write",
    ("Subscription", "profileUpdated"): "profiles:read",
    ("Subscription", "segmentChanged"): "segments:read",
    ("Profile", "history"): "history:read",
    ("Profile", "predictions"): "predictions:read",
    ("Profile", "recommendations"): "predictions:read",
    ("Profile", "attributeSources"): "history:read",  # source event ids and times: a digest of the history
    ("Profile", "attributeProvenance"): "history:read",  # the same, typed
    # identity resolution's results: whether an identifier was known already, who is one person
    ("IngestResult", "profilesCreated"): "profiles:read",
    ("IngestResult", "merges"): "profiles:read",
}
# fields that need one more scope unless an argument is given: (type, field) -> (argument, scope).
# `insights` without `epsilon` is exact, not differentially private. A literal (or no argument)
# decides here; when a variable carries it, the resolver checks its value.
UNLESS_ARGUMENT: dict[tuple[str, str], tuple[str, str]] = {
    ("Query", "insights"): ("epsilon", "insights:exact"),
}
EXACT_SCOPE = UNLESS_ARGUMENT[("Query", "insights")][1]
# mutations that answer with people's profiles: reading what they return takes its own scope
RESULT_SCOPES: dict[tuple[str, str], str] = {
    ("Mutation", "linkIdentities"): "profiles:read",
    ("Mutation", "unlinkIdentities"): "profiles:read",
    ("Subscription", "segmentChanged"): "profiles:read",  # who entered and left: people, by profile id
}
# arguments that make a field scan or replay rather than read: each adds this to its cost
# (an `asOf` replays a log; `since`/`until` decrypt up to 2,000 events to compare their times)
SCANNING: dict[tuple[str, str], frozenset[str]] = {
    ("Query", "profile"): frozenset({"asOf"}),
    ("Query", "profiles"): frozenset({"asOf"}),
    ("Profile", "history"): frozenset({"since", "until"}),
}
SCAN_COST = 100
# fields that read the whole population (the profile index): each costs one unit per
# PROFILES_PER_UNIT profiles in it, at least SCAN_COST, when a request arrives (Plan.cost_at)
POPULATION_SCANS: dict[tuple[str, str], frozenset[str] | None] = {
    ("Query", "insights"): None,  # always
    ("Query", "profiles"): frozenset({"filter"}),  # with a filter: a page may take the whole index to fill
}
PROFILES_PER_UNIT = 250
# population scans that replay each profile they meet rather than read its index row: a filtered
# listing with `asOf` (the index cannot be shifted backwards, so each profile's log is replayed to
# that instant). A replay measured 13 to 30 times an index read on the sample's short logs: one
# unit per PAST_PROFILES_PER_UNIT profiles, at least SCAN_COST
REPLAYING_SCANS: dict[tuple[str, str], frozenset[str]] = {
    ("Query", "profiles"): frozenset({"asOf"}),
}
PAST_PROFILES_PER_UNIT = 10
# list fields whose `first` argument multiplies the cost of what they select
PAGED: dict[tuple[str, str], int] = {
    ("Query", "profiles"): 20,
    ("Profile", "history"): 20,
    ("Profile", "recommendations"): 10,
}
INTROSPECTION = frozenset({"__schema", "__type", "__typename"})
# Profile fields whose values the clock never moves (the rest — features, attributes with an age,
# segment labels — read recency and lifecycle): a query selecting only these is answered from the
# answer cache (persona.api.answers) for as long as the profile does not change
CLOCK_FREE = frozenset({"id", "version", "updatedAt", "history", "identities", "liveSegments", "predictions"})
Composite = GraphQLObjectType | GraphQLInterfaceType  # what a selection set is read on


@dataclass(frozen=True)
class Limits:
    max_depth: int = 8
    max_cost: int = 5_000
    max_page: int = 100
    max_document_bytes: int = 20_000
    max_aliases: int = 30
    max_introspection: int = 2  # __schema / __type fields per document
    max_scans: int = 4  # population scans (insights, filtered listings) per document


@dataclass(frozen=True)
class Cacheable:
    """A query the answer cache may answer: only `profile(id: …)` roots, each id a literal or a variable."""

    ids: tuple[tuple[str, str], ...]  # ("literal", value) or ("variable", name), one per root profile
    clocked: bool  # selects a value the clock moves, or asks asOf: its answers are keyed by the tick too

    def profile_ids(self, variables: dict[str, Any] | None) -> list[str] | None:
        """The ids this request reads, or None when a variable does not hold one (execution says why)."""
        out = []
        for kind, value in self.ids:
            if kind == "variable":
                given = (variables or {}).get(value)
                if not isinstance(given, str):
                    return None
                value = given
            out.append(value)
        return out


def cacheable(operation: OperationDefinitionNode, profile_fields: set[str]) -> Cacheable | None:
    """What the answer cache needs of a query made of `profile(id: …)` fields only, else None."""
    if operation.operation is not OperationType.QUERY:
        return None
    ids, clocked = [], bool(profile_fields - CLOCK_FREE)
    for node in operation.selection_set.selections:
        if not isinstance(node, FieldNode):
            return None  # a fragment at the root: not worth following
        if node.name.value == "__typename":
            continue
        arguments = {a.name.value: a.value for a in node.arguments or ()}
        if node.name.value != "profile" or "id" not in arguments or "subject" in arguments:
            return None  # an identifier is looked up (and hashed) by the resolver: never keyed
        given = arguments["id"]
        if isinstance(given, VariableNode):
            ids.append(("variable", given.name.value))
        elif isinstance(given, StringValueNode | IntValueNode):
            ids.append(("literal", given.value))
        else:
            return None
        clocked = clocked or "asOf" in arguments
    return Cacheable(tuple(ids), clocked) if ids else None


@dataclass(frozen=True)
class Plan:
    document: DocumentNode
    operation: OperationDefinitionNode | None
    errors: tuple[GraphQLError, ...]  # anything here: the request is refused as a whole
    scopes: frozenset[str] = frozenset()
    profile_fields: str = ""  # Profile fields selected anywhere, for the audit log
    depth: int = 0
    cost: int = 0
    identifies: bool = False  # carries a `subject` (an identifier): never over GET, where URLs get logged
    scans: int = 0  # population scans: each costs in proportion to the population (cost_at)
    roots: tuple[str, ...] = ()  # the root fields selected, for the audit log
    over: tuple[str, ...] = ()  # the limits the document is over ("depth", "cost", …), for the audit log
    replays: int = 0  # of the scans, those that replay every profile they meet (past filtered listings)
    cacheable: Cacheable | None = None  # answers the answer cache may keep (persona.api.answers)
    # each object's fields as graphql-core collects them, kept across executions of this document by
    # persona.api.execution; None when a directive (@skip, @include…) could make them differ between two
    subfields: dict[Any, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> OperationType | None:
        return None if self.operation is None else self.operation.operation

    def cost_at(self, population: int) -> int:
        """The cost of running this document over a population of this many profiles."""
        return (self.cost + (self.scans - self.replays) * scan_cost(population)
                + self.replays * replay_scan_cost(population))

    def too_costly(self, population: int, limits: Limits) -> GraphQLError | None:
        """The refusal of a document whose scans would cost more than a request may, or None."""
        cost = self.cost_at(population)
        if cost <= limits.max_cost:
            return None
        replaying = (f", {self.replays} of them replaying each profile's log to a past instant (one unit per"
                     f" {PAST_PROFILES_PER_UNIT})") if self.replays else ""
        # the population and the cost it makes, rounded: an exact count here, which a scan
        # refreshes, would tell a caller watching it that one person came or went
        return GraphQLError(
            f"the query would cost about {about(cost):,}: {self.scans} population scan(s) over about"
            f" {about(population):,} profiles (one unit per {PROFILES_PER_UNIT}{replaying}) and {self.cost} for its"
            f" fields; at most {limits.max_cost} is allowed")


def _directed(node: Any) -> bool:
    """Whether a directive appears anywhere in the document (in a selection, a fragment, an operation)."""
    if isinstance(node, DirectiveNode):
        return True
    if isinstance(node, tuple | list):
        return any(_directed(child) for child in node)
    if isinstance(node, Node):
        return any(_directed(getattr(node, key)) for key in node.keys if key != "loc")
    return False


def about(n: int) -> int:
    """`n` to two significant figures."""
    return n if n < 100 else round(n, 2 - len(str(n)))


def scan_cost(population: int) -> int:
    """What one insights or filtered listing costs over a population of this many profiles."""
    return max(SCAN_COST, -(-population // PROFILES_PER_UNIT))


def replay_scan_cost(population: int) -> int:
    """What one filtered listing of the past costs over a population of this many profiles."""
    return max(SCAN_COST, -(-population // PAST_PROFILES_PER_UNIT))


class _Summary(NamedTuple):
    cost: int
    depth: int  # levels of fields, 1 for a leaf
    aliases: int
    introspection: int  # __schema / __type fields
    scans: int = 0  # population scans
    replays: int = 0  # population scans that replay each profile


_NOTHING = _Summary(0, 0, 0, 0)


class _Walk:
    """One pass over an operation. Each fragment is summarised once per type it is spread
    on and reused: a document that spreads fragments inside fragments costs its size to
    analyse, never the exponential size of its expansion."""

    def __init__(self, schema: GraphQLSchema, fragments: dict[str, FragmentDefinitionNode], limits: Limits) -> None:
        self.schema = schema
        self.fragments = fragments
        self.limits = limits
        self.scopes: set[str] = set()
        self.profile_fields: set[str] = set()
        self.identifies = False  # a `subject` argument: an identifier travels in this request
        self.roots: set[str] = set()
        self._memo: dict[tuple[str, str], _Summary] = {}

    def selections(self, parent: Composite, selection_set: SelectionSetNode,
                   seen: frozenset[str]) -> _Summary:
        cost = depth = aliases = introspection = scans = replays = 0
        for node in selection_set.selections:
            if isinstance(node, FieldNode):
                part = self.field(parent, node, seen)
            elif isinstance(node, InlineFragmentNode):
                part = self.selections(self._on(node.type_condition, parent), node.selection_set, seen)
            elif isinstance(node, FragmentSpreadNode):
                part = self.fragment(node.name.value, parent, seen)
            else:  # pragma: no cover - graphql-core has no other selection kinds
                continue
            cost += part.cost
            depth = max(depth, part.depth)
            aliases += part.aliases
            introspection += part.introspection
            scans += part.scans
            replays += part.replays
        return _Summary(cost, depth, aliases, introspection, scans, replays)

    def _on(self, condition: NamedTypeNode | None, parent: Composite) -> Composite:
        """The type a fragment's fields are read on: its condition (an object type, or an interface
        such as Event), else where it is spread."""
        named = self.schema.get_type(condition.name.value) if condition is not None else None
        return named if isinstance(named, GraphQLObjectType | GraphQLInterfaceType) else parent

    def fragment(self, name: str, parent: Composite, seen: frozenset[str]) -> _Summary:
        fragment = self.fragments.get(name)
        if fragment is None or name in seen:
            return _NOTHING  # validation reports unknown or cyclic fragments
        on = self._on(fragment.type_condition, parent)
        key = (name, on.name)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = self.selections(on, fragment.selection_set, seen | {name})
        return found

    def field(self, parent: Composite, node: FieldNode, seen: frozenset[str]) -> _Summary:
        name = node.name.value
        alias = 1 if node.alias is not None else 0
        if name in INTROSPECTION:  # reads no one's data: not walked, but counted
            return _Summary(0, 0, alias, 0 if name == "__typename" else 1)
        key = (parent.name, name)
        if parent in (self.schema.query_type, self.schema.mutation_type, self.schema.subscription_type):
            self.roots.add(name)
        for scopes in (FIELD_SCOPES, RESULT_SCOPES):
            scope = scopes.get(key)
            if scope is not None:
                self.scopes.add(scope)
        if key in UNLESS_ARGUMENT:
            needed, scope = UNLESS_ARGUMENT[key]
            given = next((a.value for a in node.arguments or () if a.name.value == needed), None)
            if given is None or isinstance(given, NullValueNode):
                self.scopes.add(scope)
        if parent.name == "Profile":
            self.profile_fields.add(name)
        definition = parent.fields.get(name)
        if definition is not None and any(
                get_named_type(definition.args[a.name.value].type).name == "SubjectInput"
                for a in node.arguments or () if a.name.value in definition.args):
            self.identifies = True  # an identifier travels in this request
        inner = get_named_type(definition.type) if definition is not None else None
        scanning = SCANNING.get(key, frozenset())
        own = 1 + (SCAN_COST if any(a.name.value in scanning for a in node.arguments or ()) else 0)
        scans = replays = 0
        arguments = {a.name.value for a in node.arguments or ()}
        if key in POPULATION_SCANS:
            when = POPULATION_SCANS[key]
            scans = 1 if when is None or arguments & when else 0
            replays = 1 if scans and arguments & REPLAYING_SCANS.get(key, frozenset()) else 0
        if node.selection_set is None or not isinstance(inner, GraphQLObjectType | GraphQLInterfaceType):
            return _Summary(own, 1, alias, 0, scans, replays)
        times = 1
        if key in PAGED:
            times = PAGED[key]
            for argument in node.arguments or ():
                if argument.name.value == "first":
                    # a literal is taken at its word; a variable might be anything up to the page limit
                    value = argument.value
                    times = int(value.value) if isinstance(value, IntValueNode) else self.limits.max_page
        below = self.selections(inner, node.selection_set, seen)
        if key == ("Query", "profiles") and own > 1:  # a past listing replays every profile of its page
            own = 1 + SCAN_COST * max(times, 1)
        return _Summary(own + max(times, 1) * below.cost, 1 + below.depth, alias + below.aliases,
                        below.introspection, scans + below.scans, replays + below.replays)


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
    summary = walk.selections(root, operation.selection_set, frozenset())
    errors, over = [], []
    if summary.depth > limits.max_depth:
        over.append("depth")
        errors.append(GraphQLError(
            f"the query is {summary.depth} levels deep; at most {limits.max_depth} are allowed"))
    if summary.cost > limits.max_cost:
        over.append("cost")
        errors.append(GraphQLError(
            f"the query would cost {summary.cost} (fields × page sizes); at most {limits.max_cost} is allowed: ask"
            " for smaller pages or fewer nested lists"))
    if summary.aliases > limits.max_aliases:
        over.append("aliases")
        errors.append(GraphQLError(
            f"the query uses {summary.aliases} aliases; at most {limits.max_aliases} are allowed"))
    if summary.introspection > limits.max_introspection:
        over.append("introspection")
        errors.append(GraphQLError(
            f"the query asks for the schema {summary.introspection} times; at most {limits.max_introspection}"
            " __schema/__type fields are allowed"))
    if summary.scans > limits.max_scans:
        over.append("scans")
        errors.append(GraphQLError(
            f"the query scans the population {summary.scans} times (insights, filtered listings); at most"
            f" {limits.max_scans} are allowed"))
    return Plan(document or DocumentNode(definitions=()), operation, tuple(errors), frozenset(walk.scopes),
                ",".join(sorted(walk.profile_fields)), summary.depth, summary.cost, walk.identifies, summary.scans,
                tuple(sorted(walk.roots)), tuple(over), summary.replays,
                None if errors else cacheable(operation, walk.profile_fields),
                None if document is None or _directed(document) else {})


class PlanCache:
    """Plans by (document text, operation name): the parse and validation of a repeated query are free.
    Also the documents registered as persisted queries, by their SHA-256 (Apollo's automatic
    persisted queries): a client then sends the hash alone."""

    def __init__(self, schema: GraphQLSchema, limits: Limits, size: int = 1_000) -> None:
        self.schema = schema
        self.limits = limits
        self.size = size
        self._plans: OrderedDict[tuple[str, str | None], Plan] = OrderedDict()
        self._persisted: OrderedDict[str, str] = OrderedDict()  # sha256 hex -> document text

    def clear(self) -> None:
        """Forget every plan and persisted document (a document may hold identifiers typed into it)."""
        self._plans.clear()
        self._persisted.clear()

    def persist(self, sha256: str, source: str) -> None:
        self._persisted[sha256] = source
        self._persisted.move_to_end(sha256)
        if len(self._persisted) > self.size:
            self._persisted.popitem(last=False)

    def persisted(self, sha256: str) -> str | None:
        found = self._persisted.get(sha256)
        if found is not None:
            self._persisted.move_to_end(sha256)
        return found

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
