"""ORM models.  Import from here: ``from labhub.models import User, Instance``."""

from labhub.models.base import Base, UTCDateTime, utcnow
from labhub.models.folder import Folder
from labhub.models.instance import (
    ACTIVE,
    ROUTED,
    ROUTED_OR_ASLEEP,
    TERMINAL,
    AdmissionLock,
    AuditEvent,
    Event,
    Instance,
    Kind,
    Status,
    awaits_admission,
)
from labhub.models.origin import OriginGrant
from labhub.models.replica import Replica
from labhub.models.share import Share
from labhub.models.user import (
    ApiToken,
    Group,
    Identity,
    LoginSession,
    Membership,
    Role,
    SystemAccount,
    User,
    UserStatus,
)

__all__ = [
    "ACTIVE", "ROUTED", "ROUTED_OR_ASLEEP", "TERMINAL", "AdmissionLock", "ApiToken", "AuditEvent", "Base", "Event", "Folder", "Group", "Identity", "Instance", "Kind",
    "LoginSession", "Membership", "OriginGrant", "Replica", "Role", "Status", "SystemAccount", "UTCDateTime", "User",
    "UserStatus", "Share",
    "awaits_admission", "utcnow",
]
