"""A file read the fast way (CSV parsed by polars a block at a time, fields converted a window of
rows at a time, once per distinct value) gives exactly the records the row-by-row path gives: the
same events, the same refusals with the same reasons, at the same line numbers. Checked on the
synthetic exports (every kind of dirty row they plant) and on CSV files made to trip the fast
path: quotes over several lines, a block's end inside one, carriage returns, bytes that are not
UTF-8, rows too short or too long, the marker the fast path appends written in a cell."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from persona.ingest.mapping import builtin_mapping, columnar, mapped_records, parse_mapping, readers
from persona.ingest.mapping.spec import SourceMapping
from persona.testing.exports import APP, SHOP, SOCIAL, WEB, main

SOURCES = {SHOP: "shop", SOCIAL: "social", WEB: "web", APP: "app"}
LIMIT = 64 * 1024


def both(mapping: SourceMapping, data: bytes, name: str) -> tuple[list[object], list[object]]:
    fast = list(mapped_records(mapping, io.BytesIO(data), name=name, max_bytes=LIMIT))
    slow = list(mapped_records(mapping, io.BytesIO(data), name=name, max_bytes=LIMIT, columnar=False))
    return fast, slow


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports")
    assert main(["--people", "150", "--seed", "11", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_the_synthetic_exports_map_alike_both_ways(exports: Path, name: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "BLOCK", 4096)  # many blocks, and rows cut across their ends
    monkeypatch.setattr(columnar, "WINDOW", 37)  # many windows: an order's rows across two of them
    data = (exports / name).read_bytes()
    fast, slow = both(builtin_mapping(SOURCES[name]), data, name)
    assert fast == slow
    refused = [record for record in fast if record.reason]  # type: ignore[attr-defined]
    taken = [record for record in fast if record.events]  # type: ignore[attr-defined]
    assert refused and len(taken) > 10 * len(refused)  # the comparison saw both kinds, many times


WEB_MAPPING = parse_mapping({
    "source": "web", "format": "csv",
    "events": [{"type": "page_viewed", "when": {"column": "ts"}, "subject": {"namespace": "cookie", "column": "cookie"},
                "data": {"url": {"column": "url", "required": True},
                         "duration_s": {"column": "dwell", "kind": "number"},
                         "category": {"column": "category", "map": {"elec": "electronics"}}}},
               {"type": "identity_linked", "when": {"column": "ts"},
                "subject": {"namespace": "cookie", "column": "cookie"},
                "other": {"namespace": "shop_user", "column": "user"}}],
})
HEADER = "\ufeffcookie, ts ,url,dwell,category,user\r\n"
GOOD = 'ck-{n},2024-03-0{d} 10:00:0{d},https://shop.example/{n},{n}.5,elec,u-{n}\r\n'
TRICKS = [
    "\r\n",  # blank
    "   \r\n",  # blanks only
    ",,,,,\r\n",  # every cell empty
    ",,\r\n",  # every cell empty, and too few of them: blank, not refused
    'ck-q,2024-03-01T10:00:00Z,"https://shop.example/a,b",3,"say ""hi""",u-q\r\n',  # quotes as the rules allow
    'ck-m,2024-03-01,"https://shop.example/\r\nnext line",3,elec,u-m\r\n',  # a field over two lines
    'ck-bad,2024-03-01,https://shop.example/x"y,3,elec,u-b\r\n',  # a quote inside an unquoted field
    "ck-short,2024-03-01,https://shop.example/s\r\n",  # too few columns
    "ck-long,2024-03-01,https://shop.example/l,1,elec,u-l,extra\r\n",  # too many
    "ck-mark,2024-03-01,https://shop.example/m,1,elec,u\x01\r\n",  # the fast path's marker in a cell
    "ck-x,not a time,https://shop.example/t,1,elec,u-x\r\n",  # refused by its field: read once per value
    "ck-y,not a time,https://shop.example/t,1,elec,u-y\r\n",
    "ck-z,2024-03-01,,1,elec,u-z\r\n",  # a required field missing
    "ck-n,2024-03-01,https://shop.example/n,NaN?,elec,\r\n",  # a number that is not one
]


@pytest.mark.parametrize("trick", range(len(TRICKS)))
@pytest.mark.parametrize("block", [64, 1 << 20])
def test_csv_files_made_to_trip_the_fast_path_map_alike(trick: int, block: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "BLOCK", block)
    monkeypatch.setattr(columnar, "WINDOW", 5)
    good = [GOOD.format(n=n, d=n % 9 + 1) for n in range(40)]
    text = HEADER + "".join(good[:17]) + TRICKS[trick] + "".join(good[17:])
    fast, slow = both(WEB_MAPPING, text.encode(), "clicks.csv")
    assert fast == slow
    assert sum(1 for record in fast if record.events) >= 40  # type: ignore[attr-defined]


def test_bytes_that_are_not_utf8_and_a_lone_carriage_return_map_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "BLOCK", 128)
    good = "".join(GOOD.format(n=n, d=n % 9 + 1) for n in range(30)).encode()
    for odd in (b"ck-\xff\xfe,2024-03-01,https://shop.example/u,1,elec,u\n", b"ck-r,2024-03-01,a\rb,1,elec,u\n"):
        data = HEADER.encode() + good[:500] + b"\n" + odd + good[500:]
        fast, slow = both(WEB_MAPPING, data, "clicks.csv")
        assert fast == slow
        assert any(record.reason for record in fast)  # type: ignore[attr-defined]


def test_a_headerless_file_and_another_delimiter_map_alike() -> None:
    mapping = parse_mapping({
        "source": {"name": "pos", "format": "csv", "delimiter": ";", "header": False,
                   "columns": ["card", "at", "total"]},
        "event": {"type": "order_placed"},
        "subject": {"namespace": "card", "value": {"column": "card"}},
        "fields": {"occurred_at": {"column": "at", "format": "%d/%m/%Y %H:%M"}, "event_id": "pos-{_line}",
                   "data.order_id": "pos-{_line}", "data.amount": {"column": "total", "type": "decimal"},
                   "data.currency": "EUR"},
    })
    rows = [f"c{n % 7};0{n % 9 + 1}/02/2024 1{n % 10}:00;{n},50" for n in range(50)] + ["c1;31/02/2024 10:00;3", ""]
    fast, slow = both(mapping, ("\n".join(rows) + "\n").encode(), "pos.csv")
    assert fast == slow
    assert [record.line for record in fast if record.reason] == [51]  # type: ignore[attr-defined]


def test_a_plain_file_is_parsed_by_polars_alone(exports: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the csv module read a plain file")

    monkeypatch.setattr(readers, "_classic_rows", refuse)
    records = list(mapped_records(builtin_mapping("web"), io.BytesIO((exports / WEB).read_bytes()), name=WEB))
    assert sum(1 for record in records if record.events) > 1000


FORK_AFTER_POLARS = """
import sys
from pathlib import Path
import polars
from persona import Persona
from persona.ingest import ingest_file
from persona.ingest.mapping import builtin_mapping, mapped_records
from persona.settings import Settings

polars.DataFrame({"a": list(range(100_000))}).sort("a")  # polars' threads at work in this process
persona = Persona.init(Settings.load(Path(sys.argv[1])))
with open(sys.argv[2], "rb") as handle:
    records = mapped_records(builtin_mapping("web"), handle, name="web_clicks.csv")
    report = ingest_file(persona, records, origin="web_clicks.csv", parallel=True)
print(report.appended)
"""


def test_a_reader_forked_after_polars_was_used_does_not_hang(exports: Path, tmp_path: Path) -> None:
    """polars' thread pool does not survive a fork: the forked reader then reads CSV with the csv module."""
    done = subprocess.run([sys.executable, "-c", FORK_AFTER_POLARS, str(tmp_path / "data"), str(exports / WEB)],
                          capture_output=True, text=True, timeout=120, check=True)
    assert int(done.stdout.strip()) > 1000
