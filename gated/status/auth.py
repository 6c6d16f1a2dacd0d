"""Guard login for the status screen: scrypt PIN hashes, sessions, lockout, CSRF.

A PIN hash is ``scrypt$N$r$p$salt$hash`` (salt and hash in unpadded base64url), as
``gated hash-pin`` prints it. A guard listed in ``status.guards`` logs in with that
guard's own PIN; any other well-formed guard id logs in with the shared
``status.guard_pin_hash``. Nothing here logs or keeps a PIN.

PIN guessing (docs/contracts.md §8): a PIN is checked only once a *try* has been reserved for it,
before the hash is computed, so requests that arrive at once are counted at once. A
try counts for ``lockout_s`` (the window, at least 5 minutes) from the moment it was
reserved, unless the PIN proves right; at most ``lockout_after`` tries per guard id
and ``lockout_gate_after`` per gate fit in the window, from whatever address. A try
refused for want of room is not checked and not counted.

The booth's own screen keeps a budget of its own: tries from a loopback address (the
kiosk browser on the gate's Pi) and tries from any other address are counted apart,
so somebody on the LAN who guesses at guard G01 locks G01 out of logins from the LAN
only, never out of the booth; a guard who mistypes at the booth is locked out there
for at most the window. When ``listen`` is loopback every client is the booth and
there is one budget. A reverse proxy on the Pi would make every client look like the
booth: the screen is not meant to sit behind one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_HASH = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9_-]{16,})\$([A-Za-z0-9_-]{32,})$")
GUARD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
MIN_PIN = 4
MAX_PIN = 64
MIN_KIOSK_TOKEN = 32
KIOSK_TOKEN = re.compile(r"^[A-Za-z0-9_.-]+$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_loopback(host: str) -> bool:
    """Whether a listen host (or a client address) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack ("::") listen
    return ip.is_loopback


def check_pin_text(pin: str) -> str | None:
    """Why ``pin`` is not acceptable as a PIN, or None."""
    if not MIN_PIN <= len(pin) <= MAX_PIN:
        return f"a PIN has {MIN_PIN} to {MAX_PIN} characters"
    if any(c.isspace() for c in pin):
        return "a PIN has no spaces"
    return None


def read_kiosk_token(path: Path) -> str:
    """The read-only kiosk token in ``path`` (its first line, stripped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0].strip() if lines else ""


def check_kiosk_token(path: Path) -> str | None:
    """Why the kiosk token file ``path`` is not usable, or None (never says the token)."""
    try:
        token = read_kiosk_token(path)
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read it: {type(exc).__name__}"
    if len(token) < MIN_KIOSK_TOKEN or not KIOSK_TOKEN.match(token):
        return (
            f"the first line must be a token of {MIN_KIOSK_TOKEN} or more letters, digits, "
            "'-', '_' or '.' (e.g. the output of `openssl rand -hex 32`)"
        )
    return None


def kiosk_cookie(token: str) -> str:
    """The cookie a kiosk browser keeps instead of the token itself."""
    return hashlib.sha256(b"gated-kiosk-cookie\0" + token.encode()).hexdigest()


def same_secret(given: str | None, want: str) -> bool:
    """Whether ``given`` is ``want`` (constant time; False when either is empty)."""
    if not given or not want:
        return False
    return hmac.compare_digest(given.encode(), want.encode())


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
class Login:
    """A logged-in guard at one browser: the cookie value is ``sid``."""

    sid: str
    guard: str
    csrf: str
    created: float
    last_seen: float


@dataclass(eq=False)
class Try:
    """One PIN check, reserved before its hash; it counts from ``at`` unless it proves right."""

    guard: str
    booth: bool
    at: float


@dataclass
class _Budget:
    """The tries of one kind of client (the booth's own screen, or the rest) in the window."""

    gate: list[Try] = field(default_factory=list)
    guards: dict[str, list[Try]] = field(default_factory=dict)


@dataclass
class GuardAuth:
    """Sessions and PIN tries of the status screen; used from one event loop only.

    ``lockout_after`` tries per guard id and ``lockout_gate_after`` per gate fit in
    ``lockout_s``, for the booth and for other clients apart (see the module's text).
    ``clock`` is a monotonic clock in seconds, so tests can move time.
    """

    shared_hash: str
    guard_hashes: dict[str, str]
    lockout_after: int
    lockout_gate_after: int
    lockout_s: float
    session_s: float
    clock: Callable[[], float]
    sessions: dict[str, Login] = field(default_factory=dict)
    budgets: dict[bool, _Budget] = field(
        default_factory=lambda: {True: _Budget(), False: _Budget()}
    )

    @property
    def enabled(self) -> bool:
        """Whether any guard can log in at all (a PIN hash is configured)."""
        return bool(self.shared_hash or self.guard_hashes)

    def hash_for(self, guard: str) -> str:
        """The PIN hash that guard ``guard`` logs in with ("" = none)."""
        return self.guard_hashes.get(guard, self.shared_hash)

    def _budget(self, client: str) -> _Budget:
        budget = self.budgets[is_loopback(client)]
        since = self.clock() - self.lockout_s
        if budget.gate and budget.gate[0].at <= since:  # the oldest first: tries are in order
            budget.gate = [t for t in budget.gate if t.at > since]
            budget.guards = {
                g: kept
                for g, tries in budget.guards.items()
                if (kept := [t for t in tries if t.at > since])
            }
        return budget

    def locked(self, guard: str, client: str) -> float:
        """Seconds until a PIN for ``guard`` from ``client`` may be tried again (0 = now)."""
        budget = self._budget(client)
        now = self.clock()
        left = 0.0
        tries = budget.guards.get(guard, [])
        if len(tries) >= self.lockout_after:
            left = tries[-self.lockout_after].at + self.lockout_s - now
        if len(budget.gate) >= self.lockout_gate_after:
            left = max(left, budget.gate[-self.lockout_gate_after].at + self.lockout_s - now)
        return max(left, 0.0)

    def reserve(self, guard: str, client: str) -> Try | None:
        """Room for one PIN check of ``guard`` from ``client``, taken now; None when full."""
        if self.locked(guard, client) > 0:
            return None
        budget = self._budget(client)
        attempt = Try(guard, is_loopback(client), self.clock())
        budget.gate.append(attempt)
        budget.guards.setdefault(guard, []).append(attempt)
        return attempt

    def right(self, attempt: Try) -> Login:
        """The PIN of ``attempt`` was right: its try no longer counts; a session opens.

        The wrong tries before it still count: a guess that a guard's own login came
        between is a guess all the same."""
        budget = self.budgets[attempt.booth]
        budget.gate = [t for t in budget.gate if t is not attempt]
        tries = [t for t in budget.guards.get(attempt.guard, []) if t is not attempt]
        if tries:
            budget.guards[attempt.guard] = tries
        else:
            budget.guards.pop(attempt.guard, None)
        return self.open_session(attempt.guard)

    def open_session(self, guard: str) -> Login:
        """A new session of ``guard`` (its PIN was right)."""
        now = self.clock()
        session = Login(secrets.token_urlsafe(32), guard, secrets.token_urlsafe(24), now, now)
        self.sessions[session.sid] = session
        return session

    def session(self, sid: str | None) -> Login | None:
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

    def expired(self) -> list[Login]:
        """Remove and return the sessions past their lifetime."""
        now = self.clock()
        gone = [s for s in self.sessions.values() if now - s.created > self.session_s]
        for s in gone:
            del self.sessions[s.sid]
        return gone

    def end(self, sid: str) -> Login | None:
        """Log one session out."""
        return self.sessions.pop(sid, None)

    def on_duty(self, guard: str) -> bool:
        """Whether ``guard`` still has a session open somewhere."""
        return any(s.guard == guard for s in self.sessions.values())
