"""The `detector` command: worker, api, demo, simulate, produce, rules, spend, report."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer

from detector.anomaly.cli import anomaly_app
from detector.config import Settings, load_settings
from detector.errors import DetectorError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
rules_app = typer.Typer(no_args_is_help=True, help="Check and try out rules files.")
app.add_typer(rules_app, name="rules")
override_app = typer.Typer(
    no_args_is_help=True, help="Block, throttle or allow an entity by hand, or lift a decision."
)
app.add_typer(override_app, name="override")
app.add_typer(anomaly_app, name="anomaly")

TenantOpt = Annotated[str, typer.Option("--tenant", help="Tenant id.")]
ScopeOpt = Annotated[str, typer.Option("--scope", help="tenant, user, feature, model, ...")]
EntityOpt = Annotated[str, typer.Option("--id", help="Entity id within the tenant.")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why; kept in the audit trail.")]
ForOpt = Annotated[str, typer.Option("--for", help="How long, e.g. 30m, 2h, 1d.")]


def _override(
    action_name: str, tenant: str, scope: str, entity: str, for_: str, reason: str
) -> None:
    from detector.overrides import set_override
    from detector.schemas import Action

    settings = _settings()
    decision = asyncio.run(
        set_override(settings, Action(action_name), scope, tenant, entity, for_, reason)
    )
    typer.echo(
        f"{decision.action.value} {decision.scope.value} {decision.entity_id} "
        f"({decision.tenant_id}) until {decision.until}: {decision.reason}"
    )


@override_app.command("block")
def override_block(
    tenant: TenantOpt, reason: ReasonOpt, for_: ForOpt = "1h", scope: ScopeOpt = "tenant",
    entity: EntityOpt = "",
) -> None:  # fmt: skip
    """Block an entity for a while, whatever the rules say."""
    _override("block", tenant, scope, entity, for_, reason)


@override_app.command("throttle")
def override_throttle(
    tenant: TenantOpt, reason: ReasonOpt, for_: ForOpt = "1h", scope: ScopeOpt = "tenant",
    entity: EntityOpt = "",
) -> None:  # fmt: skip
    """Throttle an entity for a while, whatever the rules say."""
    _override("throttle", tenant, scope, entity, for_, reason)


@override_app.command("allow")
def override_allow(
    tenant: TenantOpt, reason: ReasonOpt, for_: ForOpt = "1h", scope: ScopeOpt = "tenant",
    entity: EntityOpt = "",
) -> None:  # fmt: skip
    """Let an entity through for a while, even if a rule blocks it."""
    _override("allow", tenant, scope, entity, for_, reason)


@override_app.command("lift")
def override_lift(
    tenant: TenantOpt, scope: ScopeOpt = "tenant", entity: EntityOpt = "",
    reason: ReasonOpt = "lifted from the command line",
) -> None:  # fmt: skip
    """End the override and the rule decision of an entity now."""
    from detector.overrides import lift

    ended = asyncio.run(lift(_settings(), scope, tenant, entity, reason))
    if not ended:
        typer.echo("nothing was in force")
    for d in ended:
        typer.echo(f"lifted {d.action.value} ({d.rule_id}) on {d.scope.value} {d.entity_id}")


@app.command()
def audit(
    tenant: TenantOpt,
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 50,
) -> None:
    """Print a tenant's recent decision changes: rule decisions, overrides and lifts."""
    from detector.overrides import audit as read_audit

    for d in asyncio.run(read_audit(_settings(), tenant, limit)):
        what = "lift" if d.lifted else d.action.value
        who = d.actor or d.rule_id
        typer.echo(
            f"{d.decided_at}  {what:<8} {d.scope.value}:{d.entity_id}  until {d.until}  "
            f"by {who}  {d.reason}"
        )


def _settings() -> Settings:
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return settings


@app.command()
def worker() -> None:
    """Consume cost events, keep the windows, apply the rules, publish decisions and alerts."""
    from detector.pricing import PriceTable
    from detector.rules.holder import RulesHolder
    from detector.startup import check_kafka, check_redis, ensure_topics
    from detector.worker import run_worker

    settings = _settings()
    rules = RulesHolder(settings.rules)
    prices = PriceTable.load(settings.prices_file)
    asyncio.run(check_redis(settings))
    asyncio.run(check_kafka(settings))
    asyncio.run(ensure_topics(settings))
    run_worker(settings, rules, prices)


@app.command()
def api() -> None:
    """Serve the lookup API (decisions, spend, health, metrics) for gateways."""
    from detector.api.app import run_api
    from detector.startup import check_redis

    settings = _settings()
    asyncio.run(check_redis(settings))
    run_api(settings)


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="Length of the simulated traffic.")] = 60.0,
) -> None:
    """Run worker and API, play traffic in which one tenant turns abusive, show the outcome."""
    from detector.demo import run_demo

    sys.exit(asyncio.run(run_demo(_settings(), seconds)))


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="JSONL file to write, '-' for stdout.")] = Path("-"),
    seed: int = 7,
    seconds: float = 60.0,
    rate: Annotated[float, typer.Option(help="Background events per second.")] = 40.0,
    tenants: int = 4,
    abuse_at: Annotated[float, typer.Option(help="Seconds until tenant-0 turns abusive.")] = 20.0,
    start_ms: Annotated[int | None, typer.Option(help="Event time of the first event.")] = None,
) -> None:
    """Write seeded synthetic gateway traffic (one abusive tenant) as JSONL cost events."""
    from detector.simulate import Scenario, generate

    scenario = Scenario(
        seed=seed, tenants=tenants, duration_s=seconds, rate_per_s=rate, abuse_at_s=abuse_at
    )
    first_ms = start_ms if start_ms is not None else time.time_ns() // 1_000_000
    sink = sys.stdout.buffer if str(out) == "-" else out.open("wb")
    count = 0
    for event in generate(scenario, first_ms):
        sink.write(orjson.dumps(event) + b"\n")
        count += 1
    sink.flush()
    if sink is not sys.stdout.buffer:
        sink.close()
        typer.echo(f"wrote {count} events to {out}", err=True)


@app.command()
def produce(
    file: Annotated[Path, typer.Argument(help="JSONL file of cost events ('-' for stdin).")],
) -> None:
    """Publish JSONL events to llm.cost.events, keyed by tenant_id, as they are (bad ones too)."""
    from detector.produce import produce_lines

    settings = _settings()
    source = sys.stdin.buffer if str(file) == "-" else file.open("rb")
    with source:
        lines = [line.rstrip(b"\r\n") for line in source if line.strip()]
    sent = asyncio.run(produce_lines(settings, lines))
    typer.echo(f"published {sent} events to {settings.topic('llm.cost.events')}")


@rules_app.command("validate")
def rules_validate(
    file: Annotated[Path, typer.Argument(help="rules.yaml to check.")] = Path("rules.yaml"),
) -> None:
    """Check a rules file; print every problem (file, rule, field, value) and exit 1 if any."""
    from detector.rules.loader import load_rules

    rules = load_rules(file)
    typer.echo(f"{file}: {len(rules.rules)} rules, {len(rules.budgets)} budgets, OK")
    if rules.anomaly is not None:
        from detector.anomaly.explain import describe

        typer.echo(describe(rules.anomaly))


@rules_app.command("backtest")
def rules_backtest(
    file: Annotated[Path, typer.Argument(help="rules.yaml to try.")] = Path("rules.yaml"),
    events: Annotated[Path, typer.Option(help="JSONL file of cost events.")] = Path("-"),
    output_format: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Replay recorded events (on event time, no Kafka) and show what the rules would have done."""
    from detector.backtest import render_table, run_backtest
    from detector.errors import ConfigError

    if output_format not in ("table", "json"):
        raise ConfigError(f"--format must be table or json, got {output_format!r}")
    settings = _settings()
    source = sys.stdin.buffer if str(events) == "-" else events.open("rb")
    with source:
        lines = [line.rstrip(b"\r\n") for line in source if line.strip()]
    result = asyncio.run(run_backtest(settings, file, lines))
    if output_format == "json":
        typer.echo(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(render_table(result))


@app.command()
def spend(
    tenant: Annotated[str, typer.Option(help="Tenant id.")] = "",
    scope: Annotated[
        str, typer.Option(help="global, tenant, user, feature, model, ...")
    ] = "tenant",
    entity: Annotated[str, typer.Option("--id", help="Entity id within the tenant.")] = "",
    window: Annotated[str, typer.Option(help="1m, 5m, 1h, 1d, 7d, 30d, today, week, month")] = "1h",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print every metric of one entity's window."""
    from detector.spend import read_spend

    settings = _settings()
    body = asyncio.run(read_spend(settings, scope, tenant, entity, window))
    if as_json:
        typer.echo(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
        return
    typer.echo(f"{body['scope']} {body['id']} ({body['tenant_id']}), window {body['window']}:")
    metrics = body["metrics"]
    assert isinstance(metrics, dict)
    for name, value in metrics.items():
        typer.echo(f"  {name:<22} {value}")


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="cost-per-user, cost-by-feature, cost-by-model, "
                                        "top-spenders, week-over-week, margins or quality")],
    tenant: Annotated[str, typer.Option(help="Tenant id; all tenants when left out.")] = "",
    period: Annotated[str, typer.Option(help="day, week or month (UTC calendar); "
                                        "default week, month for margins")] = "",
    at: Annotated[str, typer.Option(help="A date in the period, YYYY-MM-DD; default today.")] = "",
    top: Annotated[str, typer.Option(help="Rows per ranking, 1-100.")] = "10",
    output_format: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
) -> None:  # fmt: skip
    """Print a cost-attribution report (the numbers GET /v1/reports/NAME serves)."""
    from detector.errors import ConfigError
    from detector.reports.render import FORMATS, render
    from detector.reports.service import report_for

    if output_format not in FORMATS:
        raise ConfigError(f"--format must be table, json or csv, got {output_format!r}")
    settings = _settings()
    now = time.time_ns() // 1_000_000
    body = asyncio.run(report_for(settings, name, tenant, period, at, top, now))
    typer.echo(render(body, output_format), nl=output_format != "csv")


@app.command()
def digest(
    kind: Annotated[str, typer.Argument(help="daily or weekly")],
    at: Annotated[str, typer.Option(help="A date in the period, YYYY-MM-DD; default: the "
                                    "one due now (yesterday, last week).")] = "",
) -> None:  # fmt: skip
    """Print the Slack digest of a day or week, without sending it."""
    from detector.reports.digest import preview_digest

    now = time.time_ns() // 1_000_000
    typer.echo(asyncio.run(preview_digest(_settings(), kind, at, now)))


def main() -> None:
    try:
        app(standalone_mode=False)
    except DetectorError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except (typer.Exit, typer.Abort) as exc:
        sys.exit(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
