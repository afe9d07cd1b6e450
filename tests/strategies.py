"""Hypothesis strategies for the event contracts in ``schemas/``, derived from the models' fields.

Every value these strategies produce has been through ``Model.model_validate``, so it is a value
the schema accepts, and so one that a stage may receive. Within that, the strategies lean towards
what breaks code: dates at the ends of what ``datetime`` can hold wherever the schema does not
bound them, odd UTC offsets and naive times, Vietnamese with and without diacritics (also in NFD),
emoji, right-to-left scripts, combining marks, line separators and control characters where a
field lets them through, newlines in names, and lists that are empty or as long as allowed.

Fields are derived from ``model_fields``: each type and constraint (length, pattern, ``ge``) has
a generic strategy, and a few fields whose meaning matters (text, dates, e-mail addresses, URLs)
get a more pointed one by name. A field added to a model later is picked up without a change
here, as long as its type is one of the common ones below.
"""

from __future__ import annotations

import types
import typing
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from functools import cache
from typing import Any, TypeVar

from hypothesis import strategies as st
from pydantic import AnyHttpUrl, BaseModel, EmailStr, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from schemas.audit import AuditEvent
from schemas.common import HANOI_TZ
from schemas.incidents import IncidentClassified
from schemas.notifications import NotificationRequest
from schemas.reports import EARLIEST_OCCURRED_AT, ReportIn, ReportSubmitted

M = TypeVar("M", bound=BaseModel)
Overrides = Mapping[str, st.SearchStrategy[Any]]

# -- text ------------------------------------------------------------------------------------

VIETNAMESE = (
    "Có người lạ vào lớp học trực tuyến",
    "con tôi bị đe dọa qua tin nhắn",
    "Mật khẩu phòng học bị lộ trên mạng xã hội",
    "em bị bắt nạt, tụi nó đăng ảnh của em",
    "hắn đòi gửi ảnh riêng tư và hẹn gặp",
    "ĐỪNG NÓI VỚI AI",
    "co nguoi la vao lop hoc truc tuyen",  # typed without diacritics, as in many chat reports
    "tu tu",
    "ko biet lam sao, mk so lam",
    "chuyển khoản 1.5tr, 300k, 50.000đ",
    "Trường THCS Nguyễn Trãi, quận Ba Đình",
    "Phòng GDĐT",
)
ODD_PIECES = (
    "👩‍👧‍👦",  # emoji joined by ZWJ
    "🇻🇳",
    "😡🔪",
    "مرحبا بالعالم",  # Arabic, right to left
    "שלום",
    "e\u0301\u0323",  # a letter with two combining marks
    "\u0301",  # a combining mark with nothing to combine with
    "ß İ ﬁ",  # letters that change length when casefolded
    "\u200b\u200d\ufeff",  # zero-width space, joiner, byte-order mark
    "\u00a0\u2003",  # no-break space, em space
    "\u2028",
    "\u2029",
    "\u0085",
    "\n",
    "\r\n",
    "\r",
    "\t",
    "   ",
    "'\"<>&;`$(){}",
    "%s %(x)s {0} {x}",
    "\\x00 \\n",
    "0912 345 678",
    "https://example.vn/a?b=c",
    "=?utf-8?q?x?=",
)
# Characters that a cleaned report text never keeps, but other fields may carry.
CONTROL_PIECES = ("\x00", "\x07", "\x1b[31m", "\x7f", "\x9b", "\u202e", "\u2066", "\u2069")

_pieces = st.one_of(
    st.sampled_from(VIETNAMESE),
    st.sampled_from(VIETNAMESE).map(lambda s: unicodedata.normalize("NFD", s)),
    st.sampled_from(ODD_PIECES),
    st.text(st.characters(codec="utf-8"), max_size=12),
)
_control_pieces = st.one_of(_pieces, st.sampled_from(CONTROL_PIECES))


def text(
    min_size: int = 0, max_size: int = 200, *, controls: bool = True
) -> st.SearchStrategy[str]:
    """Unusual text of a length in [min_size, max_size]; long runs come from repeated pieces, so
    a text near ``max_size`` costs no more to draw than a short one."""
    pieces = _control_pieces if controls else _pieces
    repeated = st.tuples(pieces, st.integers(1, max(1, max_size // 4))).map(lambda t: t[0] * t[1])
    chunk = st.one_of(pieces, pieces, repeated)
    return (
        st.lists(chunk, max_size=8)
        .map(lambda parts: "".join(parts)[:max_size])
        .filter(lambda s: len(s) >= min_size)
    )


# -- dates -----------------------------------------------------------------------------------

ODD_OFFSETS = (
    UTC,
    HANOI_TZ,
    timezone(timedelta(hours=14)),
    timezone(timedelta(hours=-12)),
    timezone(timedelta(hours=5, minutes=45)),
    timezone(timedelta(hours=-9, minutes=-30)),
    timezone(timedelta(hours=23, minutes=59)),
)
_EXTREMES = (
    datetime.min,
    datetime.max,
    datetime(1, 1, 1, 0, 0, 1),
    datetime(9999, 12, 31, 23, 59, 59),
    datetime(1970, 1, 1),
    datetime(2038, 1, 19, 3, 14, 8),
    datetime(2000, 2, 29, 23, 59, 59, 999999),
)


def _with_zone(naive: st.SearchStrategy[datetime]) -> st.SearchStrategy[datetime]:
    """Naive, or carrying one of the odd offsets (as pydantic would parse it back)."""
    zone = st.none() | st.sampled_from(ODD_OFFSETS)
    return st.builds(lambda d, z: d if z is None else d.replace(tzinfo=z), naive, zone)


def any_datetimes() -> st.SearchStrategy[datetime]:
    """Any datetime a field without bounds accepts: years 1 to 9999, naive or any offset."""
    return _with_zone(st.one_of(st.sampled_from(_EXTREMES), st.datetimes()))


def plausible_occurred_at() -> st.SearchStrategy[datetime]:
    """Inside the bounds ``ReportIn.occurred_at`` enforces, edges included."""
    # Measured once; the bound only moves later, so a value valid now stays valid.
    latest = datetime.now(UTC).astimezone(HANOI_TZ).replace(tzinfo=None) + timedelta(hours=23)
    earliest = EARLIEST_OCCURRED_AT.replace(tzinfo=None)
    hanoi_naive = st.one_of(
        st.sampled_from((earliest, latest)), st.datetimes(min_value=earliest, max_value=latest)
    )
    as_offset = st.builds(
        lambda d, z: d.replace(tzinfo=HANOI_TZ).astimezone(z),
        hanoi_naive,
        st.sampled_from(ODD_OFFSETS),
    )
    return st.one_of(hanoi_naive, hanoi_naive.map(lambda d: d.replace(tzinfo=HANOI_TZ)), as_offset)


# -- addresses -------------------------------------------------------------------------------

_EMAIL_ADAPTER = TypeAdapter(EmailStr)


def _valid_email(value: str) -> bool:
    try:
        _EMAIL_ADAPTER.validate_python(value)
    except ValidationError:
        return False
    return True


def reporter_emails() -> st.SearchStrategy[str]:
    """Addresses pydantic's EmailStr accepts, internationalised ones included."""
    fixed = st.sampled_from(
        (
            "phu.huynh@example.vn",
            "nguyễn.văn.a@trường-học.việtnam.vn",
            "a+tag@sub.domain.example.com",
            "x@xn--bcher-kva.example",
            "Phụ Huynh <ph@example.vn>",
            "o'brien@example.org",
        )
    )
    return st.one_of(fixed, st.emails().filter(_valid_email))


_URL_ADAPTER = TypeAdapter(AnyHttpUrl)


def _as_url(value: str) -> AnyHttpUrl | None:
    try:
        return _URL_ADAPTER.validate_python(value)
    except ValidationError:
        return None


def http_urls() -> st.SearchStrategy[AnyHttpUrl]:
    host = st.sampled_from(
        ("example.vn", "zalo.me", "xn--trng-hc-k4a.vn", "trường.vn", "127.0.0.1", "[::1]", "a.b")
    )
    tail = text(max_size=60)
    port = st.none() | st.integers(1, 65535)
    raw = st.builds(
        lambda scheme, h, p, t: f"{scheme}://{h}{'' if p is None else f':{p}'}/{t}",
        st.sampled_from(("http", "https", "HTTPS")),
        host,
        port,
        tail,
    )
    return (
        raw.map(_as_url).filter(lambda u: u is not None).map(lambda u: typing.cast(AnyHttpUrl, u))
    )


# -- derivation from model fields ------------------------------------------------------------


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    """Length, bound and pattern constraints from a field's (or an Annotated's) metadata."""
    found: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, FieldInfo):
            found.update(_constraints(item.metadata))
        for name in ("min_length", "max_length", "ge", "gt", "le", "lt", "pattern"):
            value = getattr(item, name, None)
            if value is not None and not callable(value):
                found[name] = value
    return found


def _for_str(c: Mapping[str, Any]) -> st.SearchStrategy[str]:
    lo, hi = c.get("min_length", 0), c.get("max_length", 120)
    if "pattern" in c:
        return st.from_regex(c["pattern"], fullmatch=True).filter(lambda s: lo <= len(s) <= hi)
    return text(lo, hi)


def lists(
    items: st.SearchStrategy[Any], min_size: int = 0, max_size: int = 6
) -> st.SearchStrategy[list[Any]]:
    """Lists with empty and full ones given their own weight: off-by-one errors live there."""
    sized = st.lists(items, min_size=min_size, max_size=max_size)
    if max_size > 25:
        return sized
    edges = st.sampled_from(sorted({min_size, max_size}))
    return st.one_of(sized, edges.flatmap(lambda n: st.lists(items, min_size=n, max_size=n)))


def _json_values() -> st.SearchStrategy[Any]:
    # Only what JSON can carry: pydantic writes NaN and infinities as null, so a detail holding
    # one would not read back as itself (no stage puts one there).
    finite = st.floats(allow_nan=False, allow_infinity=False)
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), finite, text(max_size=30))
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text(max_size=10), inner),
        max_leaves=12,
    )


def _for_type(tp: Any, c: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        inner, *meta = typing.get_args(tp)
        return _for_type(inner, {**c, **_constraints(meta)})
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_for_type(arg, c) for arg in typing.get_args(tp)])
    if origin is typing.Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return lists(_for_type(item, {}), c.get("min_length", 0), c.get("max_length", 6))
    if origin is dict:
        return st.dictionaries(text(max_size=20), _json_values(), max_size=5)
    if tp is type(None):
        return st.none()
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return models(tp)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return st.sampled_from(list(tp))
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo = c.get("ge", c["gt"] + 1 if "gt" in c else -(2**63))
        hi = c.get("le", c["lt"] - 1 if "lt" in c else 2**63 - 1)
        return st.one_of(st.sampled_from((lo, hi)), st.integers(lo, hi))
    if tp is float:
        lo = c.get("ge", c.get("gt"))
        hi = c.get("le", c.get("lt"))
        return st.floats(
            min_value=lo,
            max_value=hi,
            exclude_min="gt" in c,
            exclude_max="lt" in c,
            allow_nan=False,
            allow_infinity=False,
        )
    if tp is datetime:
        return any_datetimes()
    if tp is str:
        return _for_str(c)
    if tp is AnyHttpUrl:
        return http_urls()
    if getattr(tp, "__name__", "") == "EmailStr":
        return reporter_emails()
    raise NotImplementedError(f"tests/strategies.py: no strategy for {tp!r}; add one")


def _field_strategy(info: FieldInfo) -> st.SearchStrategy[Any]:
    return _for_type(info.annotation, _constraints(info.metadata))


def _validated(model: type[M], data: dict[str, Any]) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError:
        # Rare (e.g. a text that cleaning made too short): filtered out, drawn again.
        return None


def fields_of(model: type[BaseModel], overrides: Overrides | None = None) -> st.SearchStrategy[Any]:
    """Dicts for ``model`` with every field given: a field with a default gets values of its
    type (the default among them), which exercises more than leaving it out would."""
    overrides = overrides or {}
    unknown = set(overrides) - set(model.model_fields)
    assert not unknown, f"{model.__name__} has no field(s) {sorted(unknown)}"
    return st.fixed_dictionaries(
        {
            name: overrides[name] if name in overrides else _field_strategy(info)
            for name, info in model.model_fields.items()
        }
    )


def models(model: type[M], overrides: Overrides | None = None) -> st.SearchStrategy[M]:
    """Validated instances of ``model`` built from per-field strategies."""
    built = fields_of(model, overrides).map(lambda data: _validated(model, data))
    return built.filter(lambda value: value is not None).map(lambda value: typing.cast(M, value))


# -- the contracts ---------------------------------------------------------------------------

# Schools in escalate/defaults/directory.yaml (codes compare case-insensitively), so that routing
# takes its known-school paths as well as the unknown-school fallback.
KNOWN_SCHOOL_CODES = ("HN-BD-THCS-001", "hn-dd-thcs-003", "HN-TX-THPT-001", "HN-CG-THPT-004")

_ids = st.one_of(
    st.uuids().map(str),
    st.sampled_from(("r-1", "inc-r-1", "", "x" * 200, "ünïcödé-id", "id with spaces")),
    st.text(max_size=40),
)
_tracking_codes = st.one_of(
    st.from_regex(r"ESC-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}", fullmatch=True),
    st.text(max_size=20),
)
# Names of people, schools and districts come from the directory or a report. The schema does
# not keep them on one line, so some try to start a header of their own.
_names = st.one_of(
    text(max_size=120),
    st.sampled_from(
        (
            "Trường THCS Nguyễn Trãi\nBcc: someone@example.com",
            "Phòng GDĐT quận Ba Đình\r\nX-Injected: 1",
            "Ban giám hiệu\u2028Hiệu trưởng",
            "Công an\x00quận",
            "",
            " ",
            "=?utf-8?b?SGk=?=",
            "A" * 300,
        )
    ),
)


@cache
def report_ins() -> st.SearchStrategy[ReportIn]:
    """Reports as a reporter sends them, after validation (cleaned, NFC, bounded dates)."""
    from schemas.reports import ReporterContact

    contact = models(
        ReporterContact,
        {"name": st.none() | text(max_size=220), "email": st.none() | reporter_emails()},
    )
    return models(
        ReportIn,
        {
            "school_code": st.one_of(
                st.sampled_from(KNOWN_SCHOOL_CODES),
                _field_strategy(ReportIn.model_fields["school_code"]),
            ),
            "description": text(5, 10_000),
            "occurred_at": st.none() | plausible_occurred_at(),
            "contact": st.none() | contact,
        },
    )


@cache
def reports_submitted() -> st.SearchStrategy[ReportSubmitted]:
    return models(
        ReportSubmitted,
        {
            "report_id": _ids,
            "tracking_code": _tracking_codes,
            "intake_client": text(max_size=40),
            "report": report_ins(),
        },
    )


@cache
def incidents_classified() -> st.SearchStrategy[IncidentClassified]:
    from schemas.incidents import Decision

    reasons = lists(text(max_size=80), 0, 8)
    decision = models(Decision, {"reasons": reasons, "rules_version": text(max_size=64)})
    return models(
        IncidentClassified,
        {
            "incident_id": _ids,
            "school_code": st.one_of(st.sampled_from(KNOWN_SCHOOL_CODES), text(max_size=40)),
            "report_ids": lists(_ids, 0, 5),
            "tracking_codes": lists(_tracking_codes, 0, 5),
            "decision": decision,
            "report": report_ins(),
        },
    )


@cache
def notification_requests() -> st.SearchStrategy[NotificationRequest]:
    """What the notifier renders: everything already redacted, and nothing in it trusted."""
    from schemas.notifications import Recipient

    # The address as the schema allows it, or as the directory usually has it.
    email = st.one_of(
        _field_strategy(Recipient.model_fields["email"]),
        st.sampled_from(("bgh@thcs-pct.badinh.example", "PGD@BaDinh.Hanoi.example")),
    )
    recipient = models(Recipient, {"name": _names, "email": email})
    return models(
        NotificationRequest,
        {
            "notification_id": _ids,
            "incident_id": _ids,
            "recipient": recipient,
            "school_code": st.one_of(st.sampled_from(KNOWN_SCHOOL_CODES), text(max_size=40)),
            "school_name": _names,
            "district_name": st.none() | _names,
            "description": text(0, 10_000),
            "report_ids": lists(_ids, 0, 5),
            "tracking_codes": lists(_tracking_codes, 0, 5),
            "reasons": lists(text(max_size=80), 0, 8),
            "rules_version": text(max_size=64),
            "evidence_urls": lists(st.one_of(http_urls().map(str), text(max_size=80)), 0, 20),
        },
    )


@cache
def audit_events() -> st.SearchStrategy[AuditEvent]:
    return models(
        AuditEvent,
        {
            "event_id": _ids,
            "incident_id": _ids,
            "report_ids": lists(_ids, 0, 5),
            "tracking_codes": lists(_tracking_codes, 0, 5),
        },
    )
