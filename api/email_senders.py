"""Email senders for magic links (`ledger.ports.EmailSender`): Amazon SES v2, SMTP, and a printing
sender for `dev`. Each `send` blocks (the use case runs it in a thread) and has a timeout; each
`ready()` checks the real thing (SES: the sender identity is verified for sending; SMTP: the
server answers EHLO/NOOP) and is called by the readiness probe, never on the event loop.
"""

from __future__ import annotations

import email.message
import smtplib
import ssl
import sys
import threading
from typing import Any

from ledger.ports import EmailDeliveryError, EmailMessage, Readiness

from .signin_config import EmailLinkSettings, SmtpTarget

TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 3.0


class SesSender:
    name = "ses"

    def __init__(self, settings: EmailLinkSettings, *, access_key_id: str | None = None,
                 secret_access_key: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.from_address = settings.from_address
        kwargs: dict[str, Any] = {"region_name": settings.ses_region,
                                  "config": Config(connect_timeout=5, read_timeout=TIMEOUT_S,
                                                   retries={"total_max_attempts": 2, "mode": "standard"})}
        if settings.ses_endpoint_url:
            kwargs["endpoint_url"] = settings.ses_endpoint_url
        if access_key_id and secret_access_key:
            kwargs["aws_access_key_id"] = access_key_id
            kwargs["aws_secret_access_key"] = secret_access_key
        self._client = boto3.session.Session().client("sesv2", **kwargs)

    def send(self, message: EmailMessage) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.send_email(
                FromEmailAddress=self.from_address,
                Destination={"ToAddresses": [message.to]},
                Content={"Simple": {"Subject": {"Data": message.subject, "Charset": "UTF-8"},
                                    "Body": {"Text": {"Data": message.text, "Charset": "UTF-8"},
                                             "Html": {"Data": message.html, "Charset": "UTF-8"}}}},
            )
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise EmailDeliveryError(f"SES {err.get('Code', 'error')}: {str(err.get('Message', ''))[:200]}") from None
        except BotoCoreError as exc:
            raise EmailDeliveryError(f"SES unreachable: {type(exc).__name__}") from None

    def ready(self) -> Readiness:
        """Ready when SES says the sender address (or its domain) is verified for sending."""
        from botocore.exceptions import BotoCoreError, ClientError

        domain = self.from_address.rpartition("@")[2]
        last = ""
        for identity in (self.from_address, domain):
            try:
                found = self._client.get_email_identity(EmailIdentity=identity)
            except ClientError as exc:
                last = str(exc.response.get("Error", {}).get("Code", "error"))
                continue
            except BotoCoreError as exc:
                return Readiness("unready", f"SES unreachable: {type(exc).__name__}")
            # SES sets VerifiedForSendingStatus once VerificationStatus is SUCCESS; moto's emulation
            # only reports the latter, so either counts.
            if found.get("VerifiedForSendingStatus") or found.get("VerificationStatus") == "SUCCESS":
                return Readiness("ready", f"SES identity {identity} verified for sending")
            last = f"identity {identity} is not verified for sending"
        return Readiness("unready", f"SES sender {self.from_address} is not verified ({last}); see runbook "
                                    "§email-sender")


class SmtpSender:
    name = "smtp"

    def __init__(self, settings: EmailLinkSettings) -> None:
        assert settings.smtp is not None  # noqa: S101  type narrowing of an invariant established just above
        self.target: SmtpTarget = settings.smtp
        self.from_address = settings.from_address

    def _connect(self, timeout: float) -> smtplib.SMTP:
        t = self.target
        context = ssl.create_default_context()
        if t.tls == "implicit":
            conn: smtplib.SMTP = smtplib.SMTP_SSL(t.host, t.port, timeout=timeout, context=context)
            conn.ehlo()
        else:
            conn = smtplib.SMTP(t.host, t.port, timeout=timeout)
            conn.ehlo()
            if t.tls == "starttls" or (t.tls == "starttls-opportunistic" and conn.has_extn("starttls")):
                conn.starttls(context=context)
                conn.ehlo()
        if t.username:
            conn.login(t.username, t.password or "")
        return conn

    def send(self, message: EmailMessage) -> None:
        msg = email.message.EmailMessage()
        msg["From"] = self.from_address
        msg["To"] = message.to
        msg["Subject"] = message.subject
        msg.set_content(message.text)
        msg.add_alternative(message.html, subtype="html")
        try:
            conn = self._connect(TIMEOUT_S)
            try:
                conn.send_message(msg)
            finally:
                try:
                    conn.quit()
                except (smtplib.SMTPException, OSError):
                    pass
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise EmailDeliveryError(f"SMTP {self.target.host}:{self.target.port}: {type(exc).__name__}: "
                                     f"{str(exc)[:200]}") from None

    def ready(self) -> Readiness:
        try:
            conn = self._connect(PROBE_TIMEOUT_S)
            try:
                code, _ = conn.noop()
            finally:
                try:
                    conn.quit()
                except (smtplib.SMTPException, OSError):
                    pass
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            return Readiness("unready", f"SMTP {self.target.host}:{self.target.port}: {type(exc).__name__}")
        if code != 250:
            return Readiness("unready", f"SMTP {self.target.host}:{self.target.port}: NOOP answered {code}")
        return Readiness("ready", f"SMTP {self.target.host}:{self.target.port} answers")


class PrintSender:
    """`dev` only (refused at boot without `BROKER_DEV_MODE=true`): the message goes to stdout, so
    the developer can open the link. Never a log record."""

    name = "print"

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: EmailMessage) -> None:
        out = self._stream or sys.stdout
        with self._lock:
            out.write(f"--- email to {message.to}: {message.subject} ---\n{message.text}--- end of email ---\n")
            out.flush()

    def ready(self) -> Readiness:
        return Readiness("ready", "printing sender (dev mode): sign-in links are printed to stdout")


def build_sender(settings: EmailLinkSettings, sts: Any = None) -> Any:
    if settings.sender == "ses":
        return SesSender(settings, access_key_id=getattr(sts, "access_key_id", None),
                         secret_access_key=getattr(sts, "secret_access_key", None))
    if settings.sender == "smtp":
        return SmtpSender(settings)
    return PrintSender()
