"""What in a report can tell that it is about the same event as another report.

Three kinds of evidence, strongest first:

- **links**: a meeting someone broke into or whose password leaked, as a platform key that does
  not depend on how the pupil typed it: ``zoom:81234567890`` for a join link, "ID: 812 345 67890"
  or "zoom 81234567890" alike; ``meet:abcdefghij`` for a Google Meet code in any case, with or
  without dashes; ``teams:<meeting id>`` for a Teams meetup-join link (or the numeric meeting
  id); ``zalo:<code>`` for a Zalo group invitation.
- **accounts**: a named account (``account:hackerpro99`` from "@hackerpro99", "nick tên
  HackerPro99", facebook.com/hackerpro99, t.me/hackerpro99, ...) or a Vietnamese phone number
  in one form (``phone:84912345678`` from 0912345678, 0912 345 678, +84 912 345 678, ...).
- **words**: the report's words folded (NFC, lower case, diacritics removed, đ -> d) without
  the commonest function words, for a token-set similarity.

``extract`` returns readable values, which must never leave the process: ``hashed`` replaces
each one by a short keyed hash before anything is stored. A hashed link or account keeps its
kind in front (``zoom:3f9c...``), because the kind is what the audit trail shows as the reason
for grouping and says nothing about the child or the reporter.

Extraction errs towards finding nothing: a number is a Zoom id only next to a word that says
so (or in a report about Zoom, when it cannot be a phone number), and a word after "tài khoản"
is an account name only when it is quoted, introduced ("tên", "là", "named") or looks like a
handle. A wrong key would merge two events, which is worse than a missed duplicate.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from schemas.rules import ClassificationRules
from schemas.text import fold
from stream_processors.classification.normalize import tokenize

LINK_KINDS = ("zoom", "meet", "teams", "zalo")
ACCOUNT_KINDS = ("phone", "account")

# 16 hex digits: collisions among the few hundred values one school holds are out of reach,
# and the state stays small on the compacted topic.
HASH_BYTES = 8
_HASHED = re.compile(r"^(?:(?:zoom|meet|teams|zalo|phone|account):)?[0-9a-f]{16}$")


@dataclass(frozen=True)
class Signals:
    """The evidence one report carries: readable from ``extract``, hashed from ``hashed``."""

    links: frozenset[str] = frozenset()
    accounts: frozenset[str] = frozenset()
    words: frozenset[str] = frozenset()


def kind_of(key: str) -> str:
    """The kind in front of a link or account key ('zoom', 'phone', ...): the audit label."""
    return key.split(":", 1)[0]


# --- hashing -------------------------------------------------------------------------------


def _digest(value: str, key: bytes) -> str:
    return hashlib.blake2b(value.encode("utf-8"), key=key, digest_size=HASH_BYTES).hexdigest()


def hashed(signals: Signals, key: bytes) -> Signals:
    """Replace every value by a keyed hash; links and accounts keep their kind in front.

    The whole value, kind included, goes into the hash, and words get a prefix of their own,
    so the word "81234567890" and the Zoom id 81234567890 do not become the same hash.
    """
    if not key:
        # Without a secret key a phone number's hash is found by trying every number.
        raise ValueError("grouping needs a non-empty hashing key")
    if len(key) > hashlib.blake2b.MAX_KEY_SIZE:
        key = hashlib.blake2b(key).digest()

    def keyed(values: Iterable[str]) -> frozenset[str]:
        return frozenset(f"{kind_of(v)}:{_digest(v, key)}" for v in values)

    return Signals(
        links=keyed(signals.links),
        accounts=keyed(signals.accounts),
        words=frozenset(_digest("word:" + w, key) for w in signals.words),
    )


def is_hashed(signals: Signals) -> bool:
    """Whether every value has the shape ``hashed`` gives (a guard before anything is stored)."""
    values = (*signals.links, *signals.accounts, *signals.words)
    return all(_HASHED.match(v) for v in values)


# --- meeting links and ids -----------------------------------------------------------------

# Pupils copy ids with the spaces or dashes the apps show ("812 3456 7890"); dots are left
# out on purpose, they are how amounts of money are written ("500.000.000").
_ID_9_11 = r"(\d(?:[ \-]?\d){8,10})(?![ \-]?\d)"
# Zoom never gives out ids with a leading 0; a number starting with 0 is a phone number.
_ZOOM_DIGITS = r"([1-9](?:[ \-]?\d){8,10})(?![ \-]?\d)"
_QUERY = r"(?:[?#]\S*)?"

_ZOOM_URL = re.compile(r"zoom\.us/(?:j|w|s|wc/join|wc)/" + _ID_9_11 + r"(?:/join)?" + _QUERY, re.I)
_ZOOM_APP = re.compile(r"zoommtg://\S*?confno=(\d{9,11})\S*", re.I)
_ZOOM_VANITY = re.compile(r"zoom\.us/my/([a-z0-9][a-z0-9._\-]{2,40})" + _QUERY, re.I)
# A Zoom id written out: after a word that announces it, at most a few words before the digits.
_ZOOM_ID = re.compile(
    # "phong" / "phong hoc" (a class's room: "phòng 812 3456 7890") and "lop truc tuyen" are how
    # pupils name the meeting without saying Zoom; a 0-led number stays a phone number.
    r"(?:\bzoom|\bid\b|\bmeeting\b|\bma (?:phong|cuoc hop|zoom)\b|\bphong(?: hop| hoc)?\b"
    r"|\blop (?:hoc )?(?:truc tuyen|online)\b|\broom\b)"
    r"[^\d\n]{0,24}?" + _ZOOM_DIGITS + r"(?!\w)",
    re.I,
)
_BARE_ID = re.compile(r"(?<![\d\w])[1-9](?:[ \-]?\d){8,10}(?![ \-]?\d)(?!\w)")

_MEET_URL = re.compile(r"meet\.google\.com/([a-z]{3}-?[a-z]{4}-?[a-z]{3})(?![a-z])" + _QUERY, re.I)
_MEET_CODE = re.compile(r"(?<![\w\-])([a-z]{3}-[a-z]{4}-[a-z]{3})(?![\w\-])", re.I)

_TEAMS_JOIN = re.compile(r"teams\.(?:microsoft|live)\.com/l/meetup-join/(\S+)", re.I)
_TEAMS_THREAD = re.compile(r"meeting_([A-Za-z0-9_\-]+)")
_TEAMS_MEET = re.compile(r"teams\.(?:microsoft|live)\.com/meet/(\d{9,15})" + _QUERY, re.I)
# Teams shows 12-digit meeting ids; asking for 12 to 15 keeps phone numbers out.
_TEAMS_ID = re.compile(r"\bteams\b[^\d\n]{0,30}?([1-9](?: ?\d){11,14})(?! ?\d)", re.I)

_ZALO_GROUP = re.compile(r"zalo\.me/g/([a-z0-9]{4,40})" + _QUERY, re.I)

# --- phone numbers -------------------------------------------------------------------------

# +84 / 84 / 0, then the national number: 9 digits for mobiles (3, 5, 7, 8, 9...), 10 for
# landlines (2...). Separators as people write them: spaces, dots, dashes.
_PHONE = re.compile(
    r"(?<![\w+])(?:\(?\+\s?84\)?|84|0)[ .\-]?(\d(?:[ .\-]?\d){8,9})(?![ .\-]?\d)(?!\w)"
)
_ZALO_PHONE = re.compile(r"zalo\.me/(?:\+?84|0)(\d{9,10})(?!\w)" + _QUERY, re.I)


def _phone_key(national: str) -> str | None:
    digits = re.sub(r"\D", "", national)
    if (len(digits) == 9 and digits[0] in "35789") or (len(digits) == 10 and digits[0] == "2"):
        return "phone:84" + digits
    return None


# --- named accounts ------------------------------------------------------------------------


def _set(words: str) -> frozenset[str]:
    return frozenset(words.split())


# First path segments that are not somebody's account.
_RESERVED_PATHS = _set(
    "groups group pages events watch share sharer sharer.php story.php photo photos photo.php "
    "permalink.php login hashtag reel reels messages marketplace help policies notifications "
    "joinchat addstickers s p explore stories tv home search"
)
_PROFILE_URL = re.compile(
    r"(?<![\w\-])(?:(?:www|m|web|mbasic)\.)?(?:facebook|fb|instagram)\.com/"
    r"(?:profile\.php\?id=(\d{5,20})|([a-z0-9][a-z0-9._]{1,49}))" + _QUERY,
    re.I,
)
_SHORT_PROFILE = re.compile(r"(?<![\w.])(?:t|m)\.me/([a-z0-9][a-z0-9_.]{2,49})" + _QUERY, re.I)
_TIKTOK = re.compile(r"tiktok\.com/@([a-z0-9_.]{2,30})" + _QUERY, re.I)
_HANDLE = re.compile(r"(?<![\w.@/])@([a-z0-9_][a-z0-9_.]{1,29})", re.I)

_ACCOUNT_WORD = re.compile(r"\b(?:tai\s+khoan|tk|nick(?:name)?|acc(?:ount)?|user(?:name)?)\b", re.I)
_NAME_TOKEN = re.compile(r'"[^"\n]{2,40}"|“[^”\n]{2,40}”|@?[\w.]+|[:\-,.;!?()]', re.I)
# Words between "tài khoản" and the name: the platform, an adjective, the copula.
_PLATFORMS = _set(
    "facebook fb zalo zl tiktok instagram ig telegram tele messenger zoom google gmail meet "
    "teams discord game youtube"
)
_ADJECTIVES = _set("la ao moi an danh nao do khac strange unknown fake new")
_INTRODUCERS = _set("ten la named called")

# --- words ---------------------------------------------------------------------------------

# Function words (folded) that every report has and that say nothing about the event. Kept
# short on purpose: "nguoi", "vao", "lop", "zoom" are exactly what similar reports share.
STOP_WORDS = _set(
    """
    va voi cua la co thi ma duoc dc bi cho cac nhung mot nay do da dang se rat cung nen khi de
    trong ra lai khong ko em toi minh con chau oi nhe nha ah roi nua qua vi neu nhu ai gi nao
    day kia hay ve den len tu tai thi vay the nhieu cai chi anh ban moi ah ak uh a e
    the an and or of to in on at is are was were be been it its this that these those with for
    from by as our my me we us you your he she they them his her their i has have had do did
    not no so but just about there here what who
    """
)
_NAME_STOP = STOP_WORDS | _set(
    "vao vo chui pha noi nhan tin gui hack lop hoc nhom phong joined join into was has "
    "nay nguoi bay tuc cua roi"
)
# Links and their query strings ("?pwd=..." survives a link broken by spaces) are not words.
_URL = re.compile(
    r"(?:https?://|www\.)\S+|\b[\w\-]+(?:\.[\w\-]+)*\.(?:com|us|me|vn|net|org)/\S*"
    r"|\S*[?&][a-z]+=\S*",
    re.I,
)
_DIGITS = re.compile(r"^\d[\d.,]*$")  # ids, phone numbers, amounts: evidence elsewhere or none


def _name_key(raw: str) -> str | None:
    name = raw.strip("\"“”'").lstrip("@").rstrip(".").lower()
    name = re.sub(r"\s+", "", name)
    if len(name) < 3 or name in _NAME_STOP:
        return None
    return "account:" + name


def _looks_like_handle(token: str) -> bool:
    # A digit, an underscore, a dot or a capital inside a name is how screen names look; a
    # plain lower-case word after "tài khoản" is far more often part of the sentence.
    return any(ch.isdigit() or ch in "_." or ch.isupper() for ch in token)


def _named_accounts(text: str) -> set[str]:
    found: set[str] = set()
    for kw in _ACCOUNT_WORD.finditer(text):
        tokens = _NAME_TOKEN.findall(text[kw.end() : kw.end() + 80])
        introduced = False
        i = 0
        while i < len(tokens):
            low = tokens[i].lower()
            following = tokens[i + 1].lower() if i + 1 < len(tokens) else ""
            if low in _INTRODUCERS or low in (":", "-"):
                # Folded, "la" is both "là" (is) and "lạ" (strange): either way a name may follow.
                introduced = True
            elif low in _PLATFORMS or low in _ADJECTIVES:
                pass
            elif low == "co" and following == "ten":
                pass  # "có tên": "có" alone ("tài khoản có mật khẩu") introduces nothing
            else:
                break
            i += 1
        if i == len(tokens):
            continue
        first = tokens[i]
        if first[0] in '"“' or first.startswith("@"):
            key = _name_key(first)
        elif first.lower() in _NAME_STOP or not first[0].isalnum():
            continue
        elif introduced:
            # "nick tên hacker pro vào lớp": the name runs up to the next common word.
            parts = []
            for tok in tokens[i : i + 3]:
                if tok.lower() in _NAME_STOP or not tok[0].isalnum():
                    break
                parts.append(tok)
            key = _name_key("".join(parts))
        elif _looks_like_handle(first):
            parts = [first]
            for tok in tokens[i + 1 : i + 3]:
                if not tok[0].isupper() or tok.lower() in _NAME_STOP:
                    break
                parts.append(tok)
            key = _name_key("".join(parts))
        else:
            continue
        if key:
            found.add(key)
    return found


# --- extraction ----------------------------------------------------------------------------


class _Text:
    """The folded text, with what has been recognised blanked out so nothing counts twice."""

    def __init__(self, text: str) -> None:
        self.value = text

    def take(self, pattern: re.Pattern[str]) -> list[re.Match[str]]:
        found = list(pattern.finditer(self.value))
        for m in reversed(found):
            self.value = (
                self.value[: m.start()] + " " * (m.end() - m.start()) + self.value[m.end() :]
            )
        return found


def shorthand_from(rules: ClassificationRules) -> dict[str, tuple[str, ...]]:
    """The policy lexicon's plain entries ("ng" -> người), folded, for ``extract``.

    Entries that depend on context ("mk": mật khẩu or mình) are left out: for a word set the
    shorthand as typed is as good as a guess.
    """
    out: dict[str, tuple[str, ...]] = {}
    for key, entry in rules.lexicon.items():
        if isinstance(entry, str):
            out[fold(unicodedata.normalize("NFC", key).casefold())] = tuple(
                fold(w) for w in tokenize(entry)
            )
    return out


def words_of(text: str, shorthand: Mapping[str, tuple[str, ...]] | None = None) -> frozenset[str]:
    """Folded distinct words, without function words, numbers and one-letter tokens."""
    out: set[str] = set()
    for token in tokenize(_URL.sub(" ", text)):
        folded = fold(token)
        expanded = shorthand.get(folded) if shorthand else None
        for word in expanded or (folded,):
            if len(word) >= 2 and word not in STOP_WORDS and not _DIGITS.match(word):
                out.add(word)
    return frozenset(out)


def extract(
    text: str,
    urls: Iterable[str] = (),
    shorthand: Mapping[str, tuple[str, ...]] | None = None,
) -> Signals:
    """Meeting keys, account keys and folded words of a report (readable: hash before storing).

    ``urls`` are the report's evidence links; ``shorthand`` the policy's chat abbreviations
    (``shorthand_from``), so that "ng" and "người" count as one word.
    """
    text = unicodedata.normalize("NFC", text)
    joined = "\n".join([text, *(unquote(str(u)) for u in urls)])
    work = _Text(fold(joined))
    links: set[str] = set()
    accounts: set[str] = set()

    # URLs first: their paths hold digits and names the patterns below would misread.
    for m in work.take(_ZOOM_URL):
        links.add("zoom:" + re.sub(r"\D", "", m.group(1)))
    for m in work.take(_ZOOM_APP):
        links.add("zoom:" + m.group(1))
    for m in work.take(_ZOOM_VANITY):
        links.add("zoom:my." + m.group(1).lower().rstrip("."))
    for m in work.take(_MEET_URL):
        links.add("meet:" + m.group(1).lower().replace("-", ""))
    for m in work.take(_TEAMS_JOIN):
        thread = _TEAMS_THREAD.search(unquote(m.group(1)))
        if thread:
            links.add("teams:" + thread.group(1))
    for m in work.take(_TEAMS_MEET):
        links.add("teams:" + m.group(1))
    for m in work.take(_ZALO_GROUP):
        links.add("zalo:" + m.group(1).lower())
    for m in work.take(_ZALO_PHONE):
        key = _phone_key(m.group(1))
        if key:
            accounts.add(key)
    for m in work.take(_TIKTOK):
        key = _name_key(m.group(1))
        if key:
            accounts.add(key)
    for m in work.take(_PROFILE_URL):
        if m.group(1):
            accounts.add("account:" + m.group(1))
        elif m.group(2).lower().rstrip(".") not in _RESERVED_PATHS:
            key = _name_key(m.group(2))
            if key:
                accounts.add(key)
    for m in work.take(_SHORT_PROFILE):
        if m.group(1).lower() not in _RESERVED_PATHS:
            key = _name_key(m.group(1))
            if key:
                accounts.add(key)

    # Ids written out in words, before phone numbers: a Zoom id may begin with 84.
    for m in work.take(_TEAMS_ID):
        links.add("teams:" + m.group(1).replace(" ", ""))
    for m in work.take(_ZOOM_ID):
        digits = re.sub(r"\D", "", m.group(1))
        if digits[0] != "0":
            links.add("zoom:" + digits)
    lowered = work.value.lower()
    if "meet" in lowered:
        for m in work.take(_MEET_CODE):
            links.add("meet:" + m.group(1).lower().replace("-", ""))
    for m in work.take(_PHONE):
        key = _phone_key(m.group(1))
        if key:
            accounts.add(key)
    if "zoom" in lowered:
        # A report about Zoom with a long number that is not a phone: the meeting id typed
        # without announcing it ("vao 812 3456 7890 pass 123456").
        for m in work.take(_BARE_ID):
            links.add("zoom:" + re.sub(r"\D", "", m.group(0)))

    for m in work.take(_HANDLE):
        key = _name_key(m.group(1))
        if key:
            accounts.add(key)
    accounts |= _named_accounts(work.value)

    return Signals(
        links=frozenset(links),
        accounts=frozenset(accounts),
        words=words_of(text, shorthand),
    )


__all__ = [
    "ACCOUNT_KINDS",
    "LINK_KINDS",
    "STOP_WORDS",
    "Signals",
    "extract",
    "hashed",
    "is_hashed",
    "kind_of",
    "shorthand_from",
    "words_of",
]
