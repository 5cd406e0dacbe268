"""Segment rules: a small language over a profile's features, attributes, consent and RFM scores,
parsed by a recursive-descent parser into a predicate (never `eval`). docs/segments.md is the
reference; in short:

    monetary > 1000 and recency_days < 30 and consent.marketing
    lifecycle_stage in ["active", "at_risk"] or (frequency >= 3 and not country = "CN")
    top_categories contains "books" and rfm.r >= 4 and age is not null

    rule       := or
    or         := and ("or" and)*
    and        := unary ("and" unary)*
    unary      := "not" unary | "(" or ")" | test
    test       := NAME                                  a yes/no name: consent.PURPOSE
                | NAME ("<" | "<=" | ">" | ">=") NUMBER  a number
                | NAME ("=" | "!=") VALUE                a number, text or true/false
                | NAME "in" "[" VALUE ("," VALUE)* "]"
                | NAME "contains" TEXT                   a list: top_categories, languages
                | NAME "is" ["not"] "null"

Every name is checked when the rule is parsed (an unknown name, or a comparison its values can
never satisfy, is refused there, with the place in the rule), never when it is evaluated. A test
on a value the profile does not have (a feature not computed yet, an attribute no source gave)
is false; `is null` asks for exactly that. A rule is at most MAX_RULE characters, MAX_TERMS tests
and MAX_DEPTH levels of nesting: a rule is evaluated for every profile an ingest touches.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from persona.errors import ValidationError
from persona.projections.profile import CONSENT_PURPOSES

MAX_RULE = 2_000  # characters
MAX_TERMS = 64  # tests
MAX_DEPTH = 16  # nested "not" and parentheses
MAX_LIST = 100  # values of an `in [...]`

Profile = tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, int] | None]  # attributes, features, rfm
Predicate = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, int] | None], bool]

# What each name is: where its value comes from and what kind of value it holds.
NUMBER, TEXT, FLAG, LIST = "number", "text", "yes/no", "list"
_FEATURES = {
    **{name: NUMBER for name in (
        "frequency", "monetary", "aov", "recency_days", "refunds", "refund_amount", "interpurchase_mean_days",
        "interpurchase_std_days", "page_views", "product_views", "searches", "sessions", "session_mean_duration_s",
        "app_sessions", "app_minutes", "reviews", "review_mean_rating", "viewed_skus", "converted_skus",
        "conversion_rate", "behavior_events", "active_days")},
    "lifecycle_stage": TEXT,
    "top_categories": LIST,
}
_ATTRIBUTES = {"gender": TEXT, "birth_year": NUMBER, "age": NUMBER, "region": TEXT, "city": TEXT, "country": TEXT,
               "language": TEXT, "languages": LIST}
_ALIASES = {"stage": "lifecycle_stage", "orders": "frequency", "spent": "monetary"}  # persona profiles' labels
NAMES: dict[str, str] = {**_FEATURES, **_ATTRIBUTES, **{f"consent.{p}": FLAG for p in CONSENT_PURPOSES},
                         **{f"rfm.{score}": NUMBER for score in ("r", "f", "m")}}

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<text>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<op><=|>=|!=|==|<|>|=)
  | (?P<punct>[()\[\],])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
""", re.VERBOSE)
_WORDS = frozenset({"and", "or", "not", "in", "contains", "is", "null", "true", "false"})


@dataclass(frozen=True)
class Token:
    kind: str  # number, text, op, punct, name, word, end
    text: str
    at: int  # its first character, counted from 1

    def show(self) -> str:
        return "the end of the rule" if self.kind == "end" else f"{self.text!r} (character {self.at})"


class RuleError(ValidationError):
    """A rule that cannot be parsed: says what was expected, and where. Whatever of the rule a
    message quotes comes last, after ", found" (the API leaves that part out: a rule holds values)."""


def tokens(rule: str) -> list[Token]:
    out, at = [], 0
    while at < len(rule):
        found = _TOKEN.match(rule, at)
        if found is None:
            raise RuleError(f"rule: a character that is not part of the rule language, found {rule[at]!r}"
                            f" (character {at + 1})")
        kind = found.lastgroup or ""
        text = found.group()
        if kind == "name" and text.lower() in _WORDS:
            kind, text = "word", text.lower()
        if kind != "space":
            out.append(Token(kind, text, at + 1))
        at = found.end()
    out.append(Token("end", "", len(rule) + 1))
    return out


@dataclass(frozen=True)
class Rule:
    """A parsed rule: its text, the names it reads, and its predicate."""

    text: str
    names: tuple[str, ...]
    holds: Predicate = field(compare=False)  # closures: two parses of one text are the same rule

    def __call__(self, attributes: Mapping[str, Any], features: Mapping[str, Any],
                 rfm: Mapping[str, int] | None) -> bool:
        return self.holds(attributes, features, rfm)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Sent to a scanning process as its text, and parsed again there (a predicate is closures)."""
        return compile_rule, (self.text,)


def compile_rule(text: str) -> Rule:
    """A rule, parsed once (RuleError if it is not one)."""
    parser = _parsed(text)
    return Rule(text, tuple(dict.fromkeys(parser.names)), parser.predicate)


def parse(rule: str) -> Predicate:
    """The predicate of a rule over (attributes, features, rfm); RuleError if it is not a rule."""
    return _parsed(rule).predicate


def names_in(rule: str) -> list[str]:
    """The names a rule reads (canonical: aliases resolved), in order, each once."""
    return list(dict.fromkeys(_parsed(rule).names))


def _parsed(rule: str) -> _Parser:
    if not isinstance(rule, str) or not rule.strip():  # sizes first: nothing of a huge rule is read
        raise RuleError("rule: empty")
    if len(rule) > MAX_RULE:
        raise RuleError(f"rule: longer than {MAX_RULE} characters")
    parser = _Parser(tokens(rule))
    parser.predicate = parser.disjunction(0)
    if parser.peek().kind != "end":
        raise RuleError(f"rule: expected 'and', 'or' or the end of the rule, found {parser.peek().show()}")
    return parser


class _Parser:
    def __init__(self, items: list[Token]) -> None:
        self.items = items
        self.at = 0
        self.terms = 0
        self.names: list[str] = []  # canonical, in the order read
        self.predicate: Predicate = lambda a, f, r: False

    def peek(self) -> Token:
        return self.items[self.at]

    def take(self) -> Token:
        token = self.items[self.at]
        self.at += 1
        return token

    def expect(self, kind: str, text: str | None, what: str) -> Token:
        token = self.take()
        if token.kind != kind or (text is not None and token.text != text):
            raise RuleError(f"rule: expected {what}, found {token.show()}")
        return token

    def disjunction(self, depth: int) -> Predicate:
        parts = [self.conjunction(depth)]
        while self.peek().kind == "word" and self.peek().text == "or":
            self.take()
            parts.append(self.conjunction(depth))
        if len(parts) == 1:
            return parts[0]
        return lambda a, f, r: any(p(a, f, r) for p in parts)

    def conjunction(self, depth: int) -> Predicate:
        parts = [self.unary(depth)]
        while self.peek().kind == "word" and self.peek().text == "and":
            self.take()
            parts.append(self.unary(depth))
        if len(parts) == 1:
            return parts[0]
        return lambda a, f, r: all(p(a, f, r) for p in parts)

    def unary(self, depth: int) -> Predicate:
        if depth > MAX_DEPTH:
            raise RuleError(f"rule: nested more than {MAX_DEPTH} levels deep, found {self.peek().show()}")
        token = self.peek()
        if token.kind == "word" and token.text == "not":
            self.take()
            inner = self.unary(depth + 1)
            return lambda a, f, r: not inner(a, f, r)
        if token.kind == "punct" and token.text == "(":
            self.take()
            inner = self.disjunction(depth + 1)
            self.expect("punct", ")", "')'")
            return inner
        return self.test()

    def test(self) -> Predicate:
        token = self.take()
        if token.kind != "name":
            raise RuleError(f"rule: expected a name (a feature, an attribute, consent.PURPOSE or rfm.r/f/m),"
                            f" found {token.show()}")
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise RuleError(f"rule: more than {MAX_TERMS} tests")
        name = _ALIASES.get(token.text, token.text)
        kind = NAMES.get(name)
        if kind is None:
            raise RuleError(f"rule: an unknown name (known: {', '.join(sorted(NAMES))}), found {token.show()}")
        self.names.append(name)
        read = _reader(name)
        after = self.peek()
        if after.kind == "op":
            return self.comparison(name, kind, read, self.take())
        if after.kind == "word" and after.text == "in":
            self.take()
            return self.membership(name, kind, read)
        if after.kind == "word" and after.text == "contains":
            self.take()
            if kind != LIST:
                raise RuleError(f"rule: {name} is a {kind}, not a list: 'contains' ({after.show()}) does not apply")
            wanted = self.value(LIST, name)
            return lambda a, f, r: _holds(read(a, f, r), wanted)
        if after.kind == "word" and after.text == "is":
            self.take()
            negated = self.peek().kind == "word" and self.peek().text == "not"
            if negated:
                self.take()
            self.expect("word", "null", "'null' after 'is'" + (" not" if negated else ""))
            if negated:
                return lambda a, f, r: read(a, f, r) is not None
            return lambda a, f, r: read(a, f, r) is None
        if kind != FLAG:
            raise RuleError(f"rule: {name} is a {kind}: compare it (e.g. {_example(name, kind)}), found"
                            f" {after.show()}")
        return lambda a, f, r: read(a, f, r) is True

    def comparison(self, name: str, kind: str, read: Callable[..., Any], op: Token) -> Predicate:
        symbol = "=" if op.text == "==" else op.text
        if symbol in ("<", "<=", ">", ">=") and kind != NUMBER:
            raise RuleError(f"rule: {name} is a {kind}: {op.show()} compares numbers only")
        if kind == LIST:
            raise RuleError(f"rule: {name} is a list: use 'contains', not {op.show()}")
        wanted = self.value(kind, name)
        if symbol == "!=":  # a missing value (or one of another kind) says nothing: false, as = is
            return lambda a, f, r: (value := read(a, f, r)) is not None and _comparable(value, kind) and value != wanted
        compare = _COMPARE[symbol]
        return lambda a, f, r: (value := read(a, f, r)) is not None and _comparable(value, kind) and compare(
            value, wanted)

    def membership(self, name: str, kind: str, read: Callable[..., Any]) -> Predicate:
        if kind in (LIST, FLAG):
            raise RuleError(f"rule: {name} is a {kind}: 'in [...]' takes a number or a text")
        self.expect("punct", "[", "'[' after 'in'")
        values = [self.value(kind, name)]
        while self.peek().kind == "punct" and self.peek().text == ",":
            self.take()
            values.append(self.value(kind, name))
            if len(values) > MAX_LIST:
                raise RuleError(f"rule: more than {MAX_LIST} values in the list of {name}")
        self.expect("punct", "]", "',' or ']'")
        wanted = frozenset(values)
        return lambda a, f, r: (value := read(a, f, r)) is not None and _comparable(value, kind) and value in wanted

    def value(self, kind: str, name: str) -> Any:
        token = self.take()
        if kind == NUMBER and token.kind == "number":
            number = float(token.text)
            if not math.isfinite(number):
                raise RuleError(f"rule: {name} holds a number: expected a finite number, found {token.show()}")
            return number
        if kind in (TEXT, LIST) and token.kind == "text":
            return _unquote(token.text)
        if kind == FLAG and token.kind == "word" and token.text in ("true", "false"):
            return token.text == "true"
        raise RuleError(f"rule: {name} holds a {kind}: expected {_WANTED[kind]}, found {token.show()}")


_WANTED = {NUMBER: "a number", TEXT: 'a text in quotes ("…")', FLAG: "true or false",
           LIST: 'a text in quotes ("…") to look for'}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda x, y: x < y, "<=": lambda x, y: x <= y, ">": lambda x, y: x > y, ">=": lambda x, y: x >= y,
    "=": lambda x, y: x == y,
}


def _comparable(value: Any, kind: str) -> bool:
    if kind == NUMBER:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == TEXT:
        return isinstance(value, str)
    return isinstance(value, bool)


def _holds(values: Any, wanted: str) -> bool:
    return isinstance(values, list) and wanted in values


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


def _example(name: str, kind: str) -> str:
    return {NUMBER: f"{name} > 100", TEXT: f'{name} = "…"', LIST: f'{name} contains "…"'}.get(kind, name)


def value_of(name: str, attributes: Mapping[str, Any], features: Mapping[str, Any],
             rfm: Mapping[str, int] | None) -> Any:
    """A name's value for a profile, as a rule reads it (None: the profile has none)."""
    return _reader(_ALIASES.get(name, name))(attributes, features, rfm)


def _reader(name: str) -> Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, int] | None], Any]:
    """Where a name's value is read: features, attributes, consent (an attribute) or the RFM scores."""
    if name in _FEATURES:
        return lambda a, f, r: f.get(name)
    if name.startswith("consent."):
        purpose = name.removeprefix("consent.")

        def consent(a: Mapping[str, Any], f: Mapping[str, Any], r: Mapping[str, int] | None) -> Any:
            given = a.get("consent")
            return given.get(purpose) if isinstance(given, Mapping) else None

        return consent
    if name.startswith("rfm."):
        score = name.removeprefix("rfm.")
        return lambda a, f, r: None if not r else r.get(score)
    return lambda a, f, r: a.get(name)
