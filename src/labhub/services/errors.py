"""Errors services raise; the API maps them to HTTP statuses."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class.  ``fields`` maps form/JSON field names to messages; ``headers`` go into the answer."""

    status = 400

    def __init__(self, message: str, *, fields: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.headers = headers or {}


class Invalid(ServiceError):
    status = 422


class NotFound(ServiceError):
    status = 404


class Forbidden(ServiceError):
    status = 403


class Conflict(ServiceError):
    status = 409


class Unavailable(ServiceError):
    """Something the hub depends on (a backend) cannot be reached now; worth retrying later."""

    status = 503


class TooLarge(ServiceError):
    """An upload (or what it would bring a user's storage to) is over a limit."""

    status = 413
