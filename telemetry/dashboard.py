"""The figures behind the admin dashboard, read from rollups (never from raw rows)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypedDict

from django.db.models import QuerySet
from django.utils import timezone

from threads.models import Membership, Organization

from . import histograms
from .models import Probe, Rollup

# Service targets: (comparison, value). Times in ms, rates as fractions.
TARGETS = {
    "ttft_p95": ("le", 1500),
    "latency_p95": ("le", 6000),
    "latency_p50": ("le", 3500),
    "error_rate": ("lt", 0.01),
    "uptime": ("ge", 0.995),
}
RANGES = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")
VALUES = (
    "start",
    "provider",
    "model",
    "requests",
    "errors",
    "cancelled",
    "retries",
    "fallbacks",
    "replies",
    "prompt_tokens",
    "completion_tokens",
    "unpriced",
    "cost_usd",
    "vendor_cost_usd",
    "vendor_ours_usd",
    "ttft_hist",
    "latency_hist",
    "overhead_hist",
    "errors_by_class",
)


def meets(name: str, value: float | None) -> bool | None:
    """Whether `value` meets the target called `name`; None when there is no value."""
    if value is None or name not in TARGETS:
        return None
    op, target = TARGETS[name]
    return {"le": value <= target, "lt": value < target, "ge": value >= target}[op]


def dashboard_orgs(user: Any) -> QuerySet[Organization] | None:
    """Organisations whose figures `user` may see; None means all (superusers)."""
    if user.is_superuser:
        return None
    roles = (Membership.Role.OWNER, Membership.Role.ADMIN)
    return Organization.objects.filter(memberships__user=user, memberships__role__in=roles)


def may_see_dashboard(user: Any) -> bool:
    if not (user.is_active and user.is_staff):
        return False
    orgs = dashboard_orgs(user)
    return orgs is None or orgs.exists()


@dataclass(slots=True)
class Window:
    key: str  # 24h, 7d, 30d or custom
    start: datetime
    end: datetime
    granularity: str

    @classmethod
    def from_params(cls, params: Any, now: datetime | None = None) -> Window:
        now = now or timezone.now()
        key = params.get("range", "24h")
        if key == "custom":
            try:
                first = date.fromisoformat(params.get("start", ""))
                last = date.fromisoformat(params.get("end", ""))
            except ValueError:
                key = "24h"
            else:
                tz = timezone.get_current_timezone()
                start = datetime.combine(min(first, last), time(), tz)
                end = datetime.combine(max(first, last) + timedelta(days=1), time(), tz)
                return cls.snap("custom", start, end)
        if key not in RANGES:
            key = "24h"
        return cls.snap(key, now - RANGES[key], now)

    @classmethod
    def snap(cls, key: str, start: datetime, end: datetime) -> Window:
        """Align to whole hours (up to two days) or whole days (longer ranges)."""
        if end - start <= timedelta(days=2):
            return cls(key, start.replace(minute=0, second=0, microsecond=0), end, "hour")
        day = start.replace(hour=0, minute=0, second=0, microsecond=0)
        return cls(key, day, end, "day")


class ModelRow(TypedDict):
    provider: str
    model: str
    requests: int
    error_rate: float | None
    error_pct: str
    ttft_p95: int | None
    latency_p95: int | None
    tokens: int
    cost: Decimal
    unpriced: int
    cost_per_1k: Decimal | None
    vendor_cost: Decimal | None
    vendor_disagrees: bool


@dataclass(slots=True)
class _Sum:
    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    retries: int = 0
    fallbacks: int = 0
    replies: int = 0
    tokens: int = 0
    unpriced: int = 0
    cost: Decimal = Decimal(0)
    vendor: Decimal = Decimal(0)
    vendor_ours: Decimal = Decimal(0)
    ttft: list[int] = field(default_factory=histograms.empty)
    latency: list[int] = field(default_factory=histograms.empty)
    overhead: list[int] = field(default_factory=histograms.empty)

    def add(self, row: dict[str, Any], hists: bool = True) -> None:
        self.requests += row["requests"]
        self.errors += row["errors"]
        self.cancelled += row["cancelled"]
        self.retries += row["retries"]
        self.fallbacks += row["fallbacks"]
        self.replies += row["replies"]
        self.tokens += row["prompt_tokens"] + row["completion_tokens"]
        self.unpriced += row["unpriced"]
        self.cost += row["cost_usd"]
        self.vendor += row["vendor_cost_usd"]
        self.vendor_ours += row["vendor_ours_usd"]
        if hists:
            histograms.merge(self.ttft, row["ttft_hist"])
            histograms.merge(self.latency, row["latency_hist"])
            histograms.merge(self.overhead, row["overhead_hist"])

    def add_sum(self, other: _Sum) -> None:
        for name in ("requests", "errors", "cancelled", "retries", "fallbacks", "replies"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name in ("tokens", "unpriced", "cost", "vendor", "vendor_ours"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        histograms.merge(self.ttft, other.ttft)
        histograms.merge(self.latency, other.latency)
        histograms.merge(self.overhead, other.overhead)

    @property
    def error_rate(self) -> float | None:
        counted = self.requests - self.cancelled
        return self.errors / counted if counted else None


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals, per-model sums, per-bucket series and error classes of rollup rows."""
    total = _Sum()
    by_model: dict[tuple[str, str], _Sum] = defaultdict(_Sum)
    by_time: dict[datetime, _Sum] = defaultdict(_Sum)
    spend: dict[datetime, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    classes: dict[str, int] = defaultdict(int)
    for row in rows:
        # Each row's histograms are merged twice (per model, per time), the total from models.
        by_model[(row["provider"], row["model"])].add(row)
        at = by_time[row["start"]]
        at.add(row, hists=False)
        histograms.merge(at.ttft, row["ttft_hist"])
        histograms.merge(at.latency, row["latency_hist"])
        spend[row["start"]][row["model"]] += row["cost_usd"]
        for cls, n in row["errors_by_class"].items():
            classes[cls] += n
    for per_model in by_model.values():
        total.add_sum(per_model)
    return {
        "total": total,
        "by_model": by_model,
        "by_time": dict(sorted(by_time.items())),
        "spend": spend,
        "classes": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
    }


def _tile(
    label: str, value: str, target_name: str = "", raw: float | None = None, target: str = ""
) -> dict[str, Any]:
    return {"label": label, "value": value, "target": target, "ok": meets(target_name, raw)}


def _ms(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value} ms"


def _pct(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f} %"


def _money(value: Decimal) -> str:
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.4f}"


def tiles(total: _Sum, uptime: float | None) -> list[dict[str, Any]]:
    p = histograms.percentile
    ttft50, ttft95 = p(total.ttft, 50), p(total.ttft, 95)
    lat50, lat95 = p(total.latency, 50), p(total.latency, 95)
    spend = _money(total.cost)
    if total.unpriced:
        spend += f" + {total.unpriced:,} unpriced"
    return [
        _tile("Spend", spend),
        _tile("Tokens", f"{total.tokens:,}"),
        _tile("Requests", f"{total.requests:,}"),
        _tile("Error rate", _pct(total.error_rate), "error_rate", total.error_rate, "< 1 %"),
        _tile("TTFT P50", _ms(ttft50)),
        _tile("TTFT P95", _ms(ttft95), "ttft_p95", ttft95, "≤ 1.5 s"),
        _tile("Latency P50", _ms(lat50), "latency_p50", lat50, "≤ 3.5 s"),
        _tile("Latency P95", _ms(lat95), "latency_p95", lat95, "≤ 6 s"),
        _tile("Our overhead P95", _ms(p(total.overhead, 95))),
        _tile("Retries", f"{total.retries:,}"),
        _tile("Fallbacks", f"{total.fallbacks:,}"),
        _tile("Uptime", _pct(uptime, 3), "uptime", uptime, "≥ 99.5 %"),
    ]


def model_rows(by_model: dict[tuple[str, str], _Sum]) -> list[ModelRow]:
    out: list[ModelRow] = []
    for (provider, model), s in sorted(by_model.items(), key=lambda kv: -kv[1].cost):
        disagrees = bool(s.vendor) and abs(s.vendor - s.vendor_ours) > max(
            Decimal("0.000001"), s.vendor * Decimal("0.02")
        )
        out.append(
            ModelRow(
                provider=provider,
                model=model,
                requests=s.requests,
                error_rate=s.error_rate,
                error_pct=_pct(s.error_rate),
                ttft_p95=histograms.percentile(s.ttft, 95),
                latency_p95=histograms.percentile(s.latency, 95),
                tokens=s.tokens,
                cost=s.cost,
                unpriced=s.unpriced,
                cost_per_1k=(s.cost * 1000 / s.replies) if s.replies and not s.unpriced else None,
                vendor_cost=s.vendor if s.vendor else None,
                vendor_disagrees=disagrees,
            )
        )
    return out


# --- charts: server-rendered SVG geometry ---------------------------------------------------

W, H, PAD_L, PAD_B = 720, 200, 56, 24


def _label(when: datetime, granularity: str) -> str:
    when = timezone.localtime(when)
    return when.strftime("%H:%M" if granularity == "hour" else "%d %b")


def spend_chart(
    spend: dict[datetime, dict[str, Decimal]], starts: list[datetime], granularity: str
) -> dict[str, Any]:
    models = sorted({m for per in spend.values() for m in per})
    colors = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    peak = max((sum(spend[s].values(), Decimal(0)) for s in starts), default=Decimal(0))
    slot = (W - PAD_L) / max(1, len(starts))
    bars = []
    for i, start in enumerate(starts):
        y = float(H - PAD_B)
        for model in models:
            value = spend[start].get(model, Decimal(0))
            if not value or not peak:
                continue
            height = float(value / peak) * (H - PAD_B - 8)
            y -= height
            bars.append(
                {
                    "x": round(PAD_L + i * slot + 1, 1),
                    "y": round(y, 1),
                    "w": round(max(1.0, slot - 2), 1),
                    "h": round(height, 1),
                    "color": colors[model],
                    "title": f"{_label(start, granularity)} {model}: {_money(value)}",
                }
            )
    return {
        "bars": bars,
        "legend": [{"model": m, "color": colors[m]} for m in models],
        "peak": _money(peak),
        "ticks": _ticks(starts, granularity, slot),
    }


def _ticks(starts: list[datetime], granularity: str, slot: float) -> list[dict[str, Any]]:
    step = max(1, len(starts) // 8)
    return [
        {"x": round(PAD_L + i * slot + slot / 2, 1), "label": _label(s, granularity)}
        for i, s in enumerate(starts)
        if i % step == 0
    ]


def line_chart(
    by_time: dict[datetime, _Sum], starts: list[datetime], granularity: str, hist: str, target: int
) -> dict[str, Any]:
    p50s = [
        histograms.percentile(getattr(by_time[s], hist), 50) if s in by_time else None
        for s in starts
    ]
    p95s = [
        histograms.percentile(getattr(by_time[s], hist), 95) if s in by_time else None
        for s in starts
    ]
    peak = max([target, *(v for v in p95s if v is not None)])
    slot = (W - PAD_L) / max(1, len(starts))

    def y(ms: float) -> float:
        return round(H - PAD_B - ms / peak * (H - PAD_B - 8), 1)

    def points(values: list[int | None]) -> str:
        return " ".join(
            f"{round(PAD_L + i * slot + slot / 2, 1)},{y(v)}"
            for i, v in enumerate(values)
            if v is not None
        )

    return {
        "p50": points(p50s),
        "p95": points(p95s),
        "target_y": y(target),
        "target": _ms(target),
        "peak": _ms(peak),
        "ticks": _ticks(starts, granularity, slot),
    }


def error_chart(classes: dict[str, int]) -> list[dict[str, Any]]:
    peak = max(classes.values(), default=0)
    return [
        {"name": name, "count": n, "w": round(n / peak * (W - 260), 1), "y": i * 22}
        for i, (name, n) in enumerate(list(classes.items())[:12])
    ]


def bucket_starts(window: Window) -> list[datetime]:
    step = timedelta(hours=1) if window.granularity == "hour" else timedelta(days=1)
    out, at = [], window.start
    while at < window.end:
        out.append(at)
        at += step
    return out


def build(params: Any, user: Any, now: datetime | None = None) -> dict[str, Any]:
    """Everything the dashboard template shows, for `user`'s organisations."""
    window = Window.from_params(params, now)
    allowed = dashboard_orgs(user)
    orgs_choice = list(
        (allowed if allowed is not None else Organization.objects.all()).order_by("slug")
    )
    org = next((o for o in orgs_choice if o.slug == params.get("org")), None)
    scope = [org] if org is not None else allowed
    base = Rollup.objects.window(window.granularity, window.start, window.end, scope)
    choices = sorted(set(base.values_list("provider", "model").distinct()))
    qs = base
    provider, model = params.get("provider", ""), params.get("model", "")
    if provider:
        qs = qs.filter(provider=provider)
    if model:
        qs = qs.filter(model=model)
    summary = summarise(list(qs.values(*VALUES)))
    uptime, good, expected = Probe.objects.uptime(window.start, window.end)
    starts = bucket_starts(window)
    return {
        "window": window,
        "ranges": [*RANGES, "custom"],
        "orgs": orgs_choice,
        "org": org,
        "providers": sorted({p for p, _ in choices}),
        "models": sorted({m for _, m in choices}),
        "provider": provider,
        "model": model,
        "start_date": timezone.localtime(window.start).date().isoformat(),
        "end_date": timezone.localtime(window.end).date().isoformat(),
        "tiles": tiles(summary["total"], uptime),
        "probes": {"good": good, "expected": expected},
        "unpriced": summary["total"].unpriced,
        "model_rows": model_rows(summary["by_model"]),
        "spend_chart": spend_chart(summary["spend"], starts, window.granularity),
        "line_charts": [
            ("TTFT", line_chart(summary["by_time"], starts, window.granularity, "ttft", 1500)),
            (
                "Latency",
                line_chart(summary["by_time"], starts, window.granularity, "latency", 6000),
            ),
        ],
        "error_chart": error_chart(summary["classes"]),
        "chart": {"w": W, "h": H, "pad_l": PAD_L, "base": H - PAD_B},
    }
