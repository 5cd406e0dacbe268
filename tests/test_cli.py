from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import orjson
import pytest
from click.testing import CliRunner, Result

from persona.cli import cli
from tests.conftest import jsonl, record


def run(data: Path, *args: str, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["--data", str(data), *args], input=input, catch_exceptions=False)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    assert run(folder, "init").exit_code == 0
    return folder


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(jsonl(
        record("ann@example.com", event_id="1"),
        record("ann@example.com", "order_placed", {"order_id": "o1", "amount": "5", "currency": "USD"}, event_id="2"),
        record("ben@example.com", event_id="3"),
        b"{broken",
    ))
    return path


def commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    """Every command and subcommand (the top-level ones are imported when looked up: persona.cli)."""
    out = []
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        assert command is not None
        out.append((prefix + name, command))
        if isinstance(command, click.Group):
            out.extend(commands(command, prefix + name + " "))
    return out


def test_every_command_is_documented() -> None:
    found = commands(cli)
    assert {name for name, _ in found} >= {
        "init", "ingest", "profile", "history", "erase", "receipt verify", "keys public", "keys rotate",
        "backup", "restore", "verify", "quarantine", "rebuild", "profiles", "stats",
    }
    for name, command in found:
        assert command.help and len(command.help.strip()) > 20, f"`persona {name}` has no help text"
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"`persona {name} {param.opts[0]}` has no help text"


def test_ingest_json_report_and_idempotency(data: Path, events_file: Path) -> None:
    first = run(data, "ingest", str(events_file), "--json")
    report = json.loads(first.output)
    assert (report["appended"], report["duplicates"], report["quarantined"]) == (3, 0, 1)
    again = json.loads(run(data, "ingest", str(events_file), "--json").output)
    assert (again["appended"], again["duplicates"]) == (0, 3)
    human = run(data, "ingest", str(events_file))
    assert ("4 input lines read → 0 events appended, 3 duplicate events skipped (already in the log),"
            " 1 lines quarantined; 0 new profiles") in human.output
    assert {"lines", "appended", "duplicates", "quarantined", "blank", "profiles_created"} <= set(again)


def test_ingest_from_stdin(data: Path) -> None:
    result = run(data, "ingest", "-", "--json", input=jsonl(record(event_id="s1")))
    assert json.loads(result.output)["appended"] == 1


def test_profile_and_history(data: Path, events_file: Path) -> None:
    run(data, "ingest", str(events_file))
    shown = json.loads(run(data, "profile", "--subject", "email:Ann@Example.com", "--json").output)
    assert shown["version"] == 2 and shown["events"] == 2 and shown["id"].startswith("prf_")
    assert shown["identities"][0]["namespace"] == "email" and "ann" not in json.dumps(shown)
    by_id = run(data, "profile", "--profile", shown["id"])
    assert "version 2, 2 events" in by_id.output
    lines = run(data, "history", "--profile", shown["id"], "--json").output.splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["page_viewed", "order_placed"]
    missing = run(data, "profile", "--subject", "email:nobody@example.com")
    assert missing.exit_code != 0 and "no profile" in missing.output


def test_erase_receipt_verify_and_public_key(data: Path, events_file: Path, tmp_path: Path) -> None:
    run(data, "ingest", str(events_file))
    receipt_file = tmp_path / "receipt.json"
    erased = run(data, "erase", "--subject", "email:ann@example.com", "--receipt", str(receipt_file))
    assert erased.exit_code == 0 and "erased prf_" in erased.output
    public = run(data, "keys", "public").output.strip()
    key_file = tmp_path / "signer.pub"
    key_file.write_text(public)
    ok = CliRunner().invoke(cli, ["receipt", "verify", str(receipt_file), "--public-key", f"@{key_file}"])
    assert ok.exit_code == 0 and "valid" in ok.output
    doc = json.loads(receipt_file.read_text())
    doc["receipt"]["profile_id"] = "prf_someoneelse"
    receipt_file.write_text(json.dumps(doc))
    bad = CliRunner().invoke(cli, ["receipt", "verify", str(receipt_file), "--public-key", public])
    assert bad.exit_code == 1 and "altered or forged" in bad.output
    gone = run(data, "profile", "--subject", "email:ann@example.com")
    assert gone.exit_code != 0


def test_keys_rotate_backup_restore_verify(data: Path, events_file: Path, tmp_path: Path) -> None:
    run(data, "ingest", str(events_file))
    backup = tmp_path / "b.db"
    assert "2 live profiles" in run(data, "backup", str(backup)).output
    run(data, "erase", "--subject", "email:ben@example.com")
    assert "version 2" in run(data, "keys", "rotate").output
    restored = run(data, "restore", str(backup), "--yes")
    assert "re-applied 1 later erasure" in restored.output
    verified = run(data, "verify")
    assert verified.exit_code == 0 and "3 events in 2 streams" in verified.output
    assert run(data, "profile", "--subject", "email:ben@example.com").exit_code != 0


def test_quarantine_listing(data: Path, events_file: Path) -> None:
    run(data, "ingest", str(events_file))
    rows = json.loads(run(data, "quarantine", "--json").output)
    assert [(r["line"], r["reason"]) for r in rows] == [(4, "record: not valid JSON")]
    assert "not valid JSON" in run(data, "quarantine").output


def test_errors_are_one_clean_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--data", str(tmp_path / "none"), "verify"])
    assert result.exit_code == 1
    assert "error:" in result.output and "Traceback" not in result.output
    usage = CliRunner().invoke(cli, ["--data", str(tmp_path), "profile"])
    assert usage.exit_code == 2 and "exactly one of" in usage.output


def test_console_script_runs_as_a_real_process(tmp_path: Path, events_file: Path) -> None:
    exe = Path(sys.executable).with_name("persona")
    env = {**os.environ, "PERSONA_DATA": str(tmp_path / "d")}
    subprocess.run([exe, "init"], check=True, env=env, capture_output=True)
    out = subprocess.run([exe, "ingest", str(events_file), "--json"], check=True, env=env, capture_output=True)
    assert json.loads(out.stdout)["appended"] == 3
    assert b"Traceback" not in out.stderr


def test_ingest_leaves_rfm_scores_and_segments_current_without_a_rebuild(tmp_path: Path) -> None:
    """The real command: `persona ingest` scores RFM at its end, so `profiles` and `stats` show
    the scores and segments at once, and the next ingest's orders move them."""
    exe = Path(sys.executable).with_name("persona")
    env = {**os.environ, "PERSONA_DATA": str(tmp_path / "d")}
    today = datetime.now(UTC)

    def orders(name: str, count: int, days_ago: int, amount: int) -> list[dict[str, Any]]:
        return [record(f"{name}@example.com", "order_placed", {"order_id": f"{name}-{days_ago}-{k}",
                                                               "amount": str(amount), "currency": "EUR"},
                       source="shop", occurred_at=(today - timedelta(days=days_ago + 40 * k)).isoformat())
                for k in range(count)]

    def persona(*args: str) -> str:
        done = subprocess.run([exe, *args], env=env, capture_output=True, text=True)
        assert done.returncode == 0 and "Traceback" not in done.stderr, (args[0], done.returncode, done.stderr[-2000:])
        return done.stdout

    def listed() -> dict[str, Any]:
        lines = [json.loads(line) for line in persona("profiles", "--min", "frequency=1", "--json").splitlines()]
        return {p["id"]: p for p in lines}

    def segments() -> dict[str, int]:
        return {row["rfm_segment"]: row["count"] for row in json.loads(persona("stats", "--by", "rfm_segment",
                                                                               "--json"))}

    first = tmp_path / "first.jsonl"  # five buyers: the more orders, the more recent and the more spent
    first.write_bytes(jsonl(*(row for i in range(5) for row in orders(f"c{i}", i + 1, 10 * (5 - i), 10 * (i + 1)))))
    persona("init")
    persona("ingest", str(first))
    scored = listed()
    assert len(scored) == 5 and all(p["rfm"] is not None for p in scored.values())
    best = max(scored.values(), key=lambda p: p["features"]["frequency"])
    assert best["rfm"] == {"r": 5, "f": 5, "m": 5} and "rfm:champions" in best["segments"]
    assert segments() == {"champions": 2, "needs_attention": 1, "hibernating": 2}  # c3 and c4: r ≥ 4 and f ≥ 4

    later = tmp_path / "later.jsonl"  # someone buys more, and more recently, than anyone
    later.write_bytes(jsonl(*orders("new", 9, 0, 1000)))
    persona("ingest", str(later))
    again = listed()
    assert len(again) == 6 and again[best["id"]]["rfm"] == {"r": 4, "f": 4, "m": 4}
    assert segments()["champions"] == 2 and sum(segments().values()) == 6


def test_rebuild_profiles_and_stats(data: Path, events_file: Path) -> None:
    run(data, "ingest", str(events_file))
    rebuilt = run(data, "rebuild", "--workers", "1")
    assert rebuilt.exit_code == 0 and "rebuilt 2 profiles" in rebuilt.output
    lines = [json.loads(line) for line in run(data, "profiles", "--json").output.splitlines()]
    assert sorted(p["features"]["frequency"] for p in lines) == [0, 1]
    buyers = run(data, "profiles", "--min", "frequency=1", "--json").output.splitlines()
    assert len(buyers) == 1 and json.loads(buyers[0])["rfm"] == {"r": 3, "f": 3, "m": 3}
    assert run(data, "profiles", "--min", "frequency").exit_code == 2
    table = json.loads(run(data, "stats", "--json").output)
    assert sum(row["count"] for row in table) == 2
    assert run(data, "rebuild", "--projection", "nope").exit_code == 1


def test_a_quarantined_row_is_exported_fixed_and_re_ingested(data: Path, tmp_path: Path) -> None:
    header = "order_id,email,created_at,total\n"
    orders = tmp_path / "orders.csv"
    orders.write_text(header + "Q-1,ann@example.com,2025-03-05 10:00:00,30\n"
                      "Q-2,ben@example.com,2025-03-05 11:00:00,-50\n"
                      "Q-3,cy@example.com,2025-03-05 12:00:00,12\n")
    first = json.loads(run(data, "ingest", str(orders), "--source", "shop", "--json").output)
    assert (first["appended"], first["quarantined"]) == (2, 1)
    refused = run(data, "quarantine", "--export", str(data / "inside.csv"))
    assert refused.exit_code != 0 and not (data / "inside.csv").exists()  # never opened into the data directory
    exported = tmp_path / "fix.csv"
    exported.write_text("an older file, readable by all\n")
    exported.chmod(0o644)
    done = run(data, "quarantine", "--export", str(exported), "--origin", "orders.csv")
    assert done.exit_code == 0, done.output
    assert exported.read_text() == "Q-2,ben@example.com,2025-03-05 11:00:00,-50\n"
    assert exported.stat().st_mode & 0o777 == 0o600
    fixed = tmp_path / "orders-fixed.csv"
    fixed.write_text(header + exported.read_text().replace("-50", "50"))
    again = json.loads(run(data, "ingest", str(fixed), "--source", "shop", "--json").output)
    assert (again["appended"], again["quarantined"]) == (1, 0)
    shown = run(data, "profile", "--subject", "email:ben@example.com", "--json")
    assert json.loads(shown.output)["features"]["monetary"] == 50.0


def test_a_reader_that_goes_away_ends_the_command_quietly(data: Path, tmp_path: Path) -> None:
    many = tmp_path / "many.jsonl"
    many.write_bytes(jsonl(*(record("long@example.com", event_id=f"m{i}") for i in range(3000))))
    assert run(data, "ingest", str(many)).exit_code == 0
    proc = subprocess.Popen([sys.executable, "-m", "persona", "--data", str(data), "history", "--subject",
                             "email:long@example.com", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()  # like `| head -n 1`
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 141 and err == b""  # as a Unix tool: no "error: Broken pipe"


def test_format_option(data: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.txt"
    events.write_bytes(jsonl(record("fmt@example.com", event_id="f1")))
    done = run(data, "ingest", str(events), "--format", "jsonl", "--json")
    assert json.loads(done.output)["appended"] == 1
    refused = CliRunner().invoke(cli, ["--data", str(data), "ingest", str(events), "--format", "csv"])
    assert refused.exit_code == 2 and "canonical events are JSONL" in refused.output
    clicks = tmp_path / "clicks.data"  # an extension that says nothing; the format says CSV
    clicks.write_text("cookie_id,url,ts\nck-f,https://shop.example/a,1741165200000\n")
    done = run(data, "ingest", str(clicks), "--source", "web", "--format", "csv", "--json")
    assert json.loads(done.output)["appended"] == 1


def test_backup_to_a_folder_writes_a_file_inside_it(tmp_path: Path, events_file: Path) -> None:
    exe = Path(sys.executable).with_name("persona")
    env = {**os.environ, "PERSONA_DATA": str(tmp_path / "d")}
    subprocess.run([exe, "init"], check=True, env=env, capture_output=True)
    subprocess.run([exe, "ingest", str(events_file)], check=True, env=env, capture_output=True)
    new, existing = tmp_path / "new", tmp_path / "existing"
    existing.mkdir()
    for folder, typed in ((new, str(new) + "/"), (existing, str(existing))):
        out = subprocess.run([exe, "backup", typed], check=True, env=env, capture_output=True, text=True)
        inside = list(folder.iterdir())
        assert folder.is_dir() and len(inside) == 1 and inside[0].suffix == ".db", out.stdout
        assert str(inside[0]) in out.stdout
    inside_data = subprocess.run([exe, "backup", str(tmp_path / "d" / "b") + "/"], env=env, capture_output=True,
                                 text=True)
    assert inside_data.returncode == 1 and "outside the data directory" in inside_data.stderr
    assert not (tmp_path / "d" / "b").exists()


def test_stats_by_a_list_and_unknown_names_are_refused_with_the_valid_ones(data: Path, tmp_path: Path) -> None:
    path = tmp_path / "langs.jsonl"
    path.write_bytes(jsonl(
        record("ann@example.com", "profile_updated", {"language": "en"}, event_id="1"),
        record("ann@example.com", "profile_updated", {"language": "fr"}, event_id="3", source="crm"),
        record("ben@example.com", "order_placed", {"order_id": "o1", "amount": "5", "currency": "USD",
                                                    "items": [{"sku": "s", "category": "shoes"}]}, event_id="2"),
    ))
    assert run(data, "ingest", str(path)).exit_code == 0
    for name in ("languages", "top_categories", "hour_of_day"):
        grouped = run(data, "stats", "--by", name, "--json")
        assert grouped.exit_code == 0, grouped.output
        assert sum(row["count"] for row in json.loads(grouped.output)) == 2
    assert "languages=en,fr  count=1" in run(data, "stats", "--by", "languages").output
    for args in (("stats", "--by", "nope"), ("stats", "--by", "category_affinity"), ("profiles", "--min", "nope=1"),
                 ("profiles", "--max", "lifecycle_stage=1")):
        refused = CliRunner().invoke(cli, ["--data", str(data), *args])
        assert refused.exit_code == 2 and "Traceback" not in refused.output
        assert "use one of" in refused.output and "frequency" in refused.output, refused.output
    assert "orders" in run(data, "profiles").output and "spent" in run(data, "profiles").output
    buyers = run(data, "profiles", "--min", "orders=1", "--max", "spent=5", "--json").output.splitlines()
    assert len(buyers) == 1 and json.loads(buyers[0])["features"]["frequency"] == 1
    assert run(data, "stats", "--by", "stage", "--json").exit_code == 0


def test_profiles_say_how_many_more_and_how_to_page_and_empty_stores_say_so(tmp_path: Path,
                                                                            events_file: Path) -> None:
    exe = Path(sys.executable).with_name("persona")
    env = {**os.environ, "PERSONA_DATA": str(tmp_path / "d")}

    def persona(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], check=True, env=env, capture_output=True, text=True)

    persona("init")
    for command in ("profiles", "stats"):
        empty = persona(command)
        assert empty.stdout == "" and "no profiles in the index" in empty.stderr
    assert persona("stats", "--json").stdout.strip() == "[]"
    persona("ingest", str(events_file))
    first = persona("profiles", "--first", "1")
    shown = first.stdout.split()[0]
    assert f"1 more; the next page: persona profiles --after {shown}" in first.stderr
    rest = persona("profiles", "--first", "1", "--after", shown)
    assert rest.stdout and rest.stdout.split()[0] != shown and "more" not in rest.stderr
    assert "no profiles match" in persona("profiles", "--min", "frequency=99").stderr
    assert persona("profiles", "--first", "1", "--json").stderr == ""


def test_data_errors_name_the_path_and_a_key_file_path_hints_at_at_file(tmp_path: Path, data: Path,
                                                                       events_file: Path) -> None:
    typo, a_file = tmp_path / "typo", tmp_path / "plain"
    a_file.write_text("x")
    for where, says in ((typo, "no such directory"), (a_file, "is a file"), (tmp_path, "no persona store")):
        result = CliRunner().invoke(cli, ["--data", str(where), "verify"])
        assert result.exit_code == 1 and str(where) in result.output and says in result.output, result.output
    assert not typo.exists()  # a mistyped --data is not created on the way to the error
    (tmp_path / "nokey").mkdir()
    assert run(tmp_path / "nokey", "init").exit_code == 0
    (tmp_path / "nokey" / "persona.key").unlink()
    lost = CliRunner().invoke(cli, ["--data", str(tmp_path / "nokey"), "verify"])
    assert lost.exit_code == 1 and str(tmp_path / "nokey" / "persona.key") in lost.output
    run(data, "ingest", str(events_file))
    receipt_file, key_file = tmp_path / "receipt.json", tmp_path / "signer.pub"
    run(data, "erase", "--subject", "email:ann@example.com", "--receipt", str(receipt_file))
    key_file.write_text(run(data, "keys", "public").output.strip())
    hinted = CliRunner().invoke(cli, ["receipt", "verify", str(receipt_file), "--public-key", str(key_file)])
    assert hinted.exit_code == 2 and f"@{key_file}" in hinted.output


def test_link_says_whether_unlink_can_undo_it(data: Path, events_file: Path) -> None:
    run(data, "ingest", str(events_file))
    merged = run(data, "link", "email:ann@example.com", "email:ben@example.com")
    assert "merged into" in merged.output and "`persona unlink` undoes it" in merged.output
    assert "1 merge(s) undone" in run(data, "unlink", "email:ann@example.com", "email:ben@example.com").output
    joined = run(data, "link", "email:ann@example.com", "email:new@example.com")
    assert "the new identifier with a profile of its own (`persona unlink` undoes it)" in joined.output
    again = run(data, "link", "email:new@example.com", "email:ann@example.com")
    assert "already one person" in again.output and "no merge made" in again.output
    assert "1 merge(s) undone" in run(data, "unlink", "email:ann@example.com", "email:new@example.com").output
    refused = CliRunner().invoke(cli, ["--data", str(data), "unlink", "email:ann@example.com",
                                       "email:new@example.com"])
    assert refused.exit_code == 1 and "different people" in refused.output
    assert "Traceback" not in refused.output and "new@example.com" not in refused.output


# Libraries that take long to import, each loaded only by the commands that use it (numpy is not
# listed: the SQLite store's sqlite_utils imports it whenever it is installed)
HEAVY = ("sklearn", "skops", "scipy", "strawberry", "graphql", "starlette", "uvicorn", "pyarrow", "polars",
         "psycopg", "opendp", "pandas")


def test_a_command_that_trains_nothing_loads_no_machine_learning_library() -> None:
    """scikit-learn and skops take seconds to import: `persona profiles` or `persona ingest` must not
    pay for them (they once took 6 of every command's 6.5 s of start-up); `persona train` does. Nor
    does any command load the API's libraries (strawberry, uvicorn) or PostgreSQL's driver but those
    that use them; and the CLI itself, before a command runs, loads no store at all."""
    probe = ("import sys; from persona.cli import cli; print(sorted(m for m in {heavy} if m in sys.modules));"
             " from persona.cli import {modules}; print(sorted(m for m in {heavy} if m in sys.modules))")
    modules = "common, erasure, ingest, models, people, serve, store"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", probe.format(heavy=(*HEAVY, "sqlite_utils"), modules=modules)],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0 and done.stdout.split("\n")[0] == "[]", done.stdout + done.stderr
    done = subprocess.run([sys.executable, "-c", probe.format(heavy=HEAVY, modules=modules)],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0 and done.stdout.split() == ["[]", "[]"], done.stdout + done.stderr
    train = subprocess.run([sys.executable, "-m", "persona", "train", "--help"], capture_output=True, text=True,
                           timeout=120, cwd=root)
    assert train.returncode == 0 and "--horizon" in train.stdout


def test_persona_version_starts_in_well_under_a_second() -> None:
    """`persona --help` and `--version` import no command's module (they took 2-3 s once, then
    0.6 s): the import of persona.cli, as `python -X importtime` measures it in the run itself,
    stays far below 1.5 s even on a loaded machine (about 50 ms on an idle one)."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "persona", "--version"], capture_output=True,
                          text=True, timeout=120, cwd=root)
    assert done.returncode == 0 and done.stdout.strip() == "persona, version 0.1.0", done.stdout + done.stderr
    cumulative = [int(line.split("|")[1]) for line in done.stderr.splitlines()
                  if line.startswith("import time:") and line.split("|")[2].strip() == "persona.cli"]
    assert len(cumulative) == 1, done.stderr[-2000:]
    assert cumulative[0] < 1_500_000, f"importing persona.cli took {cumulative[0] / 1e6:.2f} s"


def test_ingesting_a_small_jsonl_file_loads_no_heavy_library(tmp_path: Path) -> None:
    """`persona ingest` of a few canonical events starts in about 0.3 s: opening an existing store
    loads neither sqlite-utils nor NumPy (only making a table does), and a JSONL file never loads the
    mapping language. Checked on what the real run imported (`python -X importtime`)."""
    root = Path(__file__).resolve().parent.parent
    data = tmp_path / "data"
    assert CliRunner().invoke(cli, ["--data", str(data), "init"]).exit_code == 0
    events = tmp_path / "one.jsonl"
    events.write_bytes(orjson.dumps({"source": "web", "type": "page_viewed", "occurred_at": "2026-03-01T10:00:00Z",
                                     "event_id": "w-1", "subject": {"namespace": "cookie", "value": "c-1"},
                                     "data": {"url": "https://shop.example/"}}) + b"\n")
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "persona", "--data", str(data), "ingest",
                           str(events)], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0 and "1 events appended" in done.stdout, done.stdout + done.stderr[-2000:]
    loaded = {line.split("|")[2].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "persona.ingest.engine" in loaded, "the positive control: the run's imports are seen"
    heavy = sorted(m for m in loaded if m.split(".")[0] in (*HEAVY, "numpy", "sqlite_utils")
                   or m.startswith("persona.ingest.mapping"))
    assert heavy == [], heavy


def test_the_command_list_says_what_each_command_says_of_itself() -> None:
    """`persona --help` lists the commands from persona.cli.COMMANDS without importing them: each
    entry names the command it loads, and its summary is the first paragraph of that command's help."""
    from persona.cli import COMMANDS

    context = click.Context(cli)
    for name, entry in COMMANDS.items():
        command = cli.get_command(context, name)
        assert command is not None and command.name == name
        first = inspect.cleandoc(command.help or "").split("\n\n")[0]
        assert entry.summary == " ".join(first.split()), name
    assert cli.get_command(context, "no-such-command") is None
