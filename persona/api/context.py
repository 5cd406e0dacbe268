"""The server's state (one per worker process) and each request's context.

Threads: the event loop's thread owns one open store for quick reads (a profile, a
history page). Writes — ingest, erasure, audit batches, privacy-budget charges — go
to one writer thread with its own store, and longer reads (listing pages, replays,
time-filtered history) to two scanner threads, so that neither a write waiting for
SQLite's lock nor a replay stalls the event loop. Population scans (insights, filtered
listings) go through a gate to processes of their own (persona.api.scans).
The physical purge after erasures (persona.purge: on PostgreSQL one VACUUM per window)
runs on a thread of its own, never the writer's. RFM scores rank the whole population: after
ingestEvents appended something they are computed again on the writer thread, at most every
RFM_EVERY_S (persona.rfm), not per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from graphql import FragmentDefinitionNode, GraphQLSchema, OperationDefinitionNode, OperationType

from persona import destinations, memberships
from persona.api.access import RateLimiter, TokenCache
from persona.api.answers import AnswerCache
from persona.api.data import (
    Batch,
    ProfileData,
    load_predictions,
    load_profiles,
    load_sources,
    load_updated,
)
from persona.api.errors import ApiError
from persona.api.plan import Limits, Plan, PlanCache, analyse
from persona.api.scans import ScanGate, ScanPool
from persona.audit import NO_TOKEN, AuditBuffer, shape
from persona.audit import write as write_audit
from persona.caches import forget_caches
from persona.core import Persona
from persona.feed import ChangeFeed
from persona.memberships import Membership
from persona.projector import Projector
from persona.purge import run as purge_when_due
from persona.reading import Merge, identities_of, merges_of, person_rows
from persona.rfm import RfmSchedule, compute_rfm
from persona.services.store import erasure_mark, population_size
from persona.settings import Settings
from persona.tokens import Token, prune_minted

T = TypeVar("T")
log = logging.getLogger("persona.api")
AUDIT_FLUSH_S = 0.25
REFUSALS_FLUSH_S = 5.0  # refusals are counted, and written this often (and at shutdown)
FEED_WAIT_S = 1.0  # the change feed's longest wait: how late a missed notification can be
AUDIT_BACKLOG = 50_000  # unwritten audit entries at which reads of people are refused
PURGE_RETRY_S = 10.0  # after a purge that could not finish (an old snapshot, a lock)


class Worker:
    """Threads with a store each; `run(fn, ...)` calls fn(persona, ...) on one of them.

    `forget()` asks every thread to drop its cached keys (after an erasure): each does so
    itself, before its next job and again after a job that was running meanwhile — a
    store is only ever touched by its own thread.
    """

    def __init__(self, settings: Settings, name: str, threads: int = 1) -> None:
        self._settings = settings
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"persona-{name}")
        self._opened: list[Persona] = []
        self._lock = threading.Lock()
        self._generation = 0  # bumped by forget(); each thread compares it with the one it last saw

    def _persona(self) -> Persona:
        persona = getattr(self._local, "persona", None)
        if persona is None:
            persona = self._local.persona = Persona.open(self._settings)
            self._local.generation = self._generation
            with self._lock:
                self._opened.append(persona)
        return persona

    def _forget_if_asked(self, persona: Persona) -> None:
        if self._local.generation != self._generation:
            self._local.generation = self._generation
            persona.log.forget_cached_keys()

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        persona = self._persona()
        self._forget_if_asked(persona)
        try:
            return fn(persona, *args)
        finally:
            self._forget_if_asked(persona)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn, args)

    def forget(self) -> None:
        self._generation += 1

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for persona in self._opened:
                persona.close()
            self._opened.clear()


# A token minted for one person (persona.tokens.mint_token) runs these root fields only, on them
BOUND_ROOTS = {OperationType.QUERY: frozenset({"profile"}),
               OperationType.SUBSCRIPTION: frozenset({"profileUpdated"})}
BOUND_ONLY = ("a token minted for one person reads only that person's profile (query profile, subscription"
              " profileUpdated)")


def bound_may_run(plan: Plan) -> bool:
    """Whether a token bound to one person may run this operation at all (its resolvers then check
    that the profile asked for is that person's)."""
    return plan.kind is not None and set(plan.roots) <= BOUND_ROOTS.get(plan.kind, frozenset())


PRUNE_TOKENS_S = 3600.0  # how often a server deletes the minted tokens long expired
DELIVERY_POLL_S = 1.0  # webhook deliveries: a pass at least this often
ANYONE = ""  # what a watcher of every profile's changes watches (no profile id is empty)


class ChangeBus:
    """Wakes subscriptions when a profile changes: in this process at once, and in any other
    (the CLI, another worker, another machine) through the change feed (LISTEN/NOTIFY on
    PostgreSQL, polling on SQLite). Subscriptions also poll, in case both miss it."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def watch(self, profile_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(profile_id, set()).add(event)
        return event

    def unwatch(self, profile_id: str, event: asyncio.Event) -> None:
        waiting = self._waiters.get(profile_id)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiters[profile_id]

    def changed(self, profile_ids: set[str] | list[str]) -> None:
        for profile_id in profile_ids:
            for event in self._waiters.get(profile_id, ()):
                event.set()
        if profile_ids:
            for event in self._waiters.get(ANYONE, ()):
                event.set()


@dataclass
class ServerOptions:
    limits: Limits = field(default_factory=Limits)
    k_anonymity: int = 5  # insight groups with fewer people are suppressed
    max_request_bytes: int = 1 << 20
    max_ingest_events: int = 1_000  # per ingestEvents call
    subscription_poll_s: float = 1.0
    purge_poll_s: float = 30.0  # how often the server looks for a purge to run (at most the purge window)
    max_subscriptions_per_token: int = 50  # open at once, over every connection of this worker
    unauthenticated_rate: float = 20.0  # requests per second from one address without a valid token
    scan_processes: int = 2  # population scans running at once (each in a process of its own)
    scans_per_token: int = 1  # of them, one token's
    scan_queue: int = 16  # scans waiting for a process, every token's; one more is refused (BUSY)
    scan_queue_per_token: int = 4  # of them, one token's; one more is refused (RATE_LIMITED)
    population_every_s: float = 5.0  # how often the population a scan is priced by is counted again
    dev: bool = False
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call /graphql (none: no CORS at all)


class ApiState:
    """Everything a worker process shares between requests."""

    def __init__(self, settings: Settings, schema: GraphQLSchema, options: ServerOptions) -> None:
        self.settings = settings
        self.options = options
        self.persona = Persona.open(settings)  # the event loop's own store, for quick reads
        self.projector = Projector(self.persona)
        self.tokens = TokenCache(self.persona)
        self.limiter = RateLimiter()  # per token
        self.strangers = RateLimiter()  # per client address, for requests without a valid token
        self.plans = PlanCache(schema, options.limits)
        self.audit = AuditBuffer()
        self.answers = AnswerCache(self.persona.keyring.derived("answer-etag"), settings.answer_cache_mb << 20,
                                   settings.answer_cache_s)
        self.bus = ChangeBus()
        self.subscriptions: dict[str, int] = {}  # token name -> subscriptions open now
        self.writer = Worker(settings, "writer")
        self.scanner = Worker(settings, "scanner", threads=2)
        self.scans = ScanPool(settings, options.scan_processes)
        self.gate = ScanGate(options.scan_processes, options.scans_per_token, options.scan_queue,
                             options.scan_queue_per_token)
        self.population = population_size(self.persona)  # what a scan is priced by (plan.scan_cost)
        self._counted = 0.0  # when the population was last counted (the loop's clock)
        self._refusals_written = 0.0
        self.purger = Worker(settings, "purge")
        self.sweeper = Worker(settings, "segments")  # sweeps of live segments: never in the writer's way
        self._sweeping: asyncio.Task[None] | None = None
        self.courier = Worker(settings, "deliveries")  # webhooks: their POSTs wait on the network, not the writer
        self.eraser = Worker(settings, "erasure")  # erasures send deletion notices before signing their receipt
        self._delivering: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._audit_writes: set[asyncio.Future[None]] = set()  # flushes' writes under way
        self._purging: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._feed_persona = Persona.open(settings)  # the feed's own connection (it blocks, waiting)
        self._feed = ChangeFeed.of(self._feed_persona)
        self._feed_thread = ThreadPoolExecutor(1, thread_name_prefix="persona-feed")
        self._feed_wait: Future[set[str]] | None = None
        self._erasures = erasure_mark(self.persona)
        self.rfm = RfmSchedule()  # ingestEvents marks it; the flusher's loop scores when due

    async def start(self) -> None:
        # Everything loaded so far (the schema, libraries, caches) lives as long as the
        # process: moved out of the collector's sight, so that a full collection walks only
        # what requests allocate. Measured with wrk (16 connections, profile query): p99
        # 7.1–7.7 ms with this, 28.7–34.5 ms without, at the same throughput.
        gc.collect()
        gc.freeze()
        self._counted = asyncio.get_running_loop().time()  # counted just now, when the state was made
        self._flusher = asyncio.create_task(self._flush_audit_forever())
        self._follower = asyncio.create_task(self._follow_forever())
        self._purging = asyncio.create_task(self._purge_forever())
        self._sweeping = asyncio.create_task(self._sweep_forever())
        self._delivering = asyncio.create_task(self._deliver_forever())

    async def _follow_forever(self) -> None:
        """Wake the subscriptions of every profile another process appended to."""
        while True:
            try:
                self._feed_wait = self._feed_thread.submit(self._feed.changed_people, FEED_WAIT_S)
                changed = await asyncio.wrap_future(self._feed_wait)
            except Exception as e:  # the database is unreachable: said, and tried again
                log.warning("the change feed failed (%s); retrying", type(e).__name__)
                await asyncio.sleep(FEED_WAIT_S)
                continue
            if changed:
                self.bus.changed(changed)

    async def _purge_forever(self) -> None:
        """Run the physical purge when it falls due, on the purge thread: the writer never waits
        for it. Every worker process looks; one purges (the others find it running, or done)."""
        while True:
            wait = min(self.options.purge_poll_s, self.settings.purge_window_s)  # sees other processes' erasures
            try:
                outcome = await self.purger.run(purge_when_due)
                if outcome.why is not None:  # another process is purging, or this one could not finish
                    if outcome.ran:
                        log.warning("the purge could not finish (%s); retrying", outcome.why)
                    wait = min(wait, PURGE_RETRY_S)
                elif outcome.due is not None:  # sleep until it falls due, looking meanwhile as usual
                    wait = min(wait, max(outcome.due / 1e6 - time.time(), 0.0))
            except Exception as e:  # the database is unreachable: said, and tried again
                log.warning("the purge failed (%s); retrying", type(e).__name__)
            await asyncio.sleep(wait)

    async def _sweep_forever(self) -> None:
        """Every PERSONA_SEGMENT_SWEEP seconds, the live segments the clock moves are swept
        (persona.memberships): who entered or left with no event is found, noted and announced.
        Hourly, on the same thread, the minted tokens expired a day ago are deleted."""
        loop = asyncio.get_running_loop()
        pruned = loop.time()
        while True:
            await asyncio.sleep(self.settings.segment_sweep_s)
            try:
                swept = await self.sweeper.run(memberships.sweep_if_due, self.settings.segment_sweep_s)
                if loop.time() - pruned >= PRUNE_TOKENS_S:
                    pruned = loop.time()
                    await self.sweeper.run(prune_minted)
            except Exception as e:  # the database is unreachable: said, and tried again
                log.warning("the segment sweep failed (%s); retrying", type(e).__name__)
                continue
            if swept is not None and (swept.entered or swept.left):
                self.bus.changed([ANYONE])

    async def _deliver_forever(self) -> None:
        """Webhook deliveries (persona.destinations): a pass whenever a profile changes, and at
        least every DELIVERY_POLL_S (retries fall due, other processes change segments)."""
        while True:
            wake = self.bus.watch(ANYONE)
            try:
                await asyncio.wait_for(wake.wait(), timeout=DELIVERY_POLL_S)
            except TimeoutError:
                pass
            finally:
                self.bus.unwatch(ANYONE, wake)
            try:
                if not destinations.any_defined(self.persona):  # a glance from the loop's own connection:
                    continue  # the courier's thread opens the store only once there is a destination
                await self.courier.run(destinations.deliver)
            except Exception as e:  # the database is unreachable: said, and tried again
                log.warning("the webhook deliveries failed (%s); retrying", type(e).__name__)
                await asyncio.sleep(DELIVERY_POLL_S)

    async def flush_audit(self, *, refusals: bool = True) -> None:
        rows = self.audit.take(refusals=refusals)
        if not rows:
            return
        writing = asyncio.ensure_future(self.writer.run(write_audit, rows))

        def kept(job: asyncio.Future[None]) -> None:
            if job.cancelled() or job.exception() is not None:
                self.audit.put_back(rows)  # kept for the next try; never dropped

        writing.add_done_callback(kept)
        self._audit_writes.add(writing)
        writing.add_done_callback(self._audit_writes.discard)
        # Shielded: a flush cancelled at shutdown while its write waits behind another job on the
        # writer thread would otherwise cancel that job before it runs, and lose its entries;
        # stop() waits for it instead.
        await asyncio.shield(writing)

    async def _flush_audit_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(AUDIT_FLUSH_S)
            now = loop.time()
            try:
                due = now - self._refusals_written >= REFUSALS_FLUSH_S
                await self.flush_audit(refusals=due)
                if due:
                    self._refusals_written = now
            except Exception as e:  # the database is busy or full: retried, and said so
                log.warning("audit log write failed (%s); retrying", type(e).__name__)
            try:
                self.forget_the_erased()
            except Exception as e:
                log.warning("checking for erasures failed (%s); retrying", type(e).__name__)
            self.answers.drop_expired()
            await self.score_rfm()
            if now - self._counted >= self.options.population_every_s:
                self._counted = now
                try:
                    self.population = await self.scanner.run(population_size)
                except Exception as e:
                    log.warning("counting the population failed (%s); retrying", type(e).__name__)

    async def score_rfm(self, *, due: bool = False) -> None:
        """Score RFM again if it is due (`due`: whatever the time, if anything changed)."""
        if not (self.rfm.due() or (due and self.rfm.pending)):
            return
        self.rfm.scoring()
        try:
            await self.writer.run(compute_rfm)
            if memberships.any_scored(self.persona):
                await self.sweeper.run(memberships.after_scoring)  # off the writer: it reads the whole index
        except Exception as e:  # the database is busy: tried again at the next tick
            self.rfm.changed()
            log.warning("scoring RFM failed (%s); retrying", type(e).__name__)

    def forget_the_erased(self) -> None:
        """After an erasure by anyone (this server, another worker, the CLI), drop every cache
        that could hold the person: decrypted states, unwrapped keys, normalised identifiers,
        plans with identifiers typed into them, kept answers. Reads never served them (each read
        checks the key, or the person's stamp), but memory should not outlive the key either."""
        mark = erasure_mark(self.persona)
        if mark == self._erasures:
            return
        self._erasures = mark
        forget_caches(self.persona, also=(self.projector.clear, self.plans.clear, self.answers.clear,
                                          self.writer.forget, self.scanner.forget, self.courier.forget,
                                          self.eraser.forget, self.sweeper.forget))

    async def stop(self) -> None:
        if self.answers.hits or self.answers.misses:
            log.info("answer cache: %d hits (%d of them revalidated, 304), %d misses", self.answers.hits,
                     self.answers.revalidated, self.answers.misses)
        for task in (self._purging, self._sweeping, self._delivering):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._audit_writes:  # a write the flusher began: done (or failed, its entries put back) first
            await asyncio.wait(list(self._audit_writes))
        try:
            await self.score_rfm(due=True)
            await self.flush_audit()
        except Exception as e:
            log.error("audit entries could not be written at shutdown (%s)", type(e).__name__)
        finally:
            self.writer.close()
            self.scanner.close()
            self.scans.close()
            self.purger.close()  # a purge running finishes first
            self.sweeper.close()
            self.courier.close()
            self.eraser.close()
            self.persona.close()
            if self._feed_wait is not None:  # a wait still running in its thread ends within FEED_WAIT_S
                futures_wait([self._feed_wait], timeout=FEED_WAIT_S + 5)
            self._feed_thread.shutdown(wait=True)
            self._feed_persona.close()


class RequestContext:
    """One request's token, plan and loaders. Loaders batch and cache per request."""

    def __init__(self, state: ApiState, token: Token | None, plan: Plan | None, raw_token: str | None = None) -> None:
        self.connection_params: object = None  # a websocket's connection_init payload
        self.client = ""  # a websocket's client address
        self.raw_token = raw_token  # kept by websockets, to notice a revocation while subscribed
        self.state = state
        self.token = token
        self.plan = plan
        self.recorded: list[tuple[str, str, str, str]] | None = None  # a list: the audit entries are kept here too
        persona, projector = state.persona, state.projector
        self.profiles: Batch[str, ProfileData | None] = Batch(
            lambda ids: load_profiles(persona, projector, ids), None)
        self.identities: Batch[str, list[dict[str, str]]] = Batch(lambda ids: identities_of(persona, ids), [])
        self.merges: Batch[str, list[Merge]] = Batch(lambda ids: merges_of(persona, ids), [])
        self.predictions: Batch[str, list[dict[str, Any]]] = Batch(lambda ids: load_predictions(persona, ids, None), [])
        self.sources: Batch[str, dict[str, Any]] = Batch(lambda ids: load_sources(projector, ids), {})
        self.updated: Batch[str, datetime | None] = Batch(lambda ids: dict(load_updated(persona, ids)), None)
        self.segments: Batch[str, list[Membership]] = Batch(lambda ids: memberships.of_many(persona, ids), [])

    def announce(self, ids: list[str]) -> None:
        """A page of profiles is about to be resolved: their lookups go in one batch each."""
        for loader in (self.identities, self.merges, self.predictions, self.sources, self.updated, self.segments):
            loader.want(ids)

    @property
    def name(self) -> str:
        """The token's name (every request that reaches a resolver has a token)."""
        assert self.token is not None
        return self.token.name

    def audit(self, operation: str, profile_id: str = "", *, fields: str | None = None, **detail: Any) -> None:
        """Record an access to a person (or to the population: no profile id), before it is
        served: if the audit log cannot be written (its backlog is full), nothing is read at
        all. `fields`: the Profile fields read (by default, those the query selects);
        `detail`: the shape of the question, never a value."""
        self.audit_ready()
        self.record(operation, profile_id, fields=fields, **detail)

    def audit_ready(self) -> None:
        """Refuses (UNAVAILABLE) while the audit log cannot keep up: for a change, before it is made."""
        if len(self.state.audit.rows) >= AUDIT_BACKLOG:
            raise ApiError("the audit log cannot be written at the moment, so nothing is served", "UNAVAILABLE")

    def record(self, operation: str, profile_id: str = "", *, fields: str | None = None, **detail: Any) -> None:
        """Record a change that was made (after audit_ready() allowed it)."""
        assert self.token is not None and self.plan is not None  # authorized before anything is read
        entry = (operation, profile_id, self.plan.profile_fields if fields is None else fields, shape(**detail))
        self.state.audit.record(self.token.name, *entry)
        if self.recorded is not None:  # for the answer cache: a hit is audited as this read was
            self.recorded.append(entry)

    def refused(self, operation: str, code: str, **detail: Any) -> None:
        """Count a refusal of this request (written with the audit log's next batch of refusals)."""
        self.state.audit.refuse(self.token.name if self.token is not None else NO_TOKEN, operation, code, detail)

    def scanning(self) -> AbstractAsyncContextManager[None]:
        """A turn for this token's population scan: waited for, or refused (RATE_LIMITED, BUSY)."""
        return self.state.gate.slot(self.name)

    async def scan(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(persona, *args) in a scan process, in this token's turn."""
        async with self.scanning():
            return await self.state.scans.run(fn, *args)

    def authorize(self, info: Any) -> RequestContext:
        """For operations that bypass the HTTP handler (websocket subscriptions): the same
        depth, cost and scope checks, made on the operation being run. A context to use."""
        raw = info._raw_info
        return self.authorize_operation(raw.operation, dict(raw.fragments))

    def authorize_operation(self, operation: OperationDefinitionNode, fragments: dict[str, FragmentDefinitionNode],
                            *, charge: bool = False) -> RequestContext:
        """Raises ApiError (with its code) if this token may not run this operation; with
        `charge`, the operation counts against the token's rate (once, when subscribing)."""
        try:
            return self._authorize_operation(operation, fragments, charge=charge)
        except ApiError as e:
            self.refused("subscribe", e.code)
            raise

    def _authorize_operation(self, operation: OperationDefinitionNode, fragments: dict[str, FragmentDefinitionNode],
                             *, charge: bool = False) -> RequestContext:
        if operation.operation is not OperationType.SUBSCRIPTION:
            raise ApiError("only subscriptions run over a websocket: send queries and mutations by HTTP POST")
        if self.token is None:
            raise ApiError('no valid token: send {"authorization": "Bearer …"} in connection_init', "UNAUTHENTICATED")
        plan = analyse(self.state.plans.schema, None, operation, self.state.options.limits, fragments=fragments)
        if plan.errors:
            raise ApiError(plan.errors[0].message, "BAD_REQUEST")
        missing = plan.scopes - self.token.scopes
        if missing:
            raise ApiError(f"the token lacks the scope(s): {', '.join(sorted(missing))}", "FORBIDDEN")
        if self.token.subject and not bound_may_run(plan):
            raise ApiError(BOUND_ONLY, "FORBIDDEN")
        if charge and self.state.limiter.allow(self.token.name, self.token.rate_per_s):
            raise ApiError("too many requests for this token; slow down", "RATE_LIMITED")
        cap = self.state.options.max_subscriptions_per_token
        if charge and self.state.subscriptions.get(self.token.name, 0) >= cap:
            raise ApiError(f"this token already has {cap} subscriptions open", "RATE_LIMITED")
        return RequestContext(self.state, self.token, plan, self.raw_token)

    def check_bound(self, person_id: str) -> None:
        """A token minted for one person reads that person only (a merged person: under the id
        they go by now): FORBIDDEN for anyone else, the same answer whether they exist or not."""
        bound = self.token.subject if self.token is not None else ""
        if not bound or bound == person_id:
            return
        row = person_rows(self.state.persona, [bound]).get(bound)
        if row is None or row.id != person_id:
            raise ApiError("this token reads only the person it was minted for", "FORBIDDEN")

    def fresh(self) -> RequestContext:
        """A context with empty loaders (a subscription's next update must not see cached data)."""
        return RequestContext(self.state, self.token, self.plan, self.raw_token)
