"""persona against a peer, in the same run: the `eventsourcing` library (PyPI) on SQLite with
its AES cipher on, appending and replaying the same events, next to the raw cost floor.
Prints its table; the published comparison is the one `scripts/bench` makes (its report has
both workloads), so this script writes nothing.

    scripts/bench-peer                    # 100,000 events over 2,000 people, 3 runs each, alternating
    scripts/bench-peer --events 1000000 --people 10000
    scripts/bench-peer --quick            # a smoke run (used by the tests)

The peer is configured as its documentation recommends for speed: the `cryptography`-based
`eventsourcing.cryptography:AESCipher` (about 3x faster than its default PyCryptodome one),
no compressor, a file database, and all of a batch's aggregates saved in one call (one
transaction). Each person is one aggregate; each event one domain event carrying the same
~200-byte data as persona's. Append: build and store the events (persona: resolve, seal,
chain, store). Replay: read the whole log in order and turn every stored event back into
an object (the peer: select_notifications + mapper; persona: iter_all, which opens each).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _publish import cell, machine
from bench_core import bench_append, floor, make_events, stats

ROOT = Path(__file__).resolve().parent.parent
PAGE = 5_000


_PERSON: list[Any] = []


def _person_class() -> Any:
    """The peer's aggregate: one per person (made once: the library registers classes by name)."""
    if not _PERSON:
        from eventsourcing.domain import Aggregate, event

        class Person(Aggregate):
            @event("Registered")
            def __init__(self, email: str) -> None:
                self.email = email

            @event("Viewed")
            def viewed(self, event_id: str, occurred_at: str, data: dict[str, Any]) -> None:
                pass

        _PERSON.append(Person)
    return _PERSON[0]


def peer_application(path: Path) -> tuple[Any, Any]:
    """A fresh eventsourcing application on a SQLite file, configured for speed; and its aggregate."""
    from eventsourcing.application import Application
    from eventsourcing.cryptography import AESCipher

    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.sqlite",
        "SQLITE_DBNAME": str(path),
        "CIPHER_TOPIC": "eventsourcing.cryptography:AESCipher",
        "CIPHER_KEY": AESCipher.create_key(32),
    }
    return Application(env=env), _person_class()


class Peer:
    """The peer at work: one aggregate per person, each batch saved in one call (one transaction)."""

    def __init__(self, path: Path) -> None:
        self.app, self.person_class = peer_application(path)
        self.people: dict[str, Any] = {}
        self.stored = 0  # events stored: the workload's, and one creation event per person
        self._save = getattr(self.app, "collect_events", None) or self.app.save

    def append(self, batch: list[dict[str, Any]]) -> None:
        import warnings

        touched: dict[str, Any] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            for r in batch:
                email = r["subject"]["value"]
                person = self.people.get(email)
                if person is None:
                    person = self.people[email] = self.person_class(email)
                    self.stored += 1
                person.viewed(r["event_id"], r["occurred_at"], r["data"])
                touched[email] = person
            self._save(*touched.values())
        self.stored += len(batch)

    def replay(self) -> int:
        """Read the whole log in order and turn every stored event back into an object."""
        recorder, mapper = self.app.recorder, self.app.mapper
        replayed, position = 0, 1
        while page := recorder.select_notifications(position, PAGE):
            for notification in page:
                mapper.to_domain_event(notification)
            replayed += len(page)
            position = page[-1].id + 1
        if replayed != self.stored:
            raise SystemExit(f"the peer replayed {replayed:,} events of {self.stored:,}")
        return replayed

    def close(self) -> None:
        self.app.close()


def bench_peer(records: list[dict[str, Any]], root: Path, batch: int) -> tuple[float, float, int]:
    """(append events/s, replay events/s, events stored) through eventsourcing."""
    peer = Peer(root / "peer.db")
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        peer.append(records[start : start + batch])
    append_s = time.perf_counter() - started
    started = time.perf_counter()
    replayed = peer.replay()
    replay_s = time.perf_counter() - started
    peer.close()
    return peer.stored / append_s, replayed / replay_s, peer.stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, help="ignored (kept so that every bench script takes it)")
    args = parser.parse_args()
    if args.quick:
        args.events, args.people, args.runs = 3_000, 100, 1
    try:
        import eventsourcing  # noqa: F401
    except ImportError:
        raise SystemExit("the peer is not installed: pip install -e '.[bench]' (scripts/bench-peer's"
                         " .venv has it)") from None
    from importlib.metadata import version

    records = make_events(args.events, args.people)
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "peer": f"eventsourcing {version('eventsourcing')}, cryptography {version('cryptography')}",
        "workload": {"events": args.events, "people": args.people, "batch": args.batch, "runs": args.runs},
    }
    ours: dict[str, list[float]] = {"append": [], "replay": []}
    theirs: dict[str, list[float]] = {"append": [], "replay": []}
    floors = []
    with tempfile.TemporaryDirectory(prefix="persona-bench-") as tmp:
        root = Path(tmp)
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}: floor, persona, peer…", file=sys.stderr)
            floors.append(floor(records, root))
            append_eps, replay_eps = bench_append(records, root, args.batch)
            ours["append"].append(append_eps)
            ours["replay"].append(replay_eps)
            shutil.rmtree(root / "append", ignore_errors=True)
            peer_append, peer_replay, stored = bench_peer(records, root, args.batch)
            theirs["append"].append(peer_append)
            theirs["replay"].append(peer_replay)
            print(f"  persona {append_eps:,.0f} / {replay_eps:,.0f} ev/s; peer {peer_append:,.0f} /"
                  f" {peer_replay:,.0f} ev/s", file=sys.stderr)
    results["peer_events_stored"] = stored
    results["floor"] = {k: statistics.median(f[k] for f in floors) for k in floors[0]}
    results["persona"] = {k: stats(v) for k, v in ours.items()}
    results["eventsourcing"] = {k: stats(v) for k, v in theirs.items()}
    results["ratio"] = {k: results["persona"][k]["median"] / results["eventsourcing"][k]["median"] for k in ours}
    write_report(results)


def write_report(r: dict[str, Any]) -> None:
    w, f = r["workload"], r["floor"]
    text = (
        "## Against a peer: the `eventsourcing` library\n\n"
        f"`scripts/bench-peer`: {w['events']:,} events over {w['people']:,} people (~200-byte data), batches of"
        f" {w['batch']:,}, {w['runs']} run(s), persona and the peer alternating; median (min–max), events/s.\n"
        f"Measured {r['when']} on {r['machine']}. Peer: {r['peer']}, SQLite file, its `cryptography`-based"
        " AES-GCM cipher (`eventsourcing.cryptography:AESCipher`, the faster of its two: its default is"
        " PyCryptodome's), no compressor, each batch saved in one call.\n\n"
        "| | persona | eventsourcing | persona / peer | target |\n|---|---:|---:|---:|---:|\n"
        f"| append, encrypted | {cell(r['persona']['append'], ',.0f')} | {cell(r['eventsourcing']['append'], ',.0f')} |"
        f" {r['ratio']['append']:.2f}× | ≥ 3× |\n"
        f"| replay (read + decrypt + decode, log order) | {cell(r['persona']['replay'], ',.0f')} |"
        f" {cell(r['eventsourcing']['replay'], ',.0f')} | {r['ratio']['replay']:.2f}× | ≥ 3× |\n\n"
        "The floor, in the same run (µs per event, one core): "
        f"orjson encode {f['encode_us']:.2f}, AES-GCM seal {f['seal_us']:.2f}, open {f['open_us']:.2f},"
        f" SQLite insert {f['sqlite_insert_us']:.2f}, scan {f['sqlite_scan_us']:.2f}; encode + seal + insert ="
        f" {f['naive_pipeline_eps']:,.0f} events/s.\n\n"
        "What persona does per event that the peer does not: a keyed hash of the identifier and identity"
        " resolution to a pseudonymous profile, a data key per person (the peer: one key for everything), a"
        " hash chain, and an idempotency key per event.\n"
    )
    print(text)


if __name__ == "__main__":
    main()
