"""Outgoing mail over SMTP (approval requests and decisions).

Sending happens outside any database transaction, in a worker thread
(``smtplib`` blocks).  A failure is logged and reported to the caller as
``False``; it never undoes the decision that caused the mail.  Without an
SMTP host the mail is logged instead, so a hub without mail still works.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from labhub.settings import SmtpSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mail:
    to: tuple[str, ...]
    subject: str
    body: str


class Mailer:
    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings

    @property
    def configured(self) -> bool:
        return bool(self.settings.host)

    def build(self, mail: Mail) -> EmailMessage:
        """The message; header values with line breaks are refused by ``EmailMessage``."""
        message = EmailMessage()
        message["From"] = self.settings.sender
        message["To"] = ", ".join(mail.to)
        message["Subject"] = mail.subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain="labhub")
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(mail.body)
        return message

    async def send(self, mail: Mail) -> bool:
        """Deliver ``mail``; True when the SMTP server accepted it."""
        if not mail.to:
            return False
        if not self.configured:
            log.warning("no SMTP host configured (LABHUB_SMTP__HOST): not sending %r to %s:\n%s",
                        mail.subject, ", ".join(mail.to), mail.body)
            return False
        try:
            await asyncio.to_thread(self._send_sync, self.build(mail))
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            log.error("could not send %r to %s: %s", mail.subject, ", ".join(mail.to), exc)
            return False
        log.info("sent %r to %s", mail.subject, ", ".join(mail.to))
        return True

    def _send_sync(self, message: EmailMessage) -> None:
        s = self.settings
        assert s.host is not None
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if s.security == "tls":
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout, context=context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout)
        with smtp:
            if s.security == "starttls":
                smtp.starttls(context=context)
            if s.username:
                smtp.login(s.username, s.password.get_secret_value() if s.password else "")
            smtp.send_message(message)
