"""E-mail delivery of notification requests: render (pure), send (SMTP), worker (Kafka loop)."""

from consumers.notifier.render import message_id_for, render_email
from consumers.notifier.sender import SendError, send
from consumers.notifier.worker import Notifier

__all__ = ["Notifier", "SendError", "message_id_for", "render_email", "send"]
