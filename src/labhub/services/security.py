"""Secrets: password hashing, random tokens, digests, constant-time checks."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user does not exist, so a login takes as long
    either way and does not reveal which names exist.  Made on first use: an
    argon2 hash costs a tenth of a second, which the hub's start should not pay."""
    return _hasher.hash("not a real password")

TOKEN_PREFIX = "lh_"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when ``password`` matches; always spends one argon2 verification."""
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


def new_token() -> str:
    """A bearer secret: ``lh_`` + 256 random bits."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_session_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """SHA-256 hex of a high-entropy secret; what we store instead of it.

    Secrets are looked up by this digest, so comparing them never touches the
    secret itself (no timing side channel on the stored value).
    """
    return hashlib.sha256(secret.encode()).hexdigest()


def same(a: str | bytes, b: str | bytes) -> bool:
    """Constant-time equality."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    return hmac.compare_digest(a, b)


def derive(key: bytes, purpose: str, value: str) -> str:
    """A secret derived from the hub key, e.g. an instance's upstream token."""
    return hmac.new(key, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()
