"""Grouping, pure: which open incident a report belongs to, and the school's state after it.

No Kafka and no clock: the worker passes one school's state, the report's hashed evidence and
times, and writes back what these functions return (``None`` from ``expire``: a tombstone).

Time is the reports' own (``received_at``), not the moment of processing, so a backlog read
after an outage groups as it would have live.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.common import SEVERITY_RANK, Severity
from schemas.grouping import GroupingPolicy, OpenIncident, SchoolGroups
from schemas.incidents import GroupMatch, MatchKind
from stream_processors.grouping.signals import LINK_KINDS, Signals, is_hashed, kind_of

# Evidence is tried in this order; a weaker kind is only consulted when no open incident
# shares a stronger one, whatever the weaker kind's score.
PRIORITY = (MatchKind.link, MatchKind.account, MatchKind.text)

# Fingerprints kept per incident for idempotence. Beyond this many reports in one window a
# replayed old report could be counted again: a wrong count, never a wrong grouping.
MAX_SEEN = 256

# Words of an incident: those of its FIRST report, not the union of all its reports.
# Measured on the fixture of tests/unit/test_grouping.py (20 reports of one Zoom intrusion and
# 5 of three other events at the same school, fed in order, policy shorthand applied):
#   first report's words: 11 incidents, the largest 11 reports, 7 of them for the Zoom event;
#   union of the words:   12 incidents, the largest  7 reports, 8 of them for the Zoom event.
# Neither merged another event into the Zoom incident. The union lost because Jaccard divides
# by the union of both sets: reports that joined by link (an English one, "ID: ... có đứa lạ")
# grew the incident from 13 to 28 words within six minutes, and a near copy of the first
# report then scored 0.41 instead of 0.86 and opened an incident of its own. Comparing with
# every member's words separately gave the same 11 as the first report's words, for a state
# that grows with every report. So the first report's words stay: the description the incident
# is known by, small, and unable to drift towards whatever joined by link or account.
# The test module measures both again and fails if the union ever groups better.
MERGE_WORDS = False


@dataclass(frozen=True)
class Match:
    """The open incident a report joins, and the evidence (kind and label only) for the audit."""

    incident_id: str
    match: GroupMatch


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Token-set Jaccard: shared words over all words; 0 when either side has none."""
    if not a or not b:
        return 0.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)


def within_window(incident: OpenIncident, received_at: datetime, window: timedelta) -> bool:
    """The report is at most ``window`` from the incident's span of reports (both ends inclusive).

    Forward, the window slides from the latest report. Backward, a report that arrives late
    (received before the latest report but processed after it) still joins when it is within
    the window of the span: the event was going on at that time.
    """
    # Differences, not sums: a time near the ends of datetime's range (only a corrupt or
    # hand-made message has one) must not overflow and stop the school's partition.
    return (
        incident.opened_at - received_at <= window
        and received_at - incident.last_report_at <= window
    )


def _priority_kind(keys: Iterable[str], kinds: tuple[str, ...]) -> str:
    present = {kind_of(k) for k in keys}
    return next((k for k in kinds if k in present), min(present))


def _links_disagree(a: frozenset[str], b: list[str]) -> bool:
    """Both name a meeting of the same platform and no meeting in common: different events."""
    mine: dict[str, set[str]] = {}
    for key in a:
        mine.setdefault(kind_of(key), set()).add(key)
    theirs: dict[str, set[str]] = {}
    for key in b:
        theirs.setdefault(kind_of(key), set()).add(key)
    return any(kind in theirs and not (keys & theirs[kind]) for kind, keys in mine.items())


def _evidence(
    kind: MatchKind, incident: OpenIncident, signals: Signals, policy: GroupingPolicy
) -> tuple[float, str, float] | None:
    """(strength, label, score) of one kind of evidence linking a report to an incident."""
    if kind is MatchKind.link:
        shared = signals.links.intersection(incident.links)
        if shared:
            return float(len(shared)), _priority_kind(shared, LINK_KINDS), 1.0
        return None
    if kind is MatchKind.account:
        shared = signals.accounts.intersection(incident.accounts)
        if shared:
            return float(len(shared)), _priority_kind(shared, ("phone", "account")), 1.0
        return None
    # Text: only between reports long enough for word overlap to mean something, and never
    # across two different meetings ("stranger in our Zoom" about class 7A and class 9B).
    if len(signals.words) < policy.min_words or len(incident.words) < policy.min_words:
        return None
    if _links_disagree(signals.links, incident.links):
        return None
    score = similarity(signals.words, frozenset(incident.words))
    if score >= policy.similarity:
        return score, "words", score
    return None


def match(
    groups: SchoolGroups | None,
    signals: Signals,
    received_at: datetime,
    policy: GroupingPolicy,
) -> Match | None:
    """The open incident of this school that the report (hashed ``signals``) belongs to.

    Kinds are tried in the order link, account, text, each only when ``policy.match_on``
    names it. Among incidents with the same kind of evidence the strongest wins (most shared
    links or accounts, highest similarity), then the most recent.
    """
    if groups is None or not policy.enabled:
        return None
    candidates = [i for i in groups.open if within_window(i, received_at, policy.window)]
    for kind in PRIORITY:
        if kind not in policy.match_on:
            continue
        best: tuple[tuple[float, datetime, str], OpenIncident, str, float] | None = None
        for incident in candidates:
            found = _evidence(kind, incident, signals, policy)
            if found is None:
                continue
            strength, label, score = found
            rank = (strength, incident.last_report_at, incident.incident_id)
            if best is None or rank > best[0]:
                best = (rank, incident, label, score)
        if best is not None:
            _, incident, label, score = best
            return Match(incident.incident_id, GroupMatch(kind=kind, label=label, score=score))
    return None


def fingerprint(signals: Signals, received_at: datetime) -> str:
    """Identifies one report's contribution without holding anything readable."""
    when = received_at.astimezone(UTC) if received_at.tzinfo else received_at
    parts = [when.isoformat(), *sorted(signals.links), "|", *sorted(signals.accounts), "|"]
    parts.extend(sorted(signals.words))
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=8).hexdigest()


def _max_severity(a: Severity, b: Severity) -> Severity:
    return a if SEVERITY_RANK[a] >= SEVERITY_RANK[b] else b


def _merged(
    incident: OpenIncident,
    severity: Severity,
    signals: Signals,
    received_at: datetime,
    seen: str,
) -> OpenIncident:
    words = incident.words
    if MERGE_WORDS:
        words = sorted(signals.words.union(incident.words))
    return incident.model_copy(
        update={
            "severity": _max_severity(incident.severity, severity),
            "opened_at": min(incident.opened_at, received_at),
            "last_report_at": max(incident.last_report_at, received_at),
            "report_count": incident.report_count + 1,
            "links": sorted(signals.links.union(incident.links)),
            "accounts": sorted(signals.accounts.union(incident.accounts)),
            "words": words,
            "seen": [*incident.seen, seen][-MAX_SEEN:],
        }
    )


def _forget(
    incidents: list[OpenIncident], now: datetime, policy: GroupingPolicy, keep: str | None
) -> list[OpenIncident]:
    """Drop incidents whose window has passed at ``now``, then the oldest beyond the cap.

    ``keep`` (the incident just remembered) is never dropped for the cap: it is the one
    evidently still active.
    """
    live = [
        i for i in incidents if i.incident_id == keep or now - i.last_report_at <= policy.window
    ]
    excess = len(live) - policy.max_open_per_school
    if excess > 0:
        by_age = sorted(
            (i for i in live if i.incident_id != keep),
            key=lambda i: (i.last_report_at, i.opened_at, i.incident_id),
        )
        dropped = {i.incident_id for i in by_age[:excess]}
        live = [i for i in live if i.incident_id not in dropped]
    return live


def remember(
    groups: SchoolGroups | None,
    school: str,
    incident_id: str,
    severity: Severity,
    signals: Signals,
    received_at: datetime,
    policy: GroupingPolicy,
) -> SchoolGroups:
    """The school's state once this report is part of ``incident_id``.

    A new incident id opens an entry; a known one takes the report in: one more report, the
    higher severity, the later last report (the window slides), the union of links and
    accounts. Entries whose window has passed at ``received_at`` are dropped, then the oldest
    beyond ``max_open_per_school``.

    Idempotent: the same report (same time and evidence) remembered again for the same incident
    returns the state unchanged, so a redelivered message does not count twice.

    ``signals`` must be hashed (``signals.hashed``); readable values are refused so that no
    report text, link or phone number can reach the state topic. A disabled policy keeps
    nothing new (and ``expire`` then forgets the rest).
    """
    if not is_hashed(signals):
        raise ValueError("remember() stores only hashed signals (see signals.hashed)")
    if groups is not None and groups.school != school:
        raise ValueError("the state given belongs to another school")
    updated_at = max(groups.updated_at, received_at) if groups else received_at
    incidents = list(groups.open) if groups else []
    if not policy.enabled:
        kept = _forget(incidents, received_at, policy, keep=None)
        return SchoolGroups(school=school, open=kept, updated_at=updated_at)

    seen = fingerprint(signals, received_at)
    index = next((n for n, i in enumerate(incidents) if i.incident_id == incident_id), None)
    if index is not None:
        if seen in incidents[index].seen and groups is not None:
            return groups
        incidents[index] = _merged(incidents[index], severity, signals, received_at, seen)
    else:
        incidents.append(
            OpenIncident(
                incident_id=incident_id,
                severity=severity,
                opened_at=received_at,
                last_report_at=received_at,
                links=sorted(signals.links),
                accounts=sorted(signals.accounts),
                words=sorted(signals.words),
                seen=[seen],
            )
        )
    kept = _forget(incidents, received_at, policy, keep=incident_id)
    return SchoolGroups(school=school, open=kept, updated_at=updated_at)


def expire(
    groups: SchoolGroups | None, now: datetime, policy: GroupingPolicy
) -> SchoolGroups | None:
    """Forget incidents whose window has passed at ``now``; None when nothing is left.

    ``now`` is the clock of the worker's tick; while it works through a backlog it should pass
    the newest ``received_at`` it has seen instead, or late reports would find their incident
    already forgotten. The same object comes back when nothing changed (no write needed).
    """
    if groups is None or not policy.enabled:
        return None
    kept = _forget(list(groups.open), now, policy, keep=None)
    if not kept:
        return None
    if len(kept) == len(groups.open):
        return groups
    return groups.model_copy(update={"open": kept, "updated_at": max(groups.updated_at, now)})


__all__ = [
    "MAX_SEEN",
    "PRIORITY",
    "Match",
    "expire",
    "fingerprint",
    "match",
    "remember",
    "similarity",
    "within_window",
]
