"""The system account each user's local instances run as: assigned once, unique forever.

System account names are at most 32 characters, user names up to 63, so a
long user name cannot simply be prefixed.  The hub assigns every user a name
on first use and stores it (:class:`~labhub.models.SystemAccount`, keyed by
the name): two users can never get the same account, a user keeps theirs, and
the account of a deleted user is never handed to anybody else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from labhub.models import SystemAccount, User, utcnow

NAME_MAX = 32  # useradd's limit


def candidates(prefix: str, user: str) -> Iterator[str]:
    """Account names for ``user``, best first; each at most 32 characters.

    ``prefix + user`` when it fits (what earlier versions used, so existing
    accounts are kept), then the user name cut short with a hash of the whole
    name, then the same with a counter.
    """
    plain = prefix + user
    if len(plain) <= NAME_MAX:
        yield plain
    digest = hashlib.sha256(user.encode()).hexdigest()
    room = NAME_MAX - len(prefix)
    keep = max(1, room - 8)
    stem = f"{prefix}{user[:keep].rstrip('-')}-{digest[:6]}"[:NAME_MAX]
    yield stem
    for n in range(2, 10_000):
        suffix = f"-{n}"
        yield stem[:NAME_MAX - len(suffix)] + suffix


async def assign(session: AsyncSession, *, user: User, prefix: str, reserved: frozenset[str] = frozenset()) -> str:
    """The system account name of ``user``, assigning the first free candidate on first use.

    ``reserved`` are names no user may have (e.g. the instance accounts' group).
    Safe against concurrent launches: the name is the table's key, and the
    user's row is unique, so a lost race just reads the winner's choice.
    """
    row = (await session.execute(select(SystemAccount.name).where(SystemAccount.user_id == user.id))).scalar()
    if row is not None:
        return row
    for name in candidates(prefix, user.name):
        if name in reserved or await session.get(SystemAccount, name) is not None:
            continue
        try:
            async with session.begin_nested():
                session.add(SystemAccount(name=name, user_id=user.id, created_at=utcnow()))
        except IntegrityError:
            existing = (await session.execute(
                select(SystemAccount.name).where(SystemAccount.user_id == user.id))).scalar()
            if existing is not None:
                return existing
            continue
        return name
    raise RuntimeError(f"no free system account name for {user.name!r}")  # pragma: no cover
