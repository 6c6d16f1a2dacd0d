"""Guard login for the status screen: scrypt PIN hashes, sessions, lockout, CSRF.

A PIN hash is ``scrypt$N$r$p$salt$hash`` (salt and hash in unpadded base64url), as
``gated hash-pin`` prints it. A guard listed in ``status.guards`` logs in with that
guard's own PIN; any other well-formed guard id logs in with the shared
``status.guard_pin_hash``. Wrong PINs are counted per guard id and per client
address; ``lockout_after`` in a row lock that id (or address) out for ``lockout_s``.
Nothing here logs or keeps a PIN.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9_-]{16,})\$([A-Za-z0-9_-]{32,})$")
GUARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
MIN_PIN = 4
MAX_TRACKED = 10_000
MAX_PIN = 64


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_loopback(host: str) -> bool:
    """Whether a listen host is reachable from this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_pin_text(pin: str) -> str | None:
    """Why ``pin`` is not acceptable as a PIN, or None."""
    if not MIN_PIN <= len(pin) <= MAX_PIN:
        return f"a PIN has {MIN_PIN} to {MAX_PIN} characters"
    if any(c.isspace() for c in pin):
        return "a PIN has no spaces"
    return None


def hash_pin(pin: str, salt: bytes | None = None) -> str:
    """The ``scrypt$...`` hash of ``pin`` with a fresh random salt."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(
        pin.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32, maxmem=64 << 20
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def parse_pin_hash(value: str) -> tuple[int, int, int, bytes, bytes]:
    """``(n, r, p, salt, hash)`` of a PIN hash; ValueError if it is not one."""
    m = _HASH.match(value)
    if not m:
        raise ValueError("not a PIN hash: store what `gated hash-pin` prints (scrypt$...)")
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise ValueError("scrypt parameters out of range")
    return n, r, p, _unb64(m[4]), _unb64(m[5])


def verify_pin(pin: str, stored: str) -> bool:
    """Whether ``pin`` matches ``stored`` (constant-time comparison; CPU-heavy by design)."""
    try:
        n, r, p, salt, want = parse_pin_hash(stored)
    except ValueError:
        return False
    got = hashlib.scrypt(pin.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want), maxmem=256 << 20)
    return hmac.compare_digest(got, want)


@dataclass
class Session:
    """A logged-in guard at one browser: the cookie value is ``sid``."""

    sid: str
    guard: str
    csrf: str
    created: float
    last_seen: float


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


@dataclass
class LoginResult:
    """What a login attempt came to: a session, or why not (and for how long)."""

    session: Session | None = None
    error: str = ""
    retry_after_s: float = 0.0


@dataclass
class GuardAuth:
    """Sessions and lockouts of the status screen; used from one event loop only.

    ``clock`` is a monotonic clock in seconds, so tests can move time.
    """

    shared_hash: str
    guard_hashes: dict[str, str]
    lockout_after: int
    lockout_s: float
    session_s: float
    clock: Any
    sessions: dict[str, Session] = field(default_factory=dict)
    failures: dict[str, _Failures] = field(default_factory=dict)
    failed_total: int = 0
    lockouts_total: int = 0

    @property
    def enabled(self) -> bool:
        """Whether any guard can log in at all (a PIN hash is configured)."""
        return bool(self.shared_hash or self.guard_hashes)

    def hash_for(self, guard: str) -> str:
        """The PIN hash that guard ``guard`` logs in with ("" = none)."""
        return self.guard_hashes.get(guard, self.shared_hash)

    def locked(self, guard: str, client: str) -> float:
        """Seconds the guard id or the client address is still locked out for (0 = not)."""
        now = self.clock()
        left = 0.0
        for key in (f"g:{guard}", f"c:{client}"):
            f = self.failures.get(key)
            if f is not None and f.locked_until > now:
                left = max(left, f.locked_until - now)
        return left

    def failed(self, guard: str, client: str) -> None:
        """Count a wrong PIN against the guard id and the client address."""
        self.failed_total += 1
        now = self.clock()
        if len(self.failures) > MAX_TRACKED:  # ids sprayed at random must not grow memory
            self.failures = {k: f for k, f in self.failures.items() if f.locked_until > now}
        locked = False
        for key in (f"g:{guard}", f"c:{client}"):
            f = self.failures.setdefault(key, _Failures())
            if f.locked_until and f.locked_until <= now:
                f.count, f.locked_until = 0, 0.0
            f.count += 1
            if f.count >= self.lockout_after:
                f.locked_until = now + self.lockout_s
                f.count = 0
                locked = True
        self.lockouts_total += locked

    def succeeded(self, guard: str, client: str) -> Session:
        """Clear the failures of this guard and address; open a session."""
        self.failures.pop(f"g:{guard}", None)
        self.failures.pop(f"c:{client}", None)
        now = self.clock()
        session = Session(secrets.token_urlsafe(32), guard, secrets.token_urlsafe(24), now, now)
        self.sessions[session.sid] = session
        return session

    def session(self, sid: str | None) -> Session | None:
        """The live session with cookie ``sid``, touched; None when absent or expired."""
        if not sid:
            return None
        s = self.sessions.get(sid)
        if s is None:
            return None
        now = self.clock()
        if now - s.created > self.session_s:
            return None
        s.last_seen = now
        return s

    def expired(self) -> list[Session]:
        """Remove and return the sessions past their lifetime."""
        now = self.clock()
        gone = [s for s in self.sessions.values() if now - s.created > self.session_s]
        for s in gone:
            del self.sessions[s.sid]
        return gone

    def end(self, sid: str) -> Session | None:
        """Log one session out."""
        return self.sessions.pop(sid, None)

    def on_duty(self, guard: str) -> bool:
        """Whether ``guard`` still has a session open somewhere."""
        return any(s.guard == guard for s in self.sessions.values())
