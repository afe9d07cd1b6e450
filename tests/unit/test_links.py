"""Signed action links: what they bind, and rotating the key without voiding links in mailboxes."""

from __future__ import annotations

import pytest

from schemas.common import Tier
from schemas.links import BadLink, LinkClaims, LinkPurpose, LinkSigner

CLAIMS = LinkClaims("inc-1", "bgh@thcs.example", Tier.school, LinkPurpose.act)
DAY = 86_400


def test_a_link_binds_incident_recipient_tier_and_purpose() -> None:
    token = LinkSigner("key-1").sign(CLAIMS)
    assert LinkSigner("key-1").verify(token, DAY) == CLAIMS
    with pytest.raises(BadLink) as refused:
        LinkSigner("another key").verify(token, DAY)
    assert refused.value.reason == "invalid"


def test_rotating_the_key_keeps_old_links_working_and_signs_with_the_new_one() -> None:
    old_token = LinkSigner("old").sign(CLAIMS)
    rotated = LinkSigner("new", previous_keys=["old"])
    assert rotated.verify(old_token, DAY) == CLAIMS
    new_token = rotated.sign(CLAIMS)
    assert LinkSigner("new").verify(new_token, DAY) == CLAIMS
    with pytest.raises(BadLink):
        LinkSigner("old").verify(new_token, DAY)
    # Once the old key is dropped, what it signed is refused.
    with pytest.raises(BadLink):
        LinkSigner("new").verify(old_token, DAY)
