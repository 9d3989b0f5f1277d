"""Identity and access: sign-up with approval, OIDC login, login throttling, mail, audit.

``labhub.auth.routes.mount(app)`` adds the pages (/signup, /oauth/..., /approvals)
and the two guards (the pending-account gate and the login throttle).  The
logic lives in plain modules (no FastAPI) that the API, the pages and the CLI
share: :mod:`audit`, :mod:`throttle`, :mod:`mail`, :mod:`providers`,
:mod:`oidc`, :mod:`identities`.
"""
