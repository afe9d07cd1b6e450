"""Per-address rate limits for the pages and API that take a tracking code without a key.

The tracking code is the only secret there, so guessing codes must be slow: every lookup and
every follow-up counts against the client's address in a moving window (``limits``). An IPv6
client usually holds a whole /64 and can pick any address in it, so IPv6 is limited per /64.

The address is the one uvicorn reports; behind a reverse proxy, uvicorn's proxy-header handling
(``--forwarded-allow-ips``) must be set so that it is the reporter's and not the proxy's.
The default storage is this process's memory: several intake processes (``intake_workers``, or
replicas behind a balancer) then each count alone. Either give each its share of the limit
(``share_of_rate``, what the composition root does for its own workers) or give them a shared
storage (``redis://…``) to make the limit global.
"""

from __future__ import annotations

import ipaddress
import math
import time

from limits import parse
from limits.storage import MovingWindowSupport, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

#: Default per-address limits: a reporter checks a few times; a guesser needs 2^40 tries.
LOOKUP_RATE = "30/minute"
FOLLOW_UP_RATE = "10/hour"
#: Per API client (key): an app forwarding every user's reports, or a bulk import, gets far
#: more than a burst of a break-in needs (100 a second), but cannot crowd out the others.
CLIENT_RATE = "6000/minute"


def share_of_rate(rate: str, processes: int) -> str:
    """``rate`` ("30/minute") divided among ``processes`` that count alone, at least 1 each.

    An address then never gets more than the whole limit, whichever processes it reaches.
    """
    item = parse(rate)
    return f"{max(1, item.amount // processes)}/{item.multiples} {item.GRANULARITY.name}"


def client_key(host: str | None) -> str:
    """The unit a limit applies to: the IPv4 address, or the /64 an IPv6 address is in."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a test client, a unix socket): the name itself
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        prefix = ipaddress.IPv6Address(int(address) >> 64 << 64)
        return f"{prefix}/64"
    return str(address)


class ClientLimiter:
    """One named limit per client key; ``hit`` counts a request and says whether it may go on."""

    def __init__(self, name: str, rate: str, storage_uri: str = "memory://") -> None:
        self._name = name
        self._item = parse(rate)
        storage = storage_from_string(storage_uri)
        # A synchronous storage that keeps a moving window (memory, redis, memcached, mongodb).
        if not isinstance(storage, Storage) or not isinstance(storage, MovingWindowSupport):
            raise ValueError(f"storage {storage_uri!r} cannot keep a moving window")
        self._limiter = MovingWindowRateLimiter(storage)

    @property
    def rate(self) -> str:
        return str(self._item)

    def hit(self, key: str) -> int | None:
        """None when the request is allowed (and counted); otherwise the whole seconds until
        the oldest request in the window leaves it, for ``Retry-After``."""
        if self._limiter.hit(self._item, self._name, key):
            return None
        stats = self._limiter.get_window_stats(self._item, self._name, key)
        return max(1, math.ceil(stats.reset_time - time.time()))
