"""Short alerts to duty officers' Telegram chats, beside the mail.

A chat is read faster than a mailbox, but it is also shared, forwarded and kept on phones, so
the alert says only what makes an officer act: how severe, what kind, which school, whether a
child is in danger now, the deadline, and the signed link to the incident's page (the same
link its mail carries). What the reporter wrote and who they are stay in the mail.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import httpx

from consumers.notifier.sender import SendError
from schemas.ids import event_id
from schemas.notifications import NotificationKind, NotificationRequest

HANOI = ZoneInfo("Asia/Ho_Chi_Minh")

_SEVERITY = {
    "critical": "KHẨN CẤP",
    "high": "CAO",
    "medium": "TRUNG BÌNH",
    "low": "THẤP",
}
_KIND = {
    NotificationKind.first_notice: "Sự việc mới",
    NotificationKind.reminder: "Nhắc: chưa xác nhận",
    NotificationKind.escalation: "Chuyển cấp: cấp dưới chưa xác nhận",
    NotificationKind.update: "Có thêm báo cáo",
    NotificationKind.acknowledged: "Đã có đơn vị xác nhận",
    NotificationKind.resolved: "Đã xử lý xong",
    NotificationKind.review: "Cần người xem lại mức độ",
}


def telegram_message_id(req: NotificationRequest, chat_id: int) -> str:
    return "tg_" + event_id("telegram", req.notification_id, str(chat_id))


def _when(value: datetime) -> str:
    return value.astimezone(HANOI).strftime("%H:%M %d/%m/%Y")


def render_alert(req: NotificationRequest, action_url: str | None) -> str:
    """A few lines in Vietnamese, no report text and no contact details."""
    place = req.school_name + (f" ({req.district_name})" if req.district_name else "")
    lines = [
        f"[{_SEVERITY[req.severity.value]}] {_KIND[req.kind]}: {req.category.value}",
        f"Trường: {place}",
    ]
    if req.immediate_danger:
        lines.append("Có em đang gặp nguy hiểm ngay lúc này.")
    if req.kind not in (NotificationKind.acknowledged, NotificationKind.resolved):
        lines.append(f"Cần xác nhận trước {_when(req.ack_due_at)} (giờ Hà Nội)")
    if req.report_count > 1:
        lines.append(f"Số báo cáo: {req.report_count}")
    lines.append(f"Mã: {', '.join(req.tracking_codes[:3])}")
    if action_url:
        lines.append(f"Xác nhận, xem chi tiết: {action_url}")
    return "\n".join(lines)


class TelegramAlerts:
    """Sends alerts with the bot's token (``sendMessage``); ``token`` empty: none can go."""

    def __init__(
        self, token: str, api_base: str = "https://api.telegram.org", timeout_s: float = 10.0
    ) -> None:
        self._api = f"{api_base.rstrip('/')}/bot{token}" if token else None
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None

    async def send(self, chat_id: int, text: str) -> None:
        if self._api is None:
            raise SendError("the notifier has no Telegram bot token", transient=False)
        if self._client is None:  # made on the event loop that uses it
            self._client = httpx.AsyncClient(timeout=self._timeout_s)
        try:
            resp = await self._client.post(
                f"{self._api}/sendMessage",
                json={"chat_id": chat_id, "text": text, "disable_web_page_preview": True},
            )
        except httpx.HTTPError as exc:
            # The URL holds the token: only the kind of failure is kept.
            raise SendError(f"Telegram unreachable: {type(exc).__name__}", transient=True) from exc
        if resp.status_code == 200:
            return
        code = resp.status_code
        raise SendError(
            f"Telegram answered {code}", transient=code == 429 or code >= 500, code=code
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
