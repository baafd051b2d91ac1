"""`homeward report`: the program's totals from the four services' records, as tables, JSON, or a
self-contained HTML page with charts (inline SVG drawn by matplotlib: no script, no network).

The cohort is the cases opened since `--since` (every case by default); the budget is the
program's. Counts are of cases; a rejected application counts once, under its first reason.
"""

import html
import io
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from importlib.util import find_spec
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from services.disbursement.domain import BUDGET_ACCOUNT, HELD_BUDGET_EXHAUSTED
from services.ops.common import READ_ONLY, AsJson, StateDir, console, emit, human_duration, locate, on_schema
from services.ops.dlq import since_moment

SQL = Path(__file__).parent / "sql" / "report.sql"
COHORT_HELP = "Only cases opened since: an age (30m, 6h, 7d) or an ISO 8601 time, UTC unless it names its offset"
HISTOGRAM_BUCKETS = 20
TICK_LABELS_MAX = 10
"""Labels on a chart's axis: beyond that, every n-th bar is labelled."""
STAGES = ("submitted", "accepted", "booked", "verified", "paid")
"""The funnel, in order."""
CHARTS = ("funnel", "payouts-per-day", "cases-by-destination", "time-to-payment")
"""Every chart of the HTML report, by the id of its <figure> (a browser test checks each)."""
STAGE_COUNTS = ("accepted", "booked", "booking_failed", "verified_partner_office", "verified_carrier_and_app",
                "arrival_rejected", "paid", "paid_amount", "pending", "held", "payment_failed", "paid_with_fare",
                "fares_of_paid")  # fmt: skip


@dataclass(frozen=True)
class Chart:
    """One figure of the HTML report: what it shows, and how many data marks it drew."""

    chart_id: str
    title: str
    svg: str
    marks: int
    caption: str = ""


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    return value


async def read_report(connection: Any, since: datetime | None) -> dict[str, Any]:
    """Every figure of the report, as its JSON document."""
    from services.runtime.db import fetch_all, load_queries

    queries = load_queries(SQL)
    applications = await fetch_all(queries.applications(connection, since=since))
    stages = await fetch_all(queries.case_stages(connection, since=since))
    problems = await fetch_all(queries.payment_problems(connection, since=since, held_reason=HELD_BUDGET_EXHAUSTED))
    payouts = await fetch_all(queries.payouts_by_day(connection, since=since))
    timing = await queries.time_to_payment(connection, since=since)
    histogram = await fetch_all(queries.time_to_payment_histogram(connection, since=since, buckets=HISTOGRAM_BUCKETS))
    budget = await queries.budget(connection, account=BUDGET_ACCOUNT)

    totals: Counter[str] = Counter()
    rejected_by_code: Counter[str] = Counter()
    by_day: dict[date, Counter[str]] = defaultdict(Counter)
    for row in applications:
        totals["submitted"] += row["applications"]
        totals[row["outcome"]] += 0  # every outcome named, even at zero
        by_day[row["day"]]["submitted"] += row["applications"]
        if row["outcome"] == "rejected":
            totals["rejected"] += row["applications"]
            rejected_by_code[row["code"] or "unknown"] += row["applications"]
            by_day[row["day"]]["rejected"] += row["applications"]
        if row["outcome"] == "undecided":
            totals["undecided"] += row["applications"]
    by_country: dict[str, Counter[str]] = defaultdict(Counter)
    amounts: Counter[str] = Counter()
    for row in stages:
        for name in STAGE_COUNTS:
            value = row[name]
            target = amounts if isinstance(value, Decimal) else totals
            target[name] += value
            by_country[row["country"]][name] += value
            by_day[row["day"]][name] += value
    for counter in (totals, *by_country.values(), *by_day.values()):
        counter["verified"] = counter["verified_partner_office"] + counter["verified_carrier_and_app"]
    paid = totals["paid"]
    stipends = amounts["paid_amount"]
    fares = amounts["fares_of_paid"]
    with_fare = totals["paid_with_fare"]
    currency = budget["currency"] if budget else None
    return {
        "since": _plain(since),
        "generated_at": _plain(datetime.now(UTC)),
        "currency": currency,
        "totals": {
            "submitted": totals["submitted"],
            "accepted": totals["accepted"],
            "rejected": totals["rejected"],
            "undecided": totals["undecided"],
            "booked": totals["booked"],
            "booking_failed": totals["booking_failed"],
            "verified": totals["verified"],
            "verified_by_rule": {
                "partner_office": totals["verified_partner_office"],
                "carrier_and_app": totals["verified_carrier_and_app"],
            },
            "arrival_rejected": totals["arrival_rejected"],
            "paid": paid,
            "paid_amount": _plain(stipends),
            "pending": totals["pending"],
            "held": totals["held"],
            "payment_failed": totals["payment_failed"],
        },
        "rejected_by_code": dict(rejected_by_code.most_common()),
        "problems": [{"kind": row["kind"], "reason": row["reason"], "cases": row["cases"]} for row in problems],
        "budget": None
        if budget is None
        else {
            "funded": _plain(budget["funded"]),
            "reserved": _plain(budget["reserved"]),
            "spent": _plain(budget["spent"]),
            "left": _plain(budget["available"]),
            "currency": currency,
        },
        "by_country": [_stage_row("country", country, counts) for country, counts in sorted(by_country.items())],
        "by_day": [_stage_row("day", day.isoformat(), counts) for day, counts in sorted(by_day.items())],
        "payouts_by_day": [
            {"day": row["day"].isoformat(), "paid": row["paid"], "amount": _plain(row["amount"])} for row in payouts
        ],
        "time_to_payment": {
            "paid": timing["paid"] if timing else 0,
            "p50_seconds": _seconds(timing["p50"]) if timing else None,
            "p95_seconds": _seconds(timing["p95"]) if timing else None,
            "fastest_seconds": _seconds(timing["fastest"]) if timing else None,
            "slowest_seconds": _seconds(timing["slowest"]) if timing else None,
            "histogram": _histogram(histogram),
        },
        "cost_per_return": {
            "paid": paid,
            "with_fare_reported": with_fare,
            "stipend": _plain(stipends / paid) if paid else None,
            "fare": _plain(fares / with_fare) if with_fare else None,
            "total": _plain(stipends / paid + fares / with_fare) if paid and with_fare else None,
        },
    }


def _stage_row(name: str, value: str, counts: Counter[str]) -> dict[str, Any]:
    shown = ("submitted", "rejected", "accepted", "booked", "booking_failed", "verified", "arrival_rejected", "paid",
             "held", "payment_failed")  # fmt: skip
    return {name: value, **{stage: counts[stage] for stage in shown}}


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def _histogram(rows: list[Any]) -> list[dict[str, Any]]:
    """Every bucket (empty ones too) with its bounds in seconds."""
    if not rows:
        return []
    low, high = float(rows[0]["low"]), float(rows[0]["high"])
    width = (high - low) / HISTOGRAM_BUCKETS or 1.0
    counts = {int(row["bucket"]): int(row["paid"]) for row in rows}
    return [{"from_seconds": round(low + (bucket - 1) * width, 3), "to_seconds": round(low + bucket * width, 3),
             "paid": counts.get(bucket, 0)} for bucket in range(1, HISTOGRAM_BUCKETS + 1)]  # fmt: skip


# Tables ------------------------------------------------------------------------------------------


def render_tables(report: dict[str, Any]) -> None:
    out = console()
    totals, budget, cost = report["totals"], report["budget"], report["cost_per_return"]
    currency = report["currency"] or ""
    cohort = f"cases opened since {report['since']}" if report["since"] else "every case"
    table = Table(title=f"Program report ({cohort})", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("submitted", totals["submitted"]), ("accepted", totals["accepted"]), ("rejected", totals["rejected"]),
        *((f"  rejected: {code}", count) for code, count in report["rejected_by_code"].items()),
        ("booked", totals["booked"]), ("booking failed", totals["booking_failed"]),
        ("arrival verified", totals["verified"]),
        *((f"  verified by {rule}", count) for rule, count in totals["verified_by_rule"].items()),
        ("arrival rejected", totals["arrival_rejected"]),
        ("paid", f"{totals['paid']:,} ({Decimal(totals['paid_amount']):,.2f} {currency})"),
        ("waiting for the provider", totals["pending"]), ("held", totals["held"]),
        ("payment failed", totals["payment_failed"]),
        *((f"  {problem['kind']}: {problem['reason']}", problem["cases"]) for problem in report["problems"]),
    ]  # fmt: skip
    if budget:
        rows += [(f"budget {name}", f"{Decimal(budget[name]):,.2f} {currency}") for name in
                 ("funded", "reserved", "spent", "left")]  # fmt: skip
    timing = report["time_to_payment"]
    if timing["paid"]:
        rows.append(("acceptance → payment p50 / p95", f"{_duration(timing['p50_seconds'])} / "
                                                         f"{_duration(timing['p95_seconds'])}"))  # fmt: skip
    if cost["total"]:
        rows.append(("cost per return (stipend + fare)", f"{Decimal(cost['total']):,.2f} {currency}"))
    for measure, value in rows:
        table.add_row(measure, f"{value:,}" if isinstance(value, int) else str(value))
    out.print(table)
    if report["by_country"]:
        countries = Table(title="By destination", title_justify="left")
        for column in ("country", "accepted", "booked", "verified", "paid", "held", "failed"):
            countries.add_column(column, justify="left" if column == "country" else "right")
        for row in report["by_country"]:
            countries.add_row(
                row["country"],
                *(f"{row[name]:,}" for name in ("accepted", "booked", "verified", "paid", "held", "payment_failed")),
            )
        out.print(countries)


def _duration(seconds: float | None) -> str:
    return "-" if seconds is None else human_duration(seconds)


# HTML --------------------------------------------------------------------------------------------


def charts(report: dict[str, Any]) -> list[Chart]:
    """The four charts as inline SVG; each data mark carries an id starting `mark-`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    pyplot.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False,
                            "axes.spines.right": False})  # fmt: skip
    totals, timing, currency = report["totals"], report["time_to_payment"], report["currency"] or ""
    paid_amount = sum((Decimal(row["amount"]) for row in report["payouts_by_day"]), Decimal(0))
    histogram = timing["histogram"]
    drawn = [
        _bars("funnel", "Cases at each stage", list(STAGES), [totals[stage] for stage in STAGES], horizontal=True,
              caption="Applications submitted, then cases accepted, booked, verified on arrival and paid."),
        _bars("payouts-per-day", "Stipends paid per day", [row["day"] for row in report["payouts_by_day"]],
              [row["paid"] for row in report["payouts_by_day"]],
              caption=f"By day of payment (UTC): {paid_amount:,.2f} {currency} in all."),
        _bars("cases-by-destination", "Accepted cases by destination",
              [row["country"] for row in report["by_country"]], [row["accepted"] for row in report["by_country"]],
              caption="Destination country of each accepted case ('unknown' until arrival hears of it)."),
        _bars("time-to-payment", "Paid cases by time from acceptance to payment",
              [_duration(bucket["from_seconds"]) for bucket in histogram], [bucket["paid"] for bucket in histogram],
              caption=f"{timing['paid']:,} paid cases: p50 {_duration(timing['p50_seconds'])}, "
                      f"p95 {_duration(timing['p95_seconds'])}."),
    ]  # fmt: skip
    pyplot.close("all")
    return drawn


def _bars(
    chart_id: str, title: str, labels: list[str], values: list[int], *, caption: str, horizontal: bool = False
) -> Chart:
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6.4, 3.2), layout="constrained")
    if not labels:
        axes.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        bars = []
    elif horizontal:
        positions = range(len(labels))
        container = axes.barh(positions, values[::-1], color="#2b6cb0", tick_label=labels[::-1])
        axes.bar_label(container, fmt="{:,.0f}", padding=3)
        bars = list(container)
    else:
        bars = list(axes.bar(range(len(labels)), values, color="#2b6cb0"))
        step = max(1, len(labels) // TICK_LABELS_MAX)
        axes.set_xticks(
            range(0, len(labels), step), labels[::step], rotation=45 if len(labels) > TICK_LABELS_MAX else 0
        )
    for index, bar in enumerate(bars):
        bar.set_gid(f"mark-{chart_id}-{index}")
    axes.set_title(title, loc="left")
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return Chart(chart_id, title, svg[svg.index("<svg") :], sum(1 for value in values if value), caption)


def render_html(report: dict[str, Any]) -> str:
    """The report as one HTML page: the totals, then the charts, all inline."""
    totals, budget, timing = report["totals"], report["budget"], report["time_to_payment"]
    currency = html.escape(report["currency"] or "")
    cards = [
        ("submitted", f"{totals['submitted']:,}"),
        ("accepted", f"{totals['accepted']:,}"),
        ("paid", f"{totals['paid']:,}"),
        ("paid amount", f"{Decimal(totals['paid_amount']):,.2f} {currency}"),
        ("held", f"{totals['held']:,}"),
        ("failed", f"{totals['payment_failed']:,}"),
        ("p50 / p95 to payment", f"{_duration(timing['p50_seconds'])} / {_duration(timing['p95_seconds'])}"),
    ]
    if budget:
        cards.append(("budget left", f"{Decimal(budget['left']):,.2f} {currency}"))
    card_html = "".join(f'<div class="card"><span>{html.escape(name)}</span><b>{html.escape(value)}</b></div>'
                        for name, value in cards)  # fmt: skip
    figures = "".join(
        f'<figure class="chart" id="{chart.chart_id}" data-marks="{chart.marks}">{chart.svg}'
        f"<figcaption>{html.escape(chart.caption)}</figcaption></figure>"
        for chart in charts(report)
    )
    cohort = f"cases opened since {report['since']}" if report["since"] else "every case"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Homeward program report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #1a202c; }}
.cards {{ display: flex; flex-wrap: wrap; gap: .75rem; margin: 1rem 0 2rem; }}
.card {{ border: 1px solid #cbd5e0; border-radius: 6px; padding: .5rem .9rem; min-width: 9rem; }}
.card span {{ display: block; color: #4a5568; font-size: 12px; }} .card b {{ font-size: 18px; }}
.charts {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(30rem, 1fr)); gap: 1.5rem; }}
figure {{ margin: 0; }} figure svg {{ width: 100%; height: auto; }} figcaption {{ color: #4a5568; }}
</style></head>
<body><h1>Homeward program report</h1>
<p>{html.escape(cohort)}; generated {html.escape(report["generated_at"])}. Counts are of cases.</p>
<div class="cards">{card_html}</div>
<div class="charts">{figures}</div>
</body></html>
"""


def report(
    since: Annotated[str | None, typer.Option(help=COHORT_HELP)] = None,
    html_file: Annotated[
        Path | None, typer.Option("--html", help="Also write the report, with charts, to this self-contained HTML file")
    ] = None,
    state_dir: StateDir = None,
    as_json: AsJson = False,
) -> None:
    """Program totals, per destination and per day; charts in HTML.

    Program totals: the funnel, rejections by code, payments held and failed by reason, the
    budget, time to payment, cost per return; per destination and per day.

    Example: `homeward report --since 7d --html report.html`."""
    moment = since_moment(since, datetime.now(UTC)) if since else None
    if html_file is not None and find_spec("matplotlib") is None:
        typer.echo("error: --html draws its charts with matplotlib, which is not installed.", err=True)
        typer.echo("Install it with `pip install 'homeward[charts]'` (or `pip install -e '.[charts]'`).", err=True)
        raise typer.Exit(1)
    database_url, _ = locate(state_dir, READ_ONLY)

    async def read(connection: Any) -> dict[str, Any]:
        return await read_report(connection, moment)

    document = on_schema(database_url, "public", read, holds="services' records")
    if html_file is not None:
        html_file.write_text(render_html(document))
    if as_json:
        emit(True, document, None)
    else:
        render_tables(document)
        if html_file is not None:
            typer.echo(f"wrote {html_file}")
