"""E-mail notifications over SMTP (``smtplib``), in plain words."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage
from typing import Any

from finsecure.response.actions.base import ActionContext, PermanentError, Responder, RetryableError

__all__ = ["EmailNotify"]


class EmailNotify(Responder):
    """Send ``params.to`` (an address or a list) a message about the target, through ``smtp_host``."""

    action_type = "email"

    def message(self, ctx: ActionContext) -> EmailMessage:
        to = ctx.params.get("to")
        recipients = [to] if isinstance(to, str) else list(to or [])
        if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
            raise PermanentError(f"no valid recipient in {to!r}")
        message = EmailMessage()
        message["From"] = ctx.settings.smtp_from
        message["To"] = ", ".join(recipients)
        title = str(ctx.payload.get("title") or f"{ctx.target_type} {ctx.target_id}")
        message["Subject"] = str(ctx.params.get("subject") or f"[FinSecure] {title}")[:200]
        message["Message-ID"] = f"<{ctx.idempotency_key}@finsecure>"
        message.set_content(str(ctx.payload.get("text") or self.describe(ctx)))
        return message

    def execute(self, ctx: ActionContext) -> dict[str, Any]:
        settings = ctx.settings
        if not settings.smtp_host:
            raise PermanentError("no SMTP server configured (FINSECURE_SMTP_HOST)")
        message = self.message(ctx)
        try:
            with smtplib.SMTP(
                settings.smtp_host, settings.smtp_port, timeout=settings.response_timeout_s
            ) as smtp:
                if settings.smtp_starttls:
                    smtp.starttls()
                refused = smtp.send_message(message)
        except smtplib.SMTPRecipientsRefused as exc:
            raise PermanentError(f"every recipient was refused: {sorted(exc.recipients)}") from exc
        except smtplib.SMTPResponseException as exc:
            if 400 <= exc.smtp_code < 500:
                raise RetryableError(f"the mail server said try later ({exc.smtp_code})") from exc
            raise PermanentError(f"the mail server refused the message ({exc.smtp_code})") from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise RetryableError(f"could not reach the mail server: {exc}") from exc
        return {"to": message["To"], "refused": sorted(refused)}

    def describe(self, ctx: ActionContext) -> str:
        return f"e-mail {ctx.params.get('to')} about {ctx.target_type} {ctx.target_id}"
