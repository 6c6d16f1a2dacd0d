"""QR passes: Ed25519 key pairs, issuing signed passes, verifying them offline (contracts §5).

A pass is a compact JWS signed with EdDSA/Ed25519, header ``{"alg":"EdDSA","kid":...}``, claims
``sub`` (person id), ``hh`` (household id), ``col`` (colour), ``iat``, ``nbf``, ``exp`` (unix
seconds), ``jti`` (unique id) and optionally ``gates`` (gate ids it is valid at) and ``otp``
(one-time visitor pass).

What :class:`PassVerifier` does NOT check: revocation by ``jti`` and the replay of a one-time
(``otp``) pass. Both need the database, so the controller does them with ``claims["jti"]`` and
``claims.get("otp")`` after a pass verified here.

Whatever a QR holds is untrusted: :meth:`PassVerifier.verify` never raises, never fetches or
executes anything, and logs only :func:`describe_qr` of the text, never the text itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import segno
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from gated.errors import PassError

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
"""The only JWS ``alg`` a pass may carry."""

MAX_PASS_CHARS = 4096
"""Longer QR texts are refused unparsed: a real pass is a few hundred characters."""

KID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
"""What a key id may look like (it is also a file name: ``{kid}.key``, ``{kid}.pub``)."""

REQUIRED_CLAIMS = ("sub", "hh", "col", "iat", "nbf", "exp", "jti")

# Reasons a pass is refused; the names are docs/contracts.md §4 reason codes.
PASS_INVALID = "pass_invalid"
PASS_EXPIRED = "pass_expired"
PASS_NOT_YET_VALID = "pass_not_yet_valid"
PASS_WRONG_GATE = "pass_wrong_gate"

_STRING_CLAIMS = ("sub", "hh", "col", "jti")
_TIME_CLAIMS = ("iat", "nbf", "exp")
_B64URL = r"[A-Za-z0-9_-]+"
_COMPACT_JWS_RE = re.compile(rf"^{_B64URL}\.{_B64URL}\.{_B64URL}$")
# Header parameters that change how a JWS is processed; a pass never uses them.
_FORBIDDEN_HEADERS = ("crit", "b64", "jku", "jwk", "x5u", "x5c", "zip")


def _check_kid(kid: object) -> str:
    if not isinstance(kid, str) or not KID_RE.fullmatch(kid):
        raise PassError(f"bad key id {kid!r}: use 1-64 of the characters A-Z a-z 0-9 _ . -")
    return kid


def generate_keypair(out_dir: Path, kid: str = "gate") -> tuple[Path, Path]:
    """Write a new Ed25519 pair ``{kid}.key`` (PKCS8 PEM, mode 0600) and ``{kid}.pub``.

    Returns ``(private_path, public_path)``. Never overwrites an existing file.
    """
    _check_kid(kid)
    out_dir = Path(out_dir)
    key_path = out_dir / f"{kid}.key"
    pub_path = out_dir / f"{kid}.pub"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PassError(f"cannot create {out_dir}: {exc.strerror or exc}") from exc
    for path in (key_path, pub_path):
        if path.exists() or path.is_symlink():
            raise PassError(f"{path} already exists; refusing to overwrite a key")

    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    _write_new(key_path, private_pem, 0o600)
    try:
        _write_new(pub_path, public_pem, 0o644)
    except PassError:
        key_path.unlink(missing_ok=True)
        raise
    return key_path, pub_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` (O_EXCL: a file that appeared meanwhile wins)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise PassError(f"{path} already exists; refusing to overwrite a key") from exc
    except OSError as exc:
        raise PassError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        if mode == 0o600:
            # The umask can only narrow the mode, but be explicit for the secret.
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise PassError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _read_pem(source: Path | bytes | str, what: str) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise PassError(f"cannot read {what} {source}: {exc.strerror or exc}") from exc


def _load_private_key(source: Path | bytes) -> Ed25519PrivateKey:
    pem = _read_pem(source, "private key")
    where = "" if isinstance(source, bytes) else f" {source}"
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError as exc:
        raise PassError(f"private key{where} is encrypted; use an unencrypted PKCS8 key") from exc
    except (ValueError, binascii.Error) as exc:
        raise PassError(f"private key{where} is not a PEM private key") from exc
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and friends
        raise PassError(f"private key{where} cannot be loaded: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise PassError(f"private key{where} is not an Ed25519 key (use `gated keygen`)")
    return key


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise PassError(f"{name} must be a non-empty string")
    return value


def _check_time(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PassError(f"{name} must be a finite number of seconds")
    return value


def issue_pass(
    private_key: Path | bytes,
    *,
    kid: str,
    sub: str,
    hh: str,
    col: str,
    valid_s: float = 86400,
    now: float | None = None,
    nbf: float | None = None,
    jti: str | None = None,
    gates: list[str] | None = None,
    otp: bool = False,
) -> str:
    """Sign a pass; returns the compact JWS.

    ``now`` (unix seconds, default the system clock) is ``iat``; the pass is valid from ``nbf``
    (default ``now``) for ``valid_s`` seconds, so ``exp = nbf + valid_s``. Times are written as
    whole seconds.
    """
    _check_kid(kid)
    claims: dict[str, Any] = {
        "sub": _check_text("sub", sub),
        "hh": _check_text("hh", hh),
        "col": _check_text("col", col),
    }
    if now is None:
        now = time.time()
    _check_time("now", now)
    start = now if nbf is None else _check_time("nbf", nbf)
    if _check_time("valid_s", valid_s) < 1:
        raise PassError("a pass must be valid for at least one second")
    claims["iat"] = math.floor(now)
    claims["nbf"] = math.floor(start)
    claims["exp"] = math.floor(start + valid_s)
    claims["jti"] = uuid.uuid4().hex if jti is None else _check_text("jti", jti)
    if gates is not None:
        if not isinstance(gates, list) or not gates:
            raise PassError("gates must be a non-empty list of gate ids (or None: every gate)")
        claims["gates"] = [_check_text("gate id", g) for g in gates]
    if otp:
        claims["otp"] = True

    key = _load_private_key(private_key)
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
    if len(token) > MAX_PASS_CHARS:
        raise PassError(
            f"the pass would be {len(token)} characters, over the {MAX_PASS_CHARS} a gate reads"
        )
    return token


def write_png(token: str, path: Path) -> None:
    """Write ``token`` as a QR code PNG (error correction M, 8 px modules, 4-module border)."""
    try:
        qr = segno.make(token, error="m", micro=False)
        qr.save(str(path), kind="png", scale=8, border=4)
    except OSError as exc:
        raise PassError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except segno.DataOverflowError as exc:
        raise PassError(f"the pass does not fit in a QR code: {exc}") from exc


def describe_qr(text: str) -> str:
    """A one-line, log-safe description of a QR text: its length and a hash prefix, never itself."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return f"qr(len={len(text)}, sha256={digest[:12]})"


@dataclass(frozen=True)
class PassCheck:
    """The outcome of verifying one QR text.

    ``reason`` is ``None`` when ``ok``, else a reason code of contracts §4 (``pass_invalid``,
    ``pass_expired``, ``pass_not_yet_valid``, ``pass_wrong_gate``). ``claims`` is empty unless
    the signature verified; ``jti`` is the pass id when the signature verified and it is a string.
    """

    ok: bool
    reason: str | None
    claims: dict[str, Any] = field(default_factory=dict)
    jti: str | None = None


_INVALID = PassCheck(ok=False, reason=PASS_INVALID, claims={}, jti=None)


def _b64url_decode(segment: str) -> bytes:
    """Decode one base64url segment, refusing any non-canonical spelling of the same bytes."""
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise ValueError("non-canonical base64url")
    return data


def _is_time(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _claims_well_formed(claims: Mapping[str, Any]) -> bool:
    for name in _STRING_CLAIMS:
        value = claims.get(name)
        if not isinstance(value, str) or not value:
            return False
    if not all(_is_time(claims.get(name)) for name in _TIME_CLAIMS):
        return False
    gates = claims.get("gates")
    if "gates" in claims and (
        not isinstance(gates, list) or not all(isinstance(g, str) and g for g in gates)
    ):
        return False
    return "otp" not in claims or isinstance(claims["otp"], bool)


class PassVerifier:
    """Verifies passes offline against the configured Ed25519 public keys, by ``kid``.

    ``max_clock_skew_s`` (seconds) widens the validity window ``[nbf, exp)`` on both sides.
    """

    def __init__(
        self, public_keys: Mapping[str, Path | bytes], max_clock_skew_s: float = 120
    ) -> None:
        if (
            isinstance(max_clock_skew_s, bool)
            or not isinstance(max_clock_skew_s, int | float)
            or not math.isfinite(max_clock_skew_s)
            or max_clock_skew_s < 0
        ):
            raise PassError(f"max_clock_skew_s must be a number >= 0, not {max_clock_skew_s!r}")
        self.max_clock_skew_s = float(max_clock_skew_s)
        self._keys: dict[str, Ed25519PublicKey] = {}
        for kid, source in public_keys.items():
            self._keys[kid] = self._load_public_key(kid, source)

    @staticmethod
    def _load_public_key(kid: str, source: Path | bytes) -> Ed25519PublicKey:
        pem = _read_pem(source, f"public key for kid {kid!r}:")
        try:
            key = serialization.load_pem_public_key(pem)
        except Exception as exc:  # ValueError, UnsupportedAlgorithm, ...
            raise PassError(f"public key for kid {kid!r} is not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise PassError(f"public key for kid {kid!r} is not an Ed25519 key")
        return key

    @property
    def kids(self) -> frozenset[str]:
        """The key ids this verifier knows."""
        return frozenset(self._keys)

    def verify(self, text: str, now: float, gate_id: str) -> PassCheck:
        """Check a QR text as a pass at ``gate_id`` at unix time ``now``; never raises."""
        try:
            return self._verify(text, now, gate_id)
        except Exception:  # a bug here must cost one refused pass, not the daemon
            log.exception("pass verification failed unexpectedly for %s", _describe_any(text))
            return _INVALID

    def _verify(self, text: str, now: float, gate_id: str) -> PassCheck:
        if not isinstance(text, str) or len(text) > MAX_PASS_CHARS:
            log.debug("pass refused (not a str or too long): %s", _describe_any(text))
            return _INVALID
        text = text.strip(" \t\r\n")
        if not _COMPACT_JWS_RE.fullmatch(text):
            log.debug("pass refused (not a compact JWS): %s", describe_qr(text))
            return _INVALID

        claims = self._verified_claims(text)
        if claims is None:
            return _INVALID
        raw_jti = claims.get("jti")
        jti = raw_jti if isinstance(raw_jti, str) and raw_jti else None
        if not _claims_well_formed(claims):
            log.info("pass refused (claims missing or mistyped): %s", describe_qr(text))
            return PassCheck(ok=False, reason=PASS_INVALID, claims=claims, jti=jti)

        # Valid over [nbf - skew, exp + skew). Written with `now` on the left so that an absurd
        # integer time (10**400) compares exactly instead of overflowing a float.
        skew = self.max_clock_skew_s
        reason: str | None = None
        if now - skew >= claims["exp"]:
            reason = PASS_EXPIRED
        elif now + skew < claims["nbf"]:
            reason = PASS_NOT_YET_VALID
        elif "gates" in claims and gate_id not in claims["gates"]:
            reason = PASS_WRONG_GATE
        return PassCheck(ok=reason is None, reason=reason, claims=claims, jti=jti)

    def _verified_claims(self, text: str) -> dict[str, Any] | None:
        """The claims of a well-formed EdDSA JWS by a known kid, or None."""
        header_b64, payload_b64, signature_b64 = text.split(".")
        try:
            _b64url_decode(payload_b64)
            _b64url_decode(signature_b64)
            header = json.loads(_b64url_decode(header_b64))
        except (ValueError, RecursionError):
            log.debug("pass refused (bad base64url or header JSON): %s", describe_qr(text))
            return None
        if not isinstance(header, dict):
            return None
        # Pin the algorithm before anything trusts the token (RFC 8725 §2.1, §3.1).
        if header.get("alg") != ALGORITHM:
            log.info("pass refused (alg is not %s): %s", ALGORITHM, describe_qr(text))
            return None
        if any(name in header for name in _FORBIDDEN_HEADERS):
            log.info("pass refused (unsupported JWS header): %s", describe_qr(text))
            return None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            log.info("pass refused (unknown kid): %s", describe_qr(text))
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                text,
                key,
                algorithms=[ALGORITHM],
                # Times are checked against the injected `now`, types by _claims_well_formed.
                options={
                    "verify_signature": True,
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_sub": False,
                    "verify_jti": False,
                    "require": [],
                },
            )
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            log.info("pass refused (signature or encoding): %s", describe_qr(text))
            return None
        return claims


def _describe_any(text: object) -> str:
    if isinstance(text, str):
        return describe_qr(text)
    return f"qr(type={type(text).__name__})"
