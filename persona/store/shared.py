"""The methods both backends share, written once over a few primitives each backend gives:
its statements (persona.store.sql, in its syntax), how a list of values is bound (`_bind`), how
a long list is split (`_chunks`), and how a statement runs (`_all`, `_one`, `_run`, `_many`,
`_events`). What differs — DDL, transactions and locking, notifications, paging, bulk
writes — stays in each backend's module, whose docstring says why. The contract of every
method is on its protocol (persona.store.protocols)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar

from persona.errors import ConfigurationError, DuplicateEventError, StoreError
from persona.store.keyset import KeyFilter, generation_of, sealed_by
from persona.store.rows import (
    KEY_SIZE,
    ChunkRow,
    DeliveryRow,
    Head,
    LogChunk,
    MergeEdge,
    ProfileRow,
    QuarantinedRecord,
    RowTagger,
    StoredChunk,
    TokenRow,
)
from persona.store.schema import COUNTED
from persona.store.sql import Statements, privacy_charge

Row = tuple[Any, ...]
AUDIT_ROWS_AT_ONCE = 100  # audit entries per INSERT: 800 values, under any SQLite build's limit of 999


class SQLRecorder:
    """A Recorder but for what differs between the backends (the subclasses give it)."""

    sql: ClassVar[Statements]
    tagger: RowTagger | None
    _depth: int
    # the sealed generations' key filters, in generation order, as committed (None: not read yet,
    # or forgotten when a transaction rolled back: it may have sealed one that never was)
    _key_filters: list[KeyFilter] | None = None

    # -- what each backend gives -------------------------------------------------------
    def _bind(self, sql: str, params: Sequence[Any]) -> tuple[str, Sequence[Any]]:
        """The statement and parameters to run, where each list in `params` is the values of
        the next list placeholder of `sql`."""
        raise NotImplementedError

    def _chunks(self, values: Sequence[Any]) -> Iterator[list[Any]]:
        """The values in lists as long as one statement may bind (none when there are none)."""
        raise NotImplementedError

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        raise NotImplementedError

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        raise NotImplementedError

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the rows it changed."""
        raise NotImplementedError

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def _events(self, sql: str, params: Sequence[Any]) -> Iterable[StoredChunk]:
        raise NotImplementedError

    def _insert_unique(self, sql: str, params: Sequence[Any]) -> bool:
        """Insert a row; False if a unique key refused it (and the transaction goes on)."""
        raise NotImplementedError

    def _add_model_people(self, name: str, version: int, people: Sequence[str]) -> None:
        raise NotImplementedError

    def _limit(self, limit: int) -> int | None:
        """A LIMIT's value for "a negative limit reads them all"."""
        return limit

    def _outermost(self, durable: bool, concurrent: bool) -> AbstractContextManager[None]:
        """The outermost transaction: begun under the store's write lock (shared by concurrent
        ones, where the backend runs them at once), the rows it wrote tagged before it commits
        (or rolled back), `_depth` 1 inside it."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------
    @contextmanager
    def transaction(self, *, durable: bool = False, concurrent: bool = False) -> Iterator[None]:
        if self._depth:  # a nested one commits (or rolls back) with the outermost
            if durable:
                raise ConfigurationError("a durable transaction cannot nest in another")
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        try:
            with self._outermost(durable, concurrent):
                yield
        except BaseException:
            self._key_filters = None
            raise

    def in_transaction(self) -> bool:
        return self._depth > 0

    def beside_others(self) -> bool:
        return False  # (PostgreSQL's concurrent transactions are; SQLite's never)

    def _tag(self, table: str, values: Sequence[object]) -> bytes | None:
        return None if self.tagger is None else self.tagger(table, values)

    def _column(self, sql: str, values: Sequence[Any]) -> list[Any]:
        """The first column of a query with one list, over chunks of the values."""
        return [row[0] for part in self._chunks(values) for row in self._all(sql, (part,))]

    def _pairs(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, Any]]:
        return [(a, b) for part in self._chunks(values) for a, b in self._all(sql, (part,))]

    # events
    def existing_event_keys(self, keys: Sequence[bytes]) -> set[bytes]:
        keys = [bytes(key) for key in keys]
        filters = self._sealed_filters()
        found: set[bytes] = set()
        for g in range(len(filters), generation_of(self.last_position()) + 1):  # the open one(s): exactly
            found |= self.keys_in(g, keys)
        for g, key_filter in enumerate(filters):  # the sealed ones: exactly only where the filter may hold it
            found |= self.keys_in(g, [keys[n] for n in key_filter.maybe(keys)])
        return found

    def keys_in(self, generation: int, keys: Sequence[bytes]) -> set[bytes]:
        return {bytes(key) for part in self._chunks(keys)
                for (key,) in self._all(self.sql.keys_in_generation, (generation, part))}

    def key_set_problems(self, events_per_generation: Mapping[int, int]) -> list[str]:
        """What is wrong with the key set, given how many events each generation's positions hold."""
        sizes: dict[int, int] = {int(g): int(n) for g, n in self._all(self.sql.generation_sizes)}
        problems = [f"generation {g} of the key set holds {sizes.get(g, 0)} keys for {n} events"
                    for g, n in sorted(events_per_generation.items()) if sizes.get(g, 0) != n]
        problems += [f"generation {g} of the key set holds {n} keys of no event" for g, n in sorted(sizes.items())
                     if g not in events_per_generation]
        repeated = self._one(self.sql.repeated_keys)
        if repeated and repeated[0]:
            problems.append(f"{repeated[0]} event key(s) are in more than one generation of the key set")
        filters = self._all(self.sql.key_filter_rows)
        sealed = sealed_by(self.last_position())
        if [g for g, _, _ in filters] != list(range(sealed)):
            problems.append(f"the key set's sealed generations are {len(filters)} where the log has passed {sealed}"
                            " (each of 0.. with its filter)")
        for g, keys, bits in filters:
            counted = [0]
            if bytes(bits) != KeyFilter.build(self._generation_pages(g, counted)).bits or counted[0] != keys:
                problems.append(f"the filter of generation {g} of the key set does not match its keys")
        return problems

    def _sealed_filters(self) -> list[KeyFilter]:
        """The sealed generations' filters: those sealed since the last call are read (filters are
        never changed, so the ones read stay right), all of them again if the store holds fewer
        than were read (a restore of an older backup put it back in time)."""
        filters = self._key_filters if self._key_filters is not None else []
        row = self._one(self.sql.sealed_generations)
        sealed = int(row[0]) if row else 0
        if sealed < len(filters):
            filters = []
        if sealed > len(filters):
            for generation, bits in self._all(self.sql.key_filters_from, (len(filters),)):
                if generation != len(filters):  # (verify names it; a writer must not guess)
                    raise StoreError(f"the key set's filters are not numbered 0..{sealed - 1}: run `persona verify`")
                filters.append(KeyFilter(bytes(bits)))
        self._key_filters = filters
        return filters

    def _seal(self, generation: int) -> None:
        """Seal a generation the log has passed: its filter built from its keys and stored (the
        database then refuses any key into it)."""
        counted = [0]
        key_filter = KeyFilter.build(self._generation_pages(generation, counted))
        self._run(self.sql.seal_generation, (generation, counted[0], key_filter.bits))
        self._sealed_filters()

    def _generation_pages(self, generation: int, counted: list[int]) -> Iterator[bytes]:
        """A generation's keys in key order, a page at a time, each page one concatenation (a
        million keys as objects would take 100 MB); counted[0] adds up the keys."""
        after = b""
        while page := [bytes(key) for (key,) in self._all(self.sql.generation_keys, (generation, after, 65_536))]:
            counted[0] += len(page)
            after = page[-1]
            yield b"".join(page)

    def last_position(self) -> int:
        row = self._one(self.sql.last_position)
        return int(row[0]) if row else 0

    def insert_chunks(self, rows: Sequence[ChunkRow]) -> int:
        last = self.last_position()  # under the write lock: no one else appends
        start = position = last + 1
        placed = []
        for row in rows:
            placed.append((position, *row))
            position += row[2] - row[1] + 1
        if not placed:
            return start
        filters = self._sealed_filters()
        while len(filters) < sealed_by(last):  # (a store is never left so: sealing is part of an append)
            self._seal(len(filters))
        keyed = sorted((generation_of(at + n // KEY_SIZE), keys[n : n + KEY_SIZE])  # an event's key: by its position
                       for (at, *_), (*_, keys, _, _) in zip(placed, rows, strict=True)
                       for n in range(0, len(keys), KEY_SIZE))
        if len({key for _, key in keyed}) < len(keyed):  # (the database refuses it only within a generation)
            raise DuplicateEventError("an event id is in the batch twice")
        self._refuse_known(keyed, filters, generation_of(last))
        self._insert_log(keyed, placed)
        for generation in range(len(filters), sealed_by(position - 1)):
            self._seal(generation)
        return start

    def _refuse_known(self, keyed: Sequence[tuple[int, bytes]], filters: Sequence[KeyFilter],
                      open_generation: int) -> None:
        """DuplicateEventError if a key is in the log already where the database would not refuse
        it: in a sealed generation (its filter first, then exactly), or in the generation of the
        log's last event, not sealed yet, when the key goes to the next one (an append that
        crosses a generation's end)."""
        keys = [key for _, key in keyed]
        for g, key_filter in enumerate(filters):
            if self.keys_in(g, [keys[n] for n in key_filter.maybe(keys)]):
                raise DuplicateEventError("an event id is already in the log")
        later = [key for g, key in keyed if g > open_generation]
        if later and open_generation >= len(filters) and self.keys_in(open_generation, later):
            raise DuplicateEventError("an event id is already in the log")

    def _insert_log(self, keys: Sequence[tuple[int, bytes]], rows: Sequence[tuple[Any, ...]]) -> None:
        """Add the event keys ((generation, key), sorted) and the chunks (their positions given):
        DuplicateEventError if the database refuses a key, ConcurrencyError if it refuses a chunk."""
        raise NotImplementedError

    def _insert_keys(self, keys: Sequence[tuple[int, bytes]]) -> None:
        """Add event keys ((generation, key)) to the key set, as they are."""
        raise NotImplementedError

    def _key_set_from_log(self) -> int:
        """Fill an empty key set from the chunks' own key lists (bound into each chunk's seal and
        chain), then seal every generation the log has passed: upgrading a store to format 3.
        Returns how many keys it holds."""
        after, total = 0, 0
        while page := self.read_log(after, 5_000):
            keyed = sorted((generation_of(position + n // KEY_SIZE), bytes(keys[n : n + KEY_SIZE]))
                           for position, _, _, _, _, _, keys, _ in page for n in range(0, len(keys), KEY_SIZE))
            self._insert_keys(keyed)
            total += len(keyed)
            position, _, first, last, *_ = page[-1]
            after = position + last - first
        for generation in range(len(self._sealed_filters()), sealed_by(after)):
            self._seal(generation)
        return total

    def overlapping_chunks(self) -> int:
        row = self._one(self.sql.overlapping)
        return int(row[0]) if row else 0

    def read_stream(self, stream_id: str, after_version: int = 0) -> Iterator[StoredChunk]:
        yield from self._events(self.sql.read_stream, (stream_id, after_version))

    def read_streams(self, stream_numbers: Sequence[int]) -> Iterator[StoredChunk]:
        ordered = sorted(stream_numbers)
        for start in range(0, len(ordered), 500):
            yield from self._events(self.sql.read_streams, (ordered[start : start + 500],))

    def read_page(self, stream_id: str, before_version: int, limit: int) -> list[StoredChunk]:
        return list(self._events(self.sql.read_page, (stream_id, before_version, limit)))

    def read_page_across(self, stream_ids: Sequence[str], before_position: int, limit: int) -> list[StoredChunk]:
        return list(self._events(self.sql.read_across, (list(stream_ids), before_position, limit)))

    def read_all(self, after_position: int = 0, limit: int = 1000) -> list[StoredChunk]:
        return list(self._events(self.sql.read_all, (after_position, after_position, limit)))

    def read_log(self, after_position: int, limit: int) -> list[LogChunk]:
        return self._all(self.sql.read_log, (after_position, after_position, limit))

    def stream_names(self, stream_numbers: Sequence[int]) -> dict[int, str]:
        return dict(self._pairs(self.sql.stream_names, stream_numbers))

    # streams and keys
    def heads(self, stream_ids: Iterable[str], *, lock: bool = False) -> dict[str, Head]:
        # (lock: SQLite's write lock holds every stream already; PostgreSQL's rows are locked)
        return {sid: Head(no, version, bytes(head), kek, None if wrapped is None else bytes(wrapped))
                for part in self._chunks(list(stream_ids))
                for sid, no, version, head, kek, wrapped in self._all(self.sql.heads, (part,))}

    def created_at(self, stream_id: str) -> int:
        row = self._one(self.sql.created_at, (stream_id,))
        return 0 if row is None else int(row[0])

    def kek_versions_in_use(self) -> set[int]:
        return {int(v) for (v,) in self._all(self.sql.kek_versions)}

    def wrapped_keys(self) -> Iterator[tuple[str, int, bytes]]:
        for pid, kek, wrapped in self._all(self.sql.wrapped_keys):
            yield pid, kek, bytes(wrapped)

    def rewrap(self, rows: Sequence[tuple[int, bytes, str]]) -> None:
        self._many(self.sql.rewrap, rows)

    def system_key(self, name: str) -> tuple[int, bytes] | None:
        row = self._one(self.sql.system_key, (name,))
        return None if row is None else (int(row[0]), bytes(row[1]))

    def system_keys(self) -> list[tuple[str, int, bytes]]:
        return [(n, int(v), bytes(w)) for n, v, w in self._all(self.sql.system_keys)]

    def put_system_key(self, name: str, kek_version: int, wrapped: bytes) -> None:
        self._run(self.sql.put_system_key, (name, kek_version, wrapped))

    # identity links and merges
    def resolve(self, hashes: Sequence[bytes]) -> dict[bytes, str]:
        return {bytes(h): pid for h, pid in self._pairs(self.sql.resolve, hashes)}

    def insert_links(self, rows: Sequence[tuple[bytes, str, str, int]]) -> int:
        # one writer at a time (SQLite): nobody can have linked one since it was resolved
        self._many(self.sql.insert_links, [(*row, self._tag("links", row)) for row in rows])  # tagged here
        return len(rows)

    def links_of(self, profile_id: str) -> list[tuple[bytes, str]]:
        return [(bytes(h), ns) for h, ns in self._all(self.sql.links_of, (profile_id,))]

    def links_of_many(self, profile_ids: Sequence[str]) -> list[tuple[str, bytes, str]]:
        return [(pid, bytes(h), ns) for part in self._chunks(profile_ids)
                for pid, h, ns in self._all(self.sql.links_of_many, (part,))]

    def persons_of(self, profile_ids: Sequence[str]) -> dict[str, str]:
        return dict(self._pairs(self.sql.persons_of, profile_ids))

    def members_of(self, person_ids: Sequence[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for person, member in self._pairs(self.sql.members_of, person_ids):
            out.setdefault(person, []).append(member)
        return out

    def merge_edges(self, profile_ids: Sequence[str]) -> list[MergeEdge]:
        found = {row[0]: MergeEdge(row[0], row[1], row[2], bytes(row[3]), bytes(row[4]), row[5], row[6])
                 for part in self._chunks(profile_ids) for row in self._all(self.sql.merge_edges, (part, part))}
        return [found[edge] for edge in sorted(found)]

    def add_merge(self, a: str, b: str, a_hash: bytes, b_hash: bytes, at: int) -> int:
        row = self._one(self.sql.add_merge, (a, b, a_hash, b_hash, at))
        assert row is not None
        return int(row[0])

    def undo_merges(self, edges: Sequence[int], at: int) -> None:
        for part in self._chunks(edges):
            self._run(self.sql.undo_merges, (at, part))

    def set_members(self, rows: Sequence[tuple[str, str]], singles: Sequence[str]) -> None:
        self._many(self.sql.set_members, rows)
        for part in self._chunks(singles):
            self._run(self.sql.drop_members, (part,))

    def lagging_persons(self) -> list[str]:
        return [row[0] for row in self._all(self.sql.lagging)]

    def drop_derived(self, profile_ids: Sequence[str]) -> None:
        for part in self._chunks(profile_ids):
            for statement in self.sql.drop_person_rows:
                self._run(statement, (part,))

    # erasure
    def erase(self, profile_id: str, erased_at: int) -> dict[str, int]:
        sql = self.sql
        head = self._one(sql.stream_version, (profile_id,))
        events = int(head[0]) if head else 0
        hashes = [h for (h, _) in self.links_of(profile_id)]
        counts = {"events": events, "links": len(hashes), "quarantined": self.purge_tagged(hashes)}
        counts["keys"] = self._run(sql.erase_key, (profile_id,))
        self._run(sql.erase_links, (profile_id,))
        counts["merges"] = self._run(sql.erase_merges, (profile_id, profile_id))
        self._run(sql.erase_members, (profile_id,))
        counts["derived_rows"] = sum(self._run(statement, (profile_id,)) for statement in sql.erase_derived)
        self._run(sql.erase_model_people, (profile_id,))
        minted = self._run(sql.revoke_bound_tokens, (erased_at, profile_id))  # tokens minted for them
        if minted:
            counts["tokens"] = minted
        self._run(sql.write_tombstone,
                  (profile_id, erased_at, events, self._tag("tombstones", (profile_id, erased_at, events))))
        return counts

    def purge_tagged(self, hashes: Sequence[bytes]) -> int:
        ids = sorted(set(self._column(self.sql.tagged, hashes)))
        self._delete_quarantined(ids)
        return len(ids)

    def _delete_quarantined(self, ids: Sequence[int]) -> None:
        for part in self._chunks(ids):
            for statement in self.sql.delete_quarantined:
                self._run(statement, (part,))

    def tombstone(self, profile_id: str) -> int | None:
        row = self._one(self.sql.tombstone, (profile_id,))
        return None if row is None else int(row[0])

    # quarantine
    def quarantine(self, rows: Sequence[tuple[int, str, int, str, int, bytes, bytes, int]],
                   tags: Sequence[Sequence[bytes]]) -> int:
        stored = 0
        for row, row_tags in zip(rows, tags, strict=True):
            held = self._one(self.sql.held, (row[6],))
            if held is None:
                made = self._one(self.sql.hold, row)
                assert made is not None
                qid = made[0]
                stored += 1
            else:  # the same bad record, refused again: this run's reason
                qid = held[0]
                self._run(self.sql.hold_again, (row[0], row[3], row[7], qid))
            self._many(self.sql.tag_held, [(qid, tag) for tag in dict.fromkeys(row_tags)])
        return stored

    def quarantined(self) -> list[QuarantinedRecord]:
        return [QuarantinedRecord(*row) for row in self._all(self.sql.quarantined)]

    def quarantined_content(self, qid: int) -> bytes | None:
        row = self._one(self.sql.quarantined_content, (qid,))
        return None if row is None else bytes(row[0])

    def purge_quarantine(self, now: int) -> int:
        ids = [row[0] for row in self._all(self.sql.expired, (now,))]
        self._delete_quarantined(ids)
        return len(ids)

    def drop_quarantined(self, ids: Sequence[int]) -> None:
        self._delete_quarantined(sorted(set(ids)))

    # read models
    def snapshots_of(self, profile_id: str) -> dict[str, tuple[int, int, bytes]]:
        return {name: (pv, sv, bytes(payload))
                for name, pv, sv, payload in self._all(self.sql.snapshots_of, (profile_id,))}

    def snapshots_of_many(self, profile_ids: Sequence[str]) -> dict[str, dict[str, tuple[int, int, bytes]]]:
        out: dict[str, dict[str, tuple[int, int, bytes]]] = {}
        for part in self._chunks(profile_ids):
            for pid, name, pv, sv, payload in self._all(self.sql.snapshots_of_many, (part,)):
                out.setdefault(pid, {})[name] = (pv, sv, bytes(payload))
        return out

    def rfm_of(self, profile_id: str) -> dict[str, int] | None:
        row = self._one(self.sql.rfm_of, (profile_id,))
        return None if row is None else {"r": row[0], "f": row[1], "m": row[2]}

    def rfm_of_many(self, profile_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        return {pid: {"r": r, "f": f, "m": m} for part in self._chunks(profile_ids)
                for pid, r, f, m in self._all(self.sql.rfm_of_many, (part,))}

    def index_versions(self, profile_ids: Sequence[str]) -> dict[str, int]:
        return {pid: int(version) for pid, version in self._pairs(self.sql.index_versions, profile_ids)}

    def rfm_scores(self) -> dict[str, dict[str, int]]:
        return {pid: {"r": r, "f": f, "m": m} for pid, r, f, m in self._all(self.sql.rfm_scores)}

    def index_size(self) -> int:
        row = self._one(self.sql.index_size)
        return int(row[0]) if row else 0

    def index_rows(self, after: str = "", limit: int = -1) -> list[tuple[str, int, str, int | None, int | None,
                                                                     int | None]]:
        return self._all(self.sql.index_rows, (after, self._limit(limit)))

    def profile_rows(self, profile_ids: Sequence[str]) -> list[ProfileRow]:
        return [ProfileRow._make(row) for part in self._chunks(profile_ids)
                for row in self._all(self.sql.profile_rows, (part,))]

    def answer_stamps(self, profile_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        return [tuple(row) for part in self._chunks(profile_ids) for row in self._all(self.sql.answer_stamps, (part,))]

    def clear_derived(self, projection: str | None = None) -> None:
        for statement in self.sql.clear_person_rows:
            self._run(statement)
        if projection is None:
            self._run(self.sql.clear_snapshots)
        else:
            self._run(self.sql.clear_projection, (projection,))

    # live segments
    def segment_definitions(self) -> list[tuple[str, str, int, str]]:
        return [(name, rule, int(at), by) for name, rule, at, by in self._all(self.sql.segment_definitions)]

    def add_segment(self, name: str, rule: str, created_at: int, created_by: str) -> bool:
        return self._run(self.sql.add_segment, (name, rule, created_at, created_by)) == 1

    def remove_segment(self, name: str) -> bool:
        *_, removed = [self._run(statement, (name,)) for statement in self.sql.remove_segment]
        return removed == 1

    def segment_sizes(self) -> dict[str, int]:
        return {name: int(n) for name, n in self._all(self.sql.segment_sizes)}

    def memberships(self, profile_ids: Sequence[str] | None = None, *, segments: Sequence[str] | None = None
                    ) -> list[tuple[str, str, int]]:
        if profile_ids is None:
            names = [name for name, *_ in self.segment_definitions()] if segments is None else list(segments)
            return [(segment, pid, int(since)) for part in self._chunks(names)
                    for segment, pid, since in self._all(self.sql.memberships, (part,))]
        return [(segment, pid, int(since)) for part in self._chunks(profile_ids)
                for segment, pid, since in self._all(self.sql.memberships_of, (part,))]

    def segment_members(self, name: str, after: str = "", limit: int = 1000) -> list[tuple[str, int]]:
        return [(pid, int(since)) for pid, since in self._all(self.sql.segment_members, (name, after, limit))]

    def change_memberships(self, entered: Sequence[tuple[str, str]], left: Sequence[tuple[str, str]],
                           at: int) -> None:
        self._many(self.sql.leave_segment, left)
        self._many(self.sql.enter_segment, [(segment, pid, at) for segment, pid in entered])
        self._many(self.sql.note_segment_change, [(at, segment, pid, 1) for segment, pid in entered]
                   + [(at, segment, pid, 0) for segment, pid in left])

    def segment_changes(self, after: int = 0, limit: int = 1000) -> list[tuple[int, int, str, str, bool]]:
        return [(int(seq), int(at), segment, pid, bool(entered))
                for seq, at, segment, pid, entered in self._all(self.sql.segment_changes, (after, limit))]

    def segment_daily_changes(self, since: int) -> list[tuple[str, int, int, int]]:
        return [(segment, int(day), int(entered), int(left))
                for segment, day, entered, left in self._all(self.sql.segment_daily_changes, (since,))]

    def last_segment_change(self) -> int:
        row = self._one(self.sql.last_segment_change)
        return int(row[0]) if row else 0

    def prune_segment_changes(self, before: int) -> int:
        return self._run(self.sql.prune_segment_changes, (before,))

    def clear_memberships(self) -> None:
        for statement in self.sql.clear_memberships:
            self._run(statement)

    # webhook destinations
    def destination_rows(self) -> list[tuple[str, str, bytes, str, str, str, str, bytes, int, str]]:
        return [(row[0], row[1], bytes(row[2]), *row[3:7], bytes(row[7]), int(row[8]), row[9])
                for row in self._all(self.sql.destination_rows)]

    def add_destination(self, row: tuple[str, str, bytes, str, str, str, str, bytes, int, str]) -> bool:
        return self._run(self.sql.add_destination, row) == 1

    def update_destination(self, name: str, host: str, url: bytes, secret: bytes) -> bool:
        return self._run(self.sql.update_destination, (host, url, secret, name)) == 1

    def remove_destination(self, name: str) -> bool:
        *_, removed = [self._run(statement, (name,)) for statement in self.sql.remove_destination]
        return removed == 1

    def received_count(self, name: str) -> int:
        row = self._one(self.sql.received_count, (name,))
        return int(row[0]) if row else 0

    def enqueue_deliveries(self, rows: Sequence[tuple[str, str, str, str, str, int, int]]) -> None:
        self._many(self.sql.enqueue_delivery, [(*row, row[3]) for row in rows])

    def enqueue_notices(self, rows: Sequence[tuple[str, str, str, int, int]]) -> None:
        self._many(self.sql.enqueue_notice, rows)

    def due_deliveries(self, now: int, limit: int) -> list[DeliveryRow]:
        return [DeliveryRow._make(row) for row in self._all(self.sql.due_deliveries, (now, limit))]

    def lease_delivery(self, seq: int, now: int, until: int) -> int | None:
        row = self._one(self.sql.lease_delivery, (until, seq, now))
        return None if row is None else int(row[0])

    def hold_received(self, destination: str, profile_id: str, at: int) -> None:
        self._run(self.sql.hold_received, (destination, profile_id, at))

    def finish_delivery(self, seq: int, leased_until: int, status: str, attempts: int, next_at: int, outcome: str,
                        done_at: int | None) -> bool:
        return self._run(self.sql.finish_delivery,
                         (status, attempts, next_at, outcome, done_at, seq, leased_until)) == 1

    def delivery_states(self) -> list[tuple[str, str, int, int | None]]:
        return [(d, s, int(n), None if last is None else int(last))
                for d, s, n, last in self._all(self.sql.delivery_states)]

    def deliveries(self, destination: str, status: str, limit: int = 100) -> list[DeliveryRow]:
        return [DeliveryRow._make(row) for row in self._all(self.sql.deliveries_in, (destination, status, limit))]

    def deliveries_of(self, seqs: Sequence[int]) -> list[DeliveryRow]:
        return [DeliveryRow._make(row) for part in self._chunks(seqs)
                for row in self._all(self.sql.deliveries_of, (part,))]

    def erasure_notices(self, profile_ids: Sequence[str]) -> list[DeliveryRow]:
        return [DeliveryRow._make(row) for part in self._chunks(profile_ids)
                for row in self._all(self.sql.erasure_notices, (part,))]

    def requeue_dead(self, destination: str, now: int) -> int:
        return self._run(self.sql.requeue_dead, (now, destination))

    def prune_deliveries(self, before: int) -> int:
        return self._run(self.sql.prune_deliveries, (before,))

    def received_by(self, profile_ids: Sequence[str]) -> list[tuple[str, str, int, bytes | None]]:
        return [(d, pid, int(at), None if digest is None else bytes(digest)) for part in self._chunks(profile_ids)
                for d, pid, at, digest in self._all(self.sql.received_by, (part,))]

    def note_received(self, rows: Sequence[tuple[str, str, int, bytes | None]]) -> None:
        self._many(self.sql.note_received, rows)

    def forget_received(self, profile_ids: Sequence[str]) -> int:
        return sum(self._run(statement, (part,)) for part in self._chunks(profile_ids)
                   for statement in self.sql.forget_received)

    # models
    def next_model_version(self, name: str) -> int:
        row = self._one(self.sql.next_model_version, (name,))
        return int(row[0] if row else 0) + 1

    def add_model(self, name: str, version: int, created_at: int, meta: str, sha256: str, blob: bytes,
                  people: Sequence[str]) -> None:
        self._run(self.sql.add_model, (name, version, created_at, meta, sha256, blob))
        self._add_model_people(name, version, people)

    def model_rows(self, name: str | None = None
                   ) -> list[tuple[str, int, int, str, int | None, str | None, str | None, str, str]]:
        if name is None:
            return self._all(self.sql.model_rows)
        return self._all(self.sql.model_rows_of, (name,))

    def model_blob(self, name: str, version: int) -> tuple[str, bytes] | None:
        row = self._one(self.sql.model_blob, (name, version))
        return None if row is None else (str(row[0]), bytes(row[1]))

    def promote_model(self, name: str, version: int, at: int) -> None:
        self._run(self.sql.retire_model, (name,))
        self._run(self.sql.promote_model, (at, name, version))

    def set_model_status(self, name: str, version: int, status: str) -> None:
        self._run(self.sql.set_model_status, (status, name, version))

    def set_model_drift(self, name: str, version: int, drift: str) -> None:
        self._run(self.sql.set_model_drift, (drift, name, version))

    def model_meta(self) -> list[tuple[str, int, str, str | None]]:
        return self._all(self.sql.model_meta)

    def replace_model_meta(self, name: str, version: int, meta: str | None, drift: str | None) -> None:
        self._run(self.sql.replace_model_meta, (meta, drift, name, version))

    def models_trained_on(self, profile_ids: Sequence[str]) -> list[tuple[str, int]]:
        return sorted({(str(n), int(v)) for n, v in self._pairs(self.sql.trained_on, profile_ids)})

    def mark_models_stale(self, versions: Sequence[tuple[str, int]], reason: str) -> None:
        self._many(self.sql.mark_stale, [(reason, n, v) for n, v in versions])

    def put_predictions(self, rows: Sequence[tuple[str, str, int, int, str]], *, model: str | None = None,
                        tags: Sequence[bytes | None] | None = None) -> None:
        if tags is None:
            tags = [self._tag("predictions", row) for row in rows]
        elif len(tags) != len(rows):
            raise ValueError(f"{len(tags)} tags for {len(rows)} prediction rows")
        if model is not None:
            self._run(self.sql.drop_predictions, (model,))
        # tagged as inserted: not read back and tagged again at COMMIT
        self._many(self.sql.put_predictions, [(*row, tag) for row, tag in zip(rows, tags, strict=True)])

    def predictions_of(self, profile_ids: Sequence[str], model: str | None = None
                       ) -> list[tuple[str, str, int, int, str]]:
        if model is not None:
            return [row for part in self._chunks(profile_ids)
                    for row in self._all(self.sql.predictions_of_model, (model, part))]
        return [row for part in self._chunks(profile_ids) for row in self._all(self.sql.predictions_of, (part,))]

    def drop_prediction(self, profile_id: str, model: str) -> None:
        self._run(self.sql.drop_prediction, (profile_id, model))

    # access
    def put_token(self, row: tuple[str, bytes, str, int, float, float, float, str, str, str, int | None]) -> None:
        if not self._insert_unique(self.sql.put_token, row):
            raise ConfigurationError(f"a token named {row[0]!r} already exists")

    def token_by_digest(self, digest: bytes) -> TokenRow | None:
        row = self._one(self.sql.token_by_digest, (digest,))
        return None if row is None else _token(row)

    def tokens(self) -> list[TokenRow]:
        return [_token(row) for row in self._all(self.sql.tokens)]

    def prune_minted(self, before: int) -> int:
        return self._run(self.sql.prune_minted, (before,))

    def revoke_token(self, name: str, now: int) -> bool:
        return self._run(self.sql.revoke_token, (now, name)) == 1

    def spend_privacy(self, name: str, epsilon: float, delta: float) -> tuple[float, float] | None:
        row = self._one(self.sql.spend_privacy, privacy_charge(name, epsilon, delta))
        return None if row is None else (float(row[0]), float(row[1]))

    def append_audit(self, rows: Sequence[tuple[int, str, str, str, str, str, str]]) -> None:
        for start in range(0, len(rows), AUDIT_ROWS_AT_ONCE):
            part = rows[start:start + AUDIT_ROWS_AT_ONCE]
            self._run(self.sql.append_audit + ", ".join([self.sql.audit_values] * len(part)),
                      [value for row in part for value in (*row, self._tag("audit", row))])

    def audit_latest(self, *, before: int | None = None, limit: int = 50, profile_id: str | None = None
                     ) -> list[tuple[int, int, str, str, str, str, str, str]]:
        below = before if before is not None else 2**62
        if profile_id is None:
            return self._all(self.sql.audit_latest, (below, limit))
        return self._all(self.sql.audit_latest_of, (below, profile_id, limit))

    def audit_ingests(self, *, within: int, limit: int = 20) -> list[tuple[int, int, str, str, str, str, str, str]]:
        row = self._one(self.sql.audit_last)
        last = int(row[0]) if row else 0
        return self._all(self.sql.audit_ingests, (last - within, limit))

    def audit_rows(self, *, after: int = 0, limit: int = 1000, profile_id: str | None = None
                   ) -> list[tuple[int, int, str, str, str, str, str, str]]:
        if profile_id is None:
            return self._all(self.sql.audit_rows, (after, limit))
        return self._all(self.sql.audit_rows_of, (after, profile_id, limit))

    def counts(self) -> dict[str, int]:
        out = {}
        for table, statement in zip(COUNTED, self.sql.counts, strict=True):  # COUNTED's keys
            row = self._one(statement)
            out[table] = int(row[0]) if row else 0
        return out


def _token(row: Sequence[Any]) -> TokenRow:
    name, digest, *rest = row
    return TokenRow(name, bytes(digest), *rest)
