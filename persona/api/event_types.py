"""Events as the API returns them: an `Event` interface with the fields every event has, and one
type per event type of docs/events.md with that type's fields (`OtherEvent` for the log's own
markers, such as profiles_merged, and any type this release does not know). `data` keeps the
whole body on every type, so a client reading it loses nothing.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

import strawberry
from strawberry.scalars import JSON

from persona.events import RecordedEvent


@strawberry.type
class Identity:
    namespace: str
    hash: str = strawberry.field(description="A short hash of the identifier, enough to tell links apart")
    profile_id: strawberry.ID | None = strawberry.field(
        default=None, description="The profile it is linked to: one of a merged person's (null on an event's subject)")



@strawberry.interface(description="An event of a person's log. Each event type docs/events.md defines has a type of"
                                  " its own with its fields (`... on OrderPlaced { orderId amount }`); `data` holds"
                                  " the whole body, fields no type names included")
class Event:
    _event: strawberry.Private[RecordedEvent]

    @strawberry.field
    def id(self) -> str:
        return self._event.event_id

    @strawberry.field
    def version(self) -> int:
        return self._event.version

    @strawberry.field(description="The profile whose log holds the event: for a merged person, one of its"
                                  " profiles (the person's id, or a profile merged into it)")
    def stream(self) -> strawberry.ID:
        return strawberry.ID(self._event.profile_id)

    @strawberry.field
    def type(self) -> str:
        return self._event.type

    @strawberry.field
    def source(self) -> str:
        return self._event.source

    @strawberry.field
    def occurred_at(self) -> datetime:
        return datetime.fromisoformat(self._event.occurred_at)

    @strawberry.field
    def recorded_at(self) -> datetime:
        return self._event.recorded_at

    @strawberry.field
    def subject(self) -> Identity:
        return Identity(namespace=self._event.subject[0], hash=self._event.subject[1])

    @strawberry.field
    def data(self) -> JSON:
        return JSON(self._event.data)

    @strawberry.field(description="Who appended it: token:NAME (the API), local:COMMAND (the CLI), library, or"
                                  " unknown (recorded before writers were)")
    def writer(self) -> str:
        return self._event.writer


def _data(name: str, kind: Any, description: str | None = None, convert: Any = None) -> Any:
    """A field read from the event's body (null where the body does not hold it)."""

    def resolve(self: Any) -> Any:
        value = self._event.data.get(name)
        return value if value is None or convert is None else convert(value)

    resolve.__annotations__ = {"return": kind | None}
    return strawberry.field(resolver=resolve, description=description)


def _money(value: Any) -> Decimal:
    return Decimal(str(value))


@strawberry.type(description="A line of an order")
class OrderItem:
    sku: str | None
    category: str | None
    qty: int | None
    price: Decimal | None


def _items(value: Any) -> list[OrderItem]:
    return [OrderItem(sku=i.get("sku"), category=i.get("category"), qty=i.get("qty"),
                      price=None if i.get("price") is None else _money(i["price"]))
            for i in value if isinstance(i, dict)]


@strawberry.type(description="profile_updated: attributes a source claims")
class ProfileUpdated(Event):
    gender: str | None = _data("gender", str)
    birth_year: int | None = _data("birth_year", int)
    age: int | None = _data("age", int)
    region: str | None = _data("region", str)
    city: str | None = _data("city", str)
    country: str | None = _data("country", str)
    language: str | None = _data("language", str)
    signup_at: datetime | None = _data("signup_at", datetime, convert=datetime.fromisoformat)


@strawberry.type(description="order_placed")
class OrderPlaced(Event):
    order_id: str | None = _data("order_id", str)
    amount: Decimal | None = _data("amount", Decimal, "Exact, as a decimal string", _money)
    currency: str | None = _data("currency", str, "ISO 4217")
    items: list[OrderItem] | None = _data("items", list[OrderItem], convert=_items)
    channel: str | None = _data("channel", str)


@strawberry.type(description="order_refunded")
class OrderRefunded(Event):
    order_id: str | None = _data("order_id", str)
    amount: Decimal | None = _data("amount", Decimal, "Exact, as a decimal string", _money)


@strawberry.type(description="page_viewed")
class PageViewed(Event):
    url: str | None = _data("url", str)
    category: str | None = _data("category", str)
    duration_s: float | None = _data("duration_s", float)
    session_id: str | None = _data("session_id", str)
    referrer: str | None = _data("referrer", str)


@strawberry.type(description="searched")
class Searched(Event):
    query: str | None = _data("query", str)
    session_id: str | None = _data("session_id", str)


@strawberry.type(description="product_viewed")
class ProductViewed(Event):
    sku: str | None = _data("sku", str)
    category: str | None = _data("category", str)
    session_id: str | None = _data("session_id", str)


@strawberry.type(description="cart_updated: a quantity added (or taken out, negative)")
class CartUpdated(Event):
    sku: str | None = _data("sku", str)
    qty: int | None = _data("qty", int)


@strawberry.type(description="social_interaction")
class SocialInteraction(Event):
    action: str | None = _data("action", str, "like, share, comment, follow or message")
    target: str | None = _data("target", str)
    category: str | None = _data("category", str)


@strawberry.type(description="app_session")
class AppSession(Event):
    session_id: str | None = _data("session_id", str)
    minutes: float | None = _data("minutes", float)
    features_used: list[str] | None = _data("features_used", list[str])
    platform: str | None = _data("platform", str)


@strawberry.type(description="review_posted")
class ReviewPosted(Event):
    sku: str | None = _data("sku", str)
    rating: int | None = _data("rating", int, "1 to 5")
    text_length: int | None = _data("text_length", int)


@strawberry.type(description="identity_linked: the other identifier is hashed on arrival and is never returned")
class IdentityLinked(Event):
    pass


@strawberry.type(description="consent_changed")
class ConsentChanged(Event):
    purpose: str | None = _data("purpose", str, "analytics, marketing or personalization")
    granted: bool | None = _data("granted", bool)


@strawberry.type(description="An event of a type without a type of its own here: the log's markers"
                             " (profiles_merged, profiles_unmerged) and types this release does not know")
class OtherEvent(Event):
    pass


EVENT_CLASSES: dict[str, type[Event]] = {
    "profile_updated": ProfileUpdated, "order_placed": OrderPlaced, "order_refunded": OrderRefunded,
    "page_viewed": PageViewed, "searched": Searched, "product_viewed": ProductViewed, "cart_updated": CartUpdated,
    "social_interaction": SocialInteraction, "app_session": AppSession, "review_posted": ReviewPosted,
    "identity_linked": IdentityLinked, "consent_changed": ConsentChanged,
}


def event_node(event: RecordedEvent) -> Event:
    """The API's object for a recorded event: its type's own, or OtherEvent."""
    return EVENT_CLASSES.get(event.type, OtherEvent)(_event=event)
