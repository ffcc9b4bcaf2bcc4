"""The runs list and its search with 100,000 runs.

Seeds 100,000 runs over five apps (one a chatflow whose runs carry a message) started by 60
people, by the API or by runs ingested from Dify, with start inputs of a few text fields (names
in English and Chinese, order numbers, reasons) and an amount, and measures in process through
Django's test client (all middleware, templates and queries, no network), as a staff member who
sees every run:

- the Runs page (`/runs/`) unfiltered, by state, by app, and searched (`?q=`) for a word of an
  input value, a rare value, a username, the start of a run id, a Chinese name and a word that
  matches nothing; p50/p95 server time;
- the API's search (`GET /api/v1/runs?q=`) for the same words;
- PostgreSQL's plan of each search's page query (EXPLAIN ANALYZE), shown in the results.

Each search is timed twice: with the runs' search indexes (migration 0031_run_search_indexes), and with them
dropped inside a transaction that is rolled back (what the search cost before them).

Run with PostgreSQL: `bin/with-services -- .venv/bin/python -m bench runs`.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

from bench.bench_review import _python_speed, _setup, _time

ROUNDS = int(os.environ.get("BENCH_RUNS_ROUNDS", "40"))
# Without the indexes a search reads every run: fewer rounds keep the bench short.
ROUNDS_UNINDEXED = int(os.environ.get("BENCH_RUNS_ROUNDS_UNINDEXED", "10"))
SIZE = int(os.environ.get("BENCH_RUNS_SIZE", "100000"))
BATCH = 5_000
PEOPLE = 60

FIRST = ["Ada", "Grace", "Alan", "Linus", "Margaret", "Ken", "Barbara", "Edsger", "Frances", "Tim"]
LAST = ["Lovelace", "Hopper", "Turing", "Torvalds", "Hamilton", "Thompson", "Liskov", "Dijkstra"]
CUSTOMERS = [
    *(f"{f} {last}" for f in FIRST for last in LAST),
    "\u5f20\u4f1f",  # Zhang Wei
    "\u738b\u82b3",  # Wang Fang
    "\u674e\u5a1c",  # Li Na
    "\u5218\u6d0b",  # Liu Yang
    "\u9648\u9759",  # Chen Jing
    "\u8d75\u78ca",  # Zhao Lei
]
REASONS = [
    "Damaged on arrival",
    "Wrong size delivered",
    "Late delivery, customer cancelled",
    "Duplicate charge on the card",
    "Item not as described",
    "Warranty claim for a broken hinge",
    "\u5546\u54c1\u635f\u574f\uff0c\u7533\u8bf7\u9000\u6b3e",  # goods damaged, refund asked
    "\u53d1\u8d27\u5ef6\u8fdf",  # shipping late
]
QUERIES = [
    "Where is my parcel?",
    "Can I change the delivery address?",
    "How do I return a damaged item?",
    "My invoice shows the wrong amount",
    "\u6211\u7684\u5305\u88f9\u5728\u54ea\u91cc\uff1f",  # where is my parcel
    "\u53ef\u4ee5\u5f00\u53d1\u7968\u5417\uff1f",  # can I get an invoice
]
STATUS_SPREAD = [("succeeded", 14), ("paused", 3), ("failed", 2), ("running", 1)]  # per 20
APPS = ["refund-approval", "purchase-order", "content-publish", "hr-leave", "support-chat"]
SEARCH_INDEXES = (
    "run_query_trgm",
    "run_inputs_trgm",
    "run_started_by_username_upper",
    "run_workflow_run_id_start",
    "run_public_id_start",
)


def _seed(target: int) -> dict[str, str]:
    """Grow the runs table to `target` runs; the words the searches look for."""
    import uuid

    from django.contrib.auth.models import User
    from django.db import connection

    from inbox.models import DifyApp, Run

    apps = []
    for name in APPS:
        app, _ = DifyApp.objects.get_or_create(
            name=name,
            defaults={
                "base_url": "http://127.0.0.1:9/v1",
                "api_key": "k",
                "mode": "advanced-chat" if name == "support-chat" else "workflow",
            },
        )
        apps.append(app)
    people = []
    for i in range(PEOPLE):
        user, _ = User.objects.get_or_create(
            username=f"{FIRST[i % len(FIRST)].lower()}.{LAST[i % len(LAST)].lower()}{i}",
            defaults={"first_name": FIRST[i % len(FIRST)], "last_name": LAST[i % len(LAST)]},
        )
        people.append(user)
    statuses = [s for s, n in STATUS_SPREAD for _ in range(n)]
    rng = random.Random(42)
    have = Run.objects.count()
    first_new = (Run.objects.order_by("-pk").values_list("pk", flat=True).first() or 0) + 1
    while have < target:
        count = min(BATCH, target - have)
        rows = []
        for n in range(have, have + count):
            app = apps[n % len(apps)]
            chat = app.name == "support-chat"
            who = n % 10
            user = people[rng.randrange(PEOPLE)] if who < 7 else None
            rows.append(
                Run(
                    app=app,
                    workflow_run_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    dify_user=f"inbox-{user.username}" if user else f"api-{n % 97}",
                    inputs={
                        "customer_name": rng.choice(CUSTOMERS),
                        "order_id": f"SO-{100000 + n}",
                        "reason": rng.choice(REASONS),
                        "amount": round(rng.uniform(5, 900), 2),
                    },
                    query=rng.choice(QUERIES) if chat else "",
                    status=statuses[n % len(statuses)],
                    started_by=user,
                    # One run in ten by someone whose account is gone: only the name is kept.
                    started_by_username=user.username
                    if user
                    else (f"gone{n % 7}" if who == 7 else ""),
                    source="ui" if user else ("api" if who < 9 else "ingest"),
                    follow_wanted=False,
                )
            )
        Run.objects.bulk_create(rows)
        have += count
    with connection.cursor() as cursor:
        # Spread over about 70 days, newest last, so "newest first" is a real order.
        cursor.execute(
            "UPDATE inbox_run SET created_at = now() - (%s - id) * interval '1 minute', "
            "updated_at = now() - (%s - id) * interval '1 minute' WHERE id >= %s",
            [first_new + target, first_new + target, first_new],
        )
        cursor.execute("VACUUM ANALYZE inbox_run")
    old = Run.objects.order_by("created_at").values_list("workflow_run_id", flat=True)[target // 3]
    return {
        "id_start": old[:8],
        "rare": f"SO-{100000 + target // 2}",
        "username": people[7].username,
    }


def _plan(q: str, user: Any) -> tuple[str, int]:
    """EXPLAIN ANALYZE of the page's query for `q`, and how many runs the page shows."""
    from inbox.models import Run
    from inbox.views_runs import RUNS_PAGE, search_runs

    runs = search_runs(
        Run.objects.for_user(user)
        .select_related("app", "started_by")
        .order_by("-created_at", "-pk"),
        q,
    )[: RUNS_PAGE + 1]
    return runs.explain(analyze=True, costs=False), min(len(list(runs)), RUNS_PAGE)


def _summary(plan: str) -> str:
    """The plan's nodes, by name and the index or table each reads, outermost first."""
    nodes = []
    for line in plan.splitlines():
        text = line.strip().removeprefix("->").strip()
        name = text.split("  (")[0].split(" (actual")[0]
        if not name or name[0].islower() or ":" in name.split(" on ")[0]:
            continue
        for word in ("Limit", "Sort", "Nested Loop", "Hash", "Gather", "Memoize"):
            if name.startswith(word) and " on " not in name:
                break
        else:
            nodes.append(name)
    return "; ".join(dict.fromkeys(nodes)) or plan.splitlines()[0]


def main() -> str:
    # As the review bench sets Django up: in process, migrated, no collected static files.
    _setup()
    from django.contrib.auth.models import User
    from django.db import connection, transaction
    from django.test import Client

    from inbox.models import ApiToken, DifyApp

    load_before = os.getloadavg()[0]
    speed_before = _python_speed()
    print(f"seeding {SIZE} runs", flush=True)
    started = time.perf_counter()
    words = _seed(SIZE)
    seeded = time.perf_counter() - started
    print(f"  seeded in {seeded:.0f} s", flush=True)
    staff, _ = User.objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
    client = Client()
    client.force_login(staff)
    _token, raw = ApiToken.issue(staff, name="bench")
    app = DifyApp.objects.get(name="purchase-order")

    def get(url: str, **headers: str) -> Callable[[], Any]:
        def call() -> Any:
            response = client.get(url, secure=True, **headers)
            assert response.status_code == 200, (url, response.status_code)
            return response

        return call

    searches = [
        ("a word of an input value ('warranty')", "warranty"),
        (f"a rare input value ('{words['rare']}')", words["rare"]),
        (f"a username ('{words['username']}')", words["username"]),
        (f"the start of a run id ('{words['id_start']}')", words["id_start"]),
        ("a Chinese name ('\u738b\u82b3')", "\u738b\u82b3"),
        ("a Chinese phrase found nowhere ('\u7533\u8bf7\u9000\u8d27')", "\u7533\u8bf7\u9000\u8d27"),
        ("a chatflow's message ('invoice')", "invoice"),
        ("nothing matches ('qzxv')", "qzxv"),
    ]
    pages: list[tuple[str, Callable[[], Any]]] = [
        ("Runs page: unfiltered, first page", get("/runs/")),
        ("Runs page: waiting for a decision", get("/runs/?state=paused")),
        ("Runs page: one app", get(f"/runs/?app={app.pk}")),
        ("Runs page: one app, ended", get(f"/runs/?app={app.pk}&state=finished")),
        ("API: unfiltered, first page", get("/api/v1/runs", HTTP_AUTHORIZATION=f"Bearer {raw}")),
    ]

    def search_cases() -> list[tuple[str, Callable[[], Any]]]:
        from urllib.parse import quote

        cases = []
        for label, q in searches:
            cases.append((f"Runs page: {label}", get(f"/runs/?q={quote(q)}")))
            cases.append(
                (
                    f"API: {label}",
                    get(f"/api/v1/runs?q={quote(q)}", HTTP_AUTHORIZATION=f"Bearer {raw}"),
                )
            )
        return cases

    rows: dict[str, dict[str, tuple[float, float]]] = {}

    def measure(column: str, cases: list[tuple[str, Callable[[], Any]]], rounds: int) -> None:
        for name, fn in cases:
            p50, p95 = _time(fn, rounds)
            rows.setdefault(name, {})[column] = (p50, p95)
            print(f"  {column:<10} {name:<60} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms", flush=True)

    measure("indexed", pages + search_cases(), ROUNDS)
    plans = {}
    for label, q in searches:
        plans[label] = _plan(q, staff)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'inbox_run' AND indexname = ANY(%s)",
            [list(SEARCH_INDEXES)],
        )
        present = [name for (name,) in cursor.fetchall()]
    plans_unindexed = {}
    with transaction.atomic():
        with connection.cursor() as cursor:
            for name in present:
                cursor.execute(f"DROP INDEX {name}")
        measure("unindexed", search_cases(), ROUNDS_UNINDEXED)
        for label, q in searches:
            plans_unindexed[label] = _plan(q, staff)
        transaction.set_rollback(True)

    lines = [
        "## Runs list and search",
        "",
        f"Database: {connection.vendor}. {SIZE:,} runs (seeded in {seeded:.0f} s with bulk inserts) "
        f"over five apps, one a chatflow whose runs carry a message; 70% started by one of "
        f"{PEOPLE} people, 10% by accounts since deleted (only the kept username), the rest by "
        "the API or ingested; start inputs of a customer name (one in fifteen Chinese), an order "
        "number, a reason (English or Chinese) and an amount; statuses 14:3:2:1 succeeded, "
        "paused, failed, running. Timed as a staff member (who sees every run) through Django's "
        "test client (middleware, queries, templates; no network), after one warm-up: "
        f"{ROUNDS} requests per case with the runs' search indexes ({', '.join(present) or 'none present'}), "
        f"{ROUNDS_UNINDEXED} with them dropped in a transaction rolled back afterwards. Numbers "
        "taken on a 2-core machine shared with other work, so expect noise of 10-30% between "
        f"runs (load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; "
        f"ten million additions in a Python loop took {speed_before:.2f} s of CPU before and "
        f"{_python_speed():.2f} s after).",
        "",
        "| case | p50 | p95 | p50 without the indexes | p95 without the indexes |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, by in rows.items():
        a = by["indexed"]
        b = by.get("unindexed")
        rest = f"{b[0]:.1f} ms | {b[1]:.1f} ms" if b else " | "
        lines.append(f"| {name} | {a[0]:.1f} ms | {a[1]:.1f} ms | {rest} |")
    with connection.cursor() as cursor:
        cursor.execute("SHOW lc_ctype")
        ctype = cursor.fetchone()[0]
    lines += [
        "",
        f"The bench's database has LC_CTYPE {ctype}"
        + (
            ": pg_trgm takes no trigrams from Chinese there, so a Chinese search is answered by "
            "reading runs newest first until a page is full (fast for a common word, every run for "
            "a rare one). In a database with a UTF-8 LC_CTYPE (the postgres image's default, "
            "en_US.utf8) a Chinese word of three characters or more is found through the inputs' "
            "index (by hand on 2026-12-07, these 100,000 runs' inputs in a C.utf8 database: a "
            "four-character phrase found nowhere 0.3 ms against 320 ms read whole); the index "
            "does not narrow a two-character name there either, trigrams needing three characters."
            if ctype in ("C", "POSIX")
            else "."
        ),
        "",
        "The page's query for each search, as PostgreSQL ran it (EXPLAIN ANALYZE; the plan's "
        "nodes that read rows, outermost first):",
        "",
        "| search | runs on the page | plan with the indexes | ms | plan without them | ms |",
        "|---|---:|---|---:|---|---:|",
    ]
    for label, _q in searches:
        plan, shown = plans[label]
        plan_u, _shown = plans_unindexed[label]
        lines.append(
            f"| {label} | {shown} | {_summary(plan)} | {_execution(plan)} | {_summary(plan_u)} "
            f"| {_execution(plan_u)} |"
        )
    label = searches[0][0]
    lines += [
        "",
        f"<details><summary>Full plans: {label}, with and without the indexes</summary>",
        "",
        "```",
        plans[label][0],
        "```",
        "",
        "```",
        plans_unindexed[label][0],
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines)


def _execution(plan: str) -> str:
    for line in plan.splitlines():
        if line.startswith("Execution Time:"):
            return line.split(":", 1)[1].strip().removesuffix(" ms")
    return ""
