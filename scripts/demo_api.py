"""The API part of scripts/demo: the example queries it prints, and `--check`, which runs them
against a real server and exits 0 if every answer is what the demo data should give, else 1.

    python scripts/demo_api.py examples --url URL --token TOKEN      # print them as curl commands
    python scripts/demo_api.py check --url URL --token TOKEN --writer-token TOKEN2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import connect

PROFILE = """{
  profile(subject: {namespace: "email", value: "li.wei@example.com"}) {
    id version updatedAt segments
    attributeValues { city country consent { marketing } }
    featureValues { frequency monetary recencyDays lifecycleStage topCategories }
    predictions { model score }
    identities { namespace hash }
    history(first: 3) {
      nodes { __typename type occurredAt source ... on OrderPlaced { amount currency items { sku } } }
      pageInfo { hasNextPage endCursor }
    }
  }
}"""
PAST = """{
  profile(subject: {namespace: "phone", value: "+86 139 1234 5678"}, asOf: "2025-06-01T00:00:00Z") {
    version attributeValues { city } featureValues { frequency lifecycleStage }
  }
}"""
LIST = """{
  profiles(first: 3, filter: {lifecycleStages: ["active", "at_risk", "churned", "new"]}) {
    edges { cursor node { id segments featureValues { lifecycleStage } } }
    pageInfo { hasNextPage endCursor }
  }
}"""
INSIGHTS = """{ insights(groupBy: ["lifecycle_stage"], metric: "monetary", epsilon: 1.0) {
  groups { key count mean } threshold epsilon delta epsilonRemaining deltaRemaining } }"""

Check = Callable[[dict[str, Any]], str | None]  # None: as expected; else what is wrong


def _profile(data: dict[str, Any]) -> str | None:
    p = data["profile"]
    if p is None:
        return "li.wei@example.com has no profile"
    if p["attributeValues"]["city"] is None or p["featureValues"]["frequency"] is None:
        return "attributes or features missing"
    if len(p["history"]["nodes"]) != 3 or not p["history"]["pageInfo"]["hasNextPage"]:
        return "history page is not 3 events with more to come"
    if any("@" in i["hash"] for i in p["identities"]) or "li.wei" in json.dumps(p):
        return "a raw identifier came back"
    return None


def _past(data: dict[str, Any]) -> str | None:
    p = data["profile"]
    return None if p is not None and p["version"] >= 1 else "no profile as of 2025-06-01"


def _list(data: dict[str, Any]) -> str | None:
    edges = data["profiles"]["edges"]
    return None if edges and all(e["node"]["id"].startswith("prf_") for e in edges) else "no profiles listed"


def _insights(data: dict[str, Any]) -> str | None:
    i = data["insights"]
    if not (i["threshold"] >= 2 and isinstance(i["groups"], list)):
        return "no insights"
    return None if i["epsilon"] and i["delta"] and i["epsilonRemaining"] is not None else "nothing was charged"


EXAMPLES: list[tuple[str, str, Check]] = [
    ("a profile by e-mail, with features and its latest events", PROFILE, _profile),
    ("the same person as of 1 June 2025 (replayed)", PAST, _past),
    ("profiles, filtered and paginated", LIST, _list),
    ("population insights, differentially private (ε and δ charged to the token; small groups stay hidden)",
     INSIGHTS, _insights),
]


def curl(url: str, token: str, query: str) -> str:
    body = json.dumps({"query": " ".join(query.split())})
    return (f"curl -s {url} -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\\n"
            f"  -d {shlex.quote(body)}")


def post(client: httpx.Client, url: str, token: str, query: str, variables: dict[str, Any] | None = None
         ) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = client.post(url, json={"query": query, "variables": variables or {}}, headers=headers)
    return r.status_code, r.json()


async def subscription_sees(ws_url: str, token: str, profile_id: str, after: Callable[[], None]) -> int:
    """Subscribe to a profile, make a change, return the version the update carried."""
    async with connect(ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        assert json.loads(await ws.recv())["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription($id: ID!){ profileUpdated(id: $id) { id version } }",
            "variables": {"id": profile_id}}}))
        await asyncio.sleep(0.3)
        await asyncio.get_running_loop().run_in_executor(None, after)
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
            if message["type"] == "next":
                return int(message["payload"]["data"]["profileUpdated"]["version"])
            if message["type"] in ("error", "complete"):
                raise RuntimeError(f"subscription ended: {message}")


def check(url: str, token: str, writer: str) -> int:
    failures = checked = 0

    def report(name: str, problem: str | None) -> None:
        nonlocal failures, checked
        checked += 1
        failures += problem is not None
        print(f"  {'ok  ' if problem is None else 'FAIL'} {name}" + (f": {problem}" if problem else ""))

    with httpx.Client(timeout=30) as client:
        for name, query, verdict in EXAMPLES:
            status, body = post(client, url, token, query)
            report(name, f"HTTP {status}: {body.get('errors')}" if status != 200 or body.get("errors")
                   else verdict(body["data"]))
        status, body = post(client, url, "", PROFILE)
        report("no token, no data", None if status == 401 and "data" not in body else f"HTTP {status}")
        status, body = post(client, url, token, "mutation { eraseProfile(id: \"x\") { profileId } }")
        report("a read token cannot erase", None if status == 403 else f"HTTP {status}")

        target = post(client, url, token, PROFILE)[1]["data"]["profile"]
        event = {"source": "web", "type": "page_viewed", "occurredAt": "2025-12-01T10:00:00Z",
                 "subject": {"namespace": "email", "value": "li.wei@example.com"},
                 "data": {"url": "https://shop.example/demo-check"}, "eventId": "demo-check-1"}

        def ingest() -> None:
            post(client, url, writer, "mutation($e: [EventInput!]!){ ingestEvents(events: $e) { appended } }",
                 {"e": [event]})

        try:
            seen = asyncio.run(subscription_sees(url.replace("http", "ws", 1), token, target["id"], ingest))
            report("a subscription sees an ingest", None if seen > target["version"] else f"version {seen}")
        except Exception as e:
            report("a subscription sees an ingest", f"{type(e).__name__}: {e}")

        status, body = post(client, url, writer, """mutation {
          eraseProfile(subject: {namespace: "email", value: "maria.garcia@example.com"}) { profileId receipt } }""")
        erased = (body.get("data") or {}).get("eraseProfile")
        report("erasure through the API gives a receipt", None if erased and erased["receipt"]["signature"] else
               f"HTTP {status}: {body.get('errors')}")
        if erased:
            status, body = post(client, url, token, "query($id: ID){ profile(id: $id) { id } }",
                                {"id": erased["profileId"]})
            report("the erased profile is gone", None if body["data"]["profile"] is None else "still there")
        else:
            report("the erased profile is gone", "nothing was erased")
    print(f"demo --check: {checked - failures} passed, {failures} failed")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["examples", "check"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--writer-token", default="")
    args = parser.parse_args()
    if args.mode == "examples":
        for name, query, _ in EXAMPLES[:2]:
            print(f"# {name}\n{curl(args.url, args.token, query)}\n")
        return
    sys.exit(check(args.url, args.token, args.writer_token))


if __name__ == "__main__":
    main()
