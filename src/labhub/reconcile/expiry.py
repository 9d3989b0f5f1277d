"""The expiry warning: owners hear that an instance expires soon, once per expiry.

Each reconcile pass looks for this replica's instances that are up (running, unknown or
sleeping) and expire within ``LABHUB_EXPIRY_WARNING_MINUTES`` (0: no warnings), and not
warned yet for this expiry (``expiry_warned_at`` is NULL; an extension clears it).  Each is
marked with one conditional UPDATE, so of several replicas (or passes) exactly one warns;
the same transaction records an event (``expiry_warning``, shown on the instance's page and
in its stream).  After the commit, when mail is configured and the owner has an address,
one mail goes out; a mail that fails is logged, not retried.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.auth.mail import Mail, Mailer
from labhub.models import ROUTED_OR_ASLEEP, Event, Instance, User
from labhub.services import extend
from labhub.services.lifecycle import bound_message, record_event

if TYPE_CHECKING:
    from labhub.reconcile.reconciler import Parts

log = logging.getLogger(__name__)
Tx = Callable[[], AbstractAsyncContextManager[AsyncSession]]
UP = tuple(s.value for s in ROUTED_OR_ASLEEP)
BATCH = 500  # warnings per pass at most (the next pass takes the rest)


async def warn_expiring(parts: Parts, tx: Tx, now: dt.datetime) -> int:
    """Warn the owners of this replica's instances that expire within the window; how many were warned."""
    minutes = parts.settings.expiry_warning_minutes
    if minutes <= 0:
        return 0
    async with parts.sessions() as session:
        due = list(await session.scalars(select(Instance.id).where(
            Instance.claimed_by == parts.replica, Instance.status.in_(UP), Instance.expiry_warned_at.is_(None),
            Instance.expires_at > now, Instance.expires_at <= now + dt.timedelta(minutes=minutes)).limit(BATCH)))
    if not due:
        return 0
    mailer = Mailer(parts.settings.smtp)
    mails: list[Mail] = []
    warned = 0
    for iid in due:
        async with tx() as session:
            # the mark is the claim: a pass (here or on another replica) that lost it warns nobody
            marked = await session.execute(
                update(Instance).where(Instance.id == iid, Instance.expiry_warned_at.is_(None),
                                       Instance.status.in_(UP))
                .values(expiry_warned_at=now).execution_options(synchronize_session=False))
            if marked.rowcount != 1:
                continue
            inst = await session.get(Instance, iid)
            if inst is None:
                continue
            owner: User = inst.owner
            tpl = parts.catalog().get(inst.template)
            left = extend.room(inst, tpl)
            title = tpl.title if tpl is not None else inst.template
            message = warning_text(inst, left, title, now=now)
            event = Event(instance_id=inst.id, at=now, status=inst.status, reason="expiry_warning",
                          message=bound_message(message))
            session.add(event)
            record_event(session, event, owner_id=inst.owner_id)
            if mailer.configured and owner.email:
                mails.append(warning_mail(inst, owner.email, message, base_url=parts.settings.base_url))
        warned += 1
        log.info("instance %s: expiry warning (expires %s)", iid, inst.expires_at.isoformat())
    for mail in mails:  # after the commits: no transaction waits on the SMTP server
        await mailer.send(mail)
    return warned


def warning_text(inst: Instance, left: extend.Room, title: str, *, now: dt.datetime) -> str:
    """The warning, for people (the event's message and the mail's first paragraph)."""
    minutes = max(0, round((inst.expires_at - now).total_seconds() / 60))
    when = f"{inst.expires_at:%Y-%m-%d %H:%M} UTC"
    head = f"{inst.name} expires in {minutes} min, at {when}, and is stopped then"
    if left.left > extend.EPSILON:
        return (f"{head}. You can extend it by {extend.describe_room(left, title)}: on its page, or with "
                f"`labhub extend {inst.name} --hours H`")
    return f"{head}; {extend.describe_room(left, title)}"


def warning_mail(inst: Instance, to: str, message: str, *, base_url: str) -> Mail:
    page = f"{base_url}/instances/{inst.id}"
    return Mail(to=(to,), subject=f"[LabHub] {inst.name} expires soon", body=(
        f"Hello {inst.owner.name},\n\n{message}\n\nIts page: {page}\n\n"
        "Save what you need before then: a stopped instance's processes are gone (your home stays).\n"))
