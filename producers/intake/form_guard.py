"""What stands between the anonymous web form and a forged or flooding post.

The form needs no login, so a classic session-bound CSRF token is not available. Instead:

- **Same origin.** Browsers say where a post comes from (``Origin``, and ``Sec-Fetch-Site`` in
  all current ones). A post that another site made a visitor's browser send is refused before
  anything is read from it.
- **A signed form token.** ``GET /report`` embeds a token signed with the intake's secret key
  (itsdangerous; every intake process of a deployment shares the key). A post without a valid
  token, or with one older than ``max_age_s``, is not stored: the form comes back with what
  was typed, a fresh token, and a request to send it again. Nothing the reporter wrote is lost.
- **One report per token.** The token's random nonce is the post's idempotency key, so a
  double click, a browser that resends the post, or a replayed token gives the first report
  back instead of a second one.
- **A per-address limit** (``ClientLimiter``) on posts, answered with 429 and ``Retry-After``.

Clients that do not send ``Origin`` (old browsers, scripts) are judged by the token alone.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SALT = "escalate-report-form"
#: a form left open all day (a reporter writing in the evening) still sends
MAX_AGE_S = 24 * 3600
#: posts per address; a class reporting one break-in from a school's shared address fits
FORM_RATE = "20/minute"
FIELD = "form_token"


class Refusal(StrEnum):
    cross_site = "cross_site"
    missing_token = "missing_token"
    bad_token = "bad_token"
    expired_token = "expired_token"


@dataclass(frozen=True)
class Verdict:
    """The post's nonce when it may be stored, else why not."""

    nonce: str | None = None
    refusal: Refusal | None = None


class FormGuard:
    def __init__(
        self,
        secret_key: str | None = None,
        previous_keys: Sequence[str] = (),
        max_age_s: int = MAX_AGE_S,
        public_url: str = "",
    ) -> None:
        # Without a configured key (a single process, a test) tokens are good for this
        # process's life; a deployment passes its ESCALATE_SECRET_KEY so that every intake
        # worker accepts the tokens of every other.
        key = secret_key or secrets.token_hex(32)
        self._serializer = URLSafeTimedSerializer([*previous_keys, key], salt=SALT)
        self._max_age_s = max_age_s
        public = urlsplit(public_url) if public_url else None
        self._public_origin = f"{public.scheme}://{public.netloc}" if public else None

    def issue(self) -> str:
        return self._serializer.dumps(secrets.token_hex(16))

    def judge(self, headers: Mapping[str, str], token: str | None) -> Verdict:
        if not self.same_origin(headers):
            return Verdict(refusal=Refusal.cross_site)
        if not token:
            return Verdict(refusal=Refusal.missing_token)
        try:
            nonce = self._serializer.loads(token, max_age=self._max_age_s)
        except SignatureExpired:
            return Verdict(refusal=Refusal.expired_token)
        except BadSignature:
            return Verdict(refusal=Refusal.bad_token)
        if not isinstance(nonce, str) or not nonce:
            return Verdict(refusal=Refusal.bad_token)
        return Verdict(nonce=nonce)

    def same_origin(self, headers: Mapping[str, str]) -> bool:
        return same_origin(headers, self._public_origin)


def same_origin(headers: Mapping[str, str], public_origin: str | None = None) -> bool:
    """False when the browser says the post came from another site (or could not say which,
    for a browser that sends ``Origin`` but not ``Sec-Fetch-Site``)."""
    site = headers.get("sec-fetch-site")
    if site:
        # Set by the browser from the page's and the target's URLs, whatever proxies stand
        # between: "none" is a bookmark or a typed address.
        return site.lower() in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None or origin == "null":
        # An old browser or a script; the token (where there is one) decides.
        return True
    host = headers.get("host", "")
    allowed = {f"http://{host}", f"https://{host}"}
    if public_origin:
        allowed.add(public_origin)
    return origin.rstrip("/") in allowed
