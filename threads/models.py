from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone


class Organization(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    system_prompt = models.TextField(
        blank=True, help_text="Sent before every conversation; empty uses the site default."
    )
    fallback_models = models.TextField(
        blank=True,
        help_text=(
            "One provider:model per line, tried in order when the requested model fails "
            "before its first token. Empty uses each model's fallbacks from the catalog."
        ),
    )
    continue_partial = models.BooleanField(
        default=False,
        help_text=(
            "When a reply fails mid-way, let the fallback model continue the partial answer "
            "instead of marking the reply failed."
        ),
    )
    created = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.slug

    def fallback_list(self) -> list[str] | None:
        lines = [line.strip() for line in self.fallback_models.splitlines() if line.strip()]
        return lines or None


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        ADMIN = "admin"
        MEMBER = "member"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    org = models.ForeignKey(Organization, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "org"], name="one_membership_per_org")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} ({self.role})"


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked__isnull=True)


class ApiKey(models.Model):
    """A bearer key for the JSON API. Only its SHA-256 is stored; the prefix identifies it."""

    PREFIX_LEN = 12

    org = models.ForeignKey(Organization, models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=PREFIX_LEN, unique=True, editable=False)
    hashed = models.CharField(max_length=64, unique=True, editable=False)
    created = models.DateTimeField(default=timezone.now)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.org})"

    @staticmethod
    def hash(raw: str) -> str:
        return hashlib.sha256(raw.encode()).hexdigest()

    @classmethod
    def issue(cls, org: Organization, name: str = "") -> tuple[ApiKey, str]:
        """Create a key and return it with its raw value, which is never stored."""
        raw = "sk-chat-" + secrets.token_urlsafe(32)
        key = cls.objects.create(
            org=org, name=name, prefix=raw[: cls.PREFIX_LEN], hashed=cls.hash(raw)
        )
        return key, raw


class ThreadQuerySet(models.QuerySet["Thread"]):
    def for_org(self, org: Organization) -> ThreadQuerySet:
        return self.filter(org=org)


class Thread(models.Model):
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    org = models.ForeignKey(Organization, models.CASCADE, related_name="threads")
    creator = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    title = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(blank=True)
    provider = models.CharField(max_length=32, blank=True, help_text="The picker's last choice.")
    model = models.CharField(max_length=200, blank=True)
    archived = models.BooleanField(default=False)
    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now)

    objects = ThreadQuerySet.as_manager()

    class Meta:
        indexes = [
            # The sidebar and GET /api/threads: an organisation's threads, newest first.
            models.Index(fields=["org", "archived", "-updated"], name="thread_org_recent"),
        ]

    def __str__(self) -> str:
        return self.title or f"Thread {self.code}"

    @property
    def display_title(self) -> str:
        return self.title or "New chat"

    @property
    def group_name(self) -> str:
        return f"thread.{self.code}"


class MessageQuerySet(models.QuerySet["Message"]):
    def stale(self, after_s: float) -> MessageQuerySet:
        """Active replies that no process has touched for `after_s` seconds."""
        cutoff = timezone.now() - timedelta(seconds=after_s)
        return self.filter(
            models.Q(heartbeat__lt=cutoff) | models.Q(heartbeat__isnull=True, created__lt=cutoff),
            status__in=Message.ACTIVE,
        )

    def reap_stale(self, after_s: float) -> int:
        """End replies whose process died mid-stream as `interrupted`, keeping their text."""
        return self.stale(after_s).interrupt()

    def interrupt(self) -> int:
        now = timezone.now()
        return self.filter(status__in=Message.ACTIVE).update(
            status=Message.Status.INTERRUPTED,
            finish_reason="error",
            error="The server stopped while writing this reply; retry it.",
            finished=now,
            updated=now,
        )


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        QUEUED = "queued"
        WAITING = "waiting"
        STREAMING = "streaming"
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    ACTIVE = (Status.QUEUED, Status.WAITING, Status.STREAMING)

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    thread = models.ForeignKey(Thread, models.CASCADE, related_name="messages")

    objects = MessageQuerySet.as_manager()
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    sources = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    # The user message this reply answers (assistant rows only).
    reply_to = models.OneToOneField(
        "self", models.CASCADE, null=True, blank=True, related_name="reply"
    )
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    client_id = models.CharField(max_length=64, blank=True)

    requested_provider = models.CharField(max_length=32, blank=True)
    requested_model = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=200, blank=True)
    chain = models.JSONField(default=list, blank=True, help_text="Models tried, in order.")
    finish_reason = models.CharField(max_length=20, blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)

    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_tokens = models.PositiveIntegerField(null=True, blank=True)
    tokens_estimated = models.BooleanField(default=False)
    priced = models.BooleanField(default=True)
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)
    vendor_cost_usd = models.DecimalField(max_digits=14, decimal_places=8, null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)

    created = models.DateTimeField(default=timezone.now)
    updated = models.DateTimeField(default=timezone.now)
    finished = models.DateTimeField(null=True, blank=True)
    # Bumped with every batched save while streaming; the reaper ends replies whose
    # process died (no heartbeat for a while) as `interrupted`.
    heartbeat = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created", "id"]
        indexes = [
            # The thread page and GET /api/threads/{id}/messages.
            models.Index(fields=["thread", "created"], name="message_thread_created"),
            # The reaper: active replies with an old heartbeat.
            models.Index(fields=["status", "heartbeat"], name="message_status_heartbeat"),
        ]
        constraints = [
            # A double submit with the same client id creates one message.
            models.UniqueConstraint(
                fields=["thread", "client_id"],
                condition=~models.Q(client_id=""),
                name="message_client_id_once_per_thread",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.code} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def dom_id(self) -> str:
        return f"msg-{self.code}"

    def usage_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "estimated": self.tokens_estimated,
        }

    def cost_str(self) -> str | None:
        if self.cost_usd is None:
            return None
        return str(self.cost_usd.quantize(Decimal("0.00000001")).normalize())


def add_exchange(
    thread: Thread,
    *,
    content: str,
    provider: str,
    model: str,
    author: Any = None,
    client_id: str = "",
) -> tuple[Message, Message, bool]:
    """Save a user message and its queued reply in one transaction.

    Returns (user message, reply, created). A `client_id` already used in this thread
    returns the existing pair with created=False, so a double submit makes one reply.
    """
    from django.db import IntegrityError

    from . import rows

    # A repeated client_id is found by the unique constraint, not by a query before every
    # insert: repeats are rare, sends are not. The writes go through `rows` (SQL built once):
    # every send makes them, on the core that streams every other reply.
    try:
        now = timezone.now()
        user_message = Message(
            thread=thread,
            role=Message.Role.USER,
            content=content,
            author=author,
            client_id=client_id,
            created=now,
            updated=now,
        )
        reply = Message(
            thread=thread,
            role=Message.Role.ASSISTANT,
            status=Message.Status.QUEUED,
            requested_provider=provider,
            requested_model=model,
            created=now,
            updated=now,
        )
        fields = {"updated": now, "provider": provider, "model": model}
        if not thread.title:
            fields["title"] = _title_from(content)
        rows.insert_pair(user_message, reply, "reply_to", touch=(Thread, thread.pk, fields))
        reply.reply_to = user_message
        for name, value in fields.items():
            setattr(thread, name, value)
    except IntegrityError:
        # This client id was used before (a double submit, a retry): that pair wins.
        existing = _existing_exchange(thread, client_id) if client_id else None
        if existing is None:
            raise
        return (*existing, False)
    return user_message, reply, True


def _existing_exchange(thread: Thread, client_id: str) -> tuple[Message, Message] | None:
    user_message = (
        Message.objects.filter(thread=thread, client_id=client_id, role=Message.Role.USER)
        .select_related("reply")
        .first()
    )
    if user_message is None:
        return None
    reply: Message = user_message.reply  # type: ignore[attr-defined]
    user_message.thread = reply.thread = thread
    return user_message, reply


def _title_from(content: str) -> str:
    first_line = content.strip().splitlines()[0] if content.strip() else ""
    return first_line[:60] + ("…" if len(first_line) > 60 else "")
