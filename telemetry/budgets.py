"""Monthly budgets: a banner from 80 %, new messages refused from 100 %."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from threads.models import Organization

from .models import Budget, ProviderCall

WARN_AT = 80


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    spent: Decimal
    limit: Decimal | None  # None: no budget
    percent: int | None

    @property
    def level(self) -> str:
        """ "none", "ok", "warn" (from 80 %) or "over" (from 100 %)."""
        if self.percent is None:
            return "none"
        if self.percent >= 100:
            return "over"
        return "warn" if self.percent >= WARN_AT else "ok"


def month_start(now: datetime | None = None) -> datetime:
    now = timezone.localtime(now or timezone.now())
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def budget_status(org: Organization, budget: Budget | None = None) -> BudgetStatus:
    """This month's spend against the organisation's budget (sync ORM; `budget` if the
    caller has read it already)."""
    spent = ProviderCall.objects.spend_since(org, month_start())
    budget = budget or Budget.objects.filter(org=org).first()
    if budget is None:
        return BudgetStatus(spent, None, None)
    if budget.monthly_usd <= 0:
        return BudgetStatus(spent, budget.monthly_usd, 100)
    percent = int(spent * 100 / budget.monthly_usd)
    return BudgetStatus(spent, budget.monthly_usd, percent)


def budget_refusal(org: Organization) -> str:
    """Why a new message must be refused, for a person to read; "" when it may be sent."""
    # Without a budget nothing is refused: skip summing the month's spend (every send asks).
    budget = Budget.objects.filter(org=org).first()
    if budget is None:
        return ""
    status = budget_status(org, budget)
    if status.level != "over":
        return ""
    return (
        f"{org.name} has used its monthly budget (${status.spent:.2f} of ${status.limit:.2f}), "
        "so new messages are paused until next month. An organisation admin can raise the budget."
    )
