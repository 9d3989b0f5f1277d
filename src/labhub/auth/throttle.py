"""Login throttling: exponential back-off per (account name, client address) and per address.

In memory (a restart forgets it, which is acceptable for a back-off): each
key counts failures; after ``free`` of them every further attempt must wait
``base * 2**(n - free)`` seconds (capped) after the last failure.  Failures
against one account from elsewhere never make its owner wait: see
:class:`LoginThrottle`.  Unknown names are throttled exactly like real ones,
so the throttle does not tell which accounts exist.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from labhub.settings import ThrottleSettings


@dataclass(slots=True)
class _Entry:
    failures: int
    last: float


class Throttle:
    """Failure counts per key with exponential back-off."""

    def __init__(self, *, base_delay: float, max_delay: float, forget_after: float,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self.clock = clock
        self.max_keys = max_keys
        self._entries: dict[Hashable, _Entry] = {}

    def delay_after(self, failures: int, free: int) -> float:
        """How long one must wait after the last of ``failures`` failures."""
        if failures < free:
            return 0.0
        return min(self.max_delay, self.base_delay * 2 ** min(failures - free, 40))

    def wait(self, key: Hashable, free: int) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        now = self.clock()
        if now - entry.last > self.forget_after:
            del self._entries[key]
            return 0.0
        return max(0.0, entry.last + self.delay_after(entry.failures, free) - now)

    def failures(self, key: Hashable) -> int:
        """The failures counted for ``key`` (0 once forgotten)."""
        entry = self._entries.get(key)
        if entry is None or self.clock() - entry.last > self.forget_after:
            return 0
        return entry.failures

    def failure(self, key: Hashable) -> int:
        """Count a failure; returns the key's failure count."""
        now = self.clock()
        entry = self._entries.get(key)
        if entry is None or now - entry.last > self.forget_after:
            if len(self._entries) >= self.max_keys:
                self._prune(now)
            entry = self._entries[key] = _Entry(0, now)
        entry.failures += 1
        entry.last = now
        return entry.failures

    def reset(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def _prune(self, now: float) -> None:
        for key, entry in list(self._entries.items()):
            if now - entry.last > self.forget_after:
                del self._entries[key]
        if len(self._entries) >= self.max_keys:  # still full: forget the oldest half
            for key, _ in sorted(self._entries.items(), key=lambda kv: kv[1].last)[: self.max_keys // 2]:
                del self._entries[key]


def address_key(address: str) -> str:
    """Addresses that one party controls together: an IPv6 /64, else the address itself."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginThrottle:
    """The hub's login and sign-up throttles, configured by ``Settings.login_throttle``.

    A failed password login counts under three keys:

    * *(account, address)*: back-off after ``account_free`` failures, so one
      address guessing one account slows down;
    * *address*: back-off after ``address_free`` failures, whatever names it
      tries (password spraying);
    * *account*, from every address: never a wait by itself (then anyone could
      lock anyone out, its owner included), but from ``account_attack``
      failures on the account is under attack and each *(account, address)*
      gets one free attempt instead of ``account_free``: a botnet gets one
      guess per address per back-off period.

    So the owner, with the right password, from an address that has not
    failed itself, always gets in.  A success clears only its own
    *(account, address)*: not the address (one could reset it by logging in
    to an account of one's own between guesses) nor the account-wide count
    (the attack goes on while the owner works).
    """

    def __init__(self, settings: ThrottleSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.logins = Throttle(base_delay=settings.base_delay, max_delay=settings.max_delay,
                               forget_after=settings.forget_after, clock=clock)
        self.signups = Throttle(base_delay=3600 / settings.signups_per_hour, max_delay=3600,
                                forget_after=3600, clock=clock)

    def login_wait(self, account: str, address: str) -> float:
        """Seconds before ``account`` may try from ``address`` (0: now)."""
        where = address_key(address)
        free = 1 if self.under_attack(account) else self.settings.account_free
        return max(self.logins.wait(("pair", account, where), free),
                   self.logins.wait(("address", where), self.settings.address_free))

    def under_attack(self, account: str) -> bool:
        return self.logins.failures(("account", account)) >= self.settings.account_attack

    def login_failed(self, account: str, address: str) -> None:
        where = address_key(address)
        self.logins.failure(("pair", account, where))
        self.logins.failure(("address", where))
        self.logins.failure(("account", account))

    def login_succeeded(self, account: str, address: str) -> None:
        self.logins.reset(("pair", account, address_key(address)))

    def signup_wait(self, address: str) -> float:
        return self.signups.wait(f"signup:{address_key(address)}", self.settings.signups_per_hour)

    def signup_attempted(self, address: str) -> None:
        self.signups.failure(f"signup:{address_key(address)}")
