"""Alert rules in YAML, evaluated against monitor metrics, stored with their evidence, optionally posted.

```yaml
webhook: http://127.0.0.1:9000/hooks/vlmops   # optional; receives each fired alert as JSON
rules:
  - name: embedding drift
    metric: drift.mmd.p_value      # a key of the metrics the monitor computed
    op: "<"                        # < <= > >= == !=
    threshold: 0.01
    min_samples: 50                # skip (not fire) when the window holds fewer requests
    cooldown_s: 3600               # do not fire the same rule again within this time
```
"""

from __future__ import annotations

import json
import operator
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import sqlalchemy as sa

from vlmops.errors import VlmopsError
from vlmops.store.log import create_tables, make_engine
from vlmops.store.monitor_tables import alerts, list_alerts

OPS = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
}


class AlertRuleError(VlmopsError):
    """An alert-rules file is malformed."""


@dataclass(frozen=True)
class AlertRule:
    """metric <op> threshold, once at least min_samples were seen, at most once per cooldown."""

    name: str
    metric: str
    op: str
    threshold: float
    min_samples: int = 1
    cooldown_s: float = 0.0

    def holds(self, value: float) -> bool:
        """Whether the alert condition is met."""
        return OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class AlertConfig:
    """Rules plus an optional webhook URL."""

    rules: tuple[AlertRule, ...]
    webhook: str | None = None


def load_rules(path: str | Path) -> AlertConfig:
    """Read and validate a rules YAML file."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise AlertRuleError(f"alert rules file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise AlertRuleError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
        raise AlertRuleError(f"{path}: expected a mapping with a non-empty 'rules' list")
    rules = []
    for i, raw in enumerate(data["rules"]):
        where = f"{path}: rules[{i}]"
        if not isinstance(raw, dict):
            raise AlertRuleError(f"{where} must be a mapping with name, metric, op, threshold")
        missing = {"name", "metric", "op", "threshold"} - raw.keys()
        unknown = raw.keys() - {"name", "metric", "op", "threshold", "min_samples", "cooldown_s"}
        if missing or unknown:
            raise AlertRuleError(f"{where}: missing {sorted(missing)} / unknown {sorted(unknown)} fields")
        if raw["op"] not in OPS:
            raise AlertRuleError(f"{where}: op {raw['op']!r} is not one of {' '.join(OPS)}")
        try:
            rules.append(
                AlertRule(
                    str(raw["name"]),
                    str(raw["metric"]),
                    raw["op"],
                    float(raw["threshold"]),
                    int(raw.get("min_samples", 1)),
                    float(raw.get("cooldown_s", 0)),
                )
            )
        except (TypeError, ValueError) as exc:
            raise AlertRuleError(f"{where}: {exc}") from None
    webhook = data.get("webhook")
    if webhook is not None and not str(webhook).startswith(("http://", "https://")):
        raise AlertRuleError(f"{path}: webhook must be an http(s) URL, got {webhook!r}")
    return AlertConfig(tuple(rules), webhook)


class AlertStore:
    """Fired alerts in the store database."""

    def __init__(self, url: str | None = None) -> None:
        self.engine = make_engine(url)
        create_tables(self.engine, tables=[alerts])

    def last_fired(self, rule: str) -> float | None:
        """Time the rule last fired, if ever."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(alerts.c.time)).where(alerts.c.rule == rule)).scalar()

    def add(
        self, rule: AlertRule, value: float, model_version: str | None, evidence: dict, at: float
    ) -> dict:
        """Store one fired alert; returns it as a dict."""
        row = {
            "time": at,
            "rule": rule.name,
            "metric": rule.metric,
            "value": float(value),
            "threshold": rule.threshold,
            "model_version": model_version,
            "evidence": json.dumps(evidence),
        }
        with self.engine.begin() as conn:
            row["id"] = int(conn.execute(alerts.insert().values(**row)).inserted_primary_key[0])
        return {**row, "evidence": evidence}

    def list(self, since: float | None = None) -> list[dict]:
        """Fired alerts, oldest first."""
        return list_alerts(self.engine, since)


def evaluate_rules(
    config: AlertConfig,
    metrics: dict[str, float | None],
    n_samples: int,
    store: AlertStore,
    model_version: str | None = None,
    now: float | None = None,
) -> list[dict]:
    """Fire every rule whose condition holds (respecting min_samples and cooldown); returns the fired."""
    now = time.time() if now is None else now
    fired = []
    for rule in config.rules:
        value = metrics.get(rule.metric)
        if value is None or n_samples < rule.min_samples or not rule.holds(value):
            continue
        last = store.last_fired(rule.name)
        if last is not None and now - last < rule.cooldown_s:
            continue
        evidence = {"n_samples": n_samples, "rule": asdict(rule), "metrics": metrics}
        alert = store.add(rule, value, model_version, evidence, now)
        fired.append(alert)
        if config.webhook:
            post_webhook(config.webhook, alert)
    return fired


def post_webhook(url: str, alert: dict, timeout: float = 5.0) -> bool:
    """POST the alert as JSON; a failing webhook is reported in the return value, never raised."""
    body = json.dumps(alert, default=str).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False
