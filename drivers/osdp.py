"""OSDP card readers on RS-485: gated is the Control Panel, the reader a Peripheral Device.

OSDP (IEC 60839-11-5) runs on a half-duplex RS-485 pair: the Control Panel (CP) polls
the reader, the Peripheral Device (PD) at ``address``, about 10 times a second and the
reader answers every poll, with a card read when there is one. libosdp's Python bindings
speak the protocol; :class:`PortChannel` gives them the serial port, and
:func:`decode_card` turns a card read into the uid the registry stores:

- Wiegand format (the reader sends the raw Wiegand bits, parity included) of 26 or 34
  bits: parity is checked as the ``wiegand`` driver checks it, and the uid is the data
  bits without parity, in uppercase hex: the ``wiegand`` driver's uid, so a card
  registered from a Wiegand reader works on an OSDP reader unchanged. A 26-bit card
  with facility code 123 and number 6789 is ``7B1A85`` (6 digits; 34 bits give 8).
  Bad parity: dropped and counted.
- Any other raw read (format "unspecified", or Wiegand of another length): every bit
  as sent, parity included, as the uppercase hex of their value, one digit per 4 bits
  rounded up: the same 26-bit card sent as "unspecified" is ``2F6350A`` (7 digits).
- ASCII format: the text, stripped, in uppercase.

A local status report (OSDP ``osdp_LSTATR``: the reader's own tamper switch and power)
becomes a ``tamper`` reading when its tamper byte changes: True when the reader reports
tamper, False when it reports normal again (:func:`decode_local_status`). A power
failure it reports is logged. A clear outside the secure channel a key asks for is not
trusted (it could hide a tamper); a tamper is taken however it comes.

Health: healthy once the reader has answered the CP's identification and capability
requests (and, with an ``scbk_file``, the secure channel is up). Unhealthy, each a
``device`` event, when the port cannot be opened or vanishes, when no byte has come
from the reader for :data:`SILENCE_S`, when libosdp takes it offline, or when the
secure channel that a key asks for is down. libosdp on its own waits ~8 s before it
calls a silent reader offline and then does not try it again for 5 minutes, so each
reconnection is a fresh CP on a freshly opened port, with the shared backoff (50 ms
doubling to 0.5 s) of :class:`ReconnectingReader`.

libosdp and pyserial are imported where the driver starts, so this module imports on
any machine.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from drivers.common.base import DriverContext, Emit, Reading
from drivers.common.options import CARD_DRIVER, KeyProblem, OptionalFile, SerialConfig, SerialPort
from drivers.common.serialport import (
    ReaderDriver,
    ReconnectingReader,
    open_serial,
    with_dropped,
)
from drivers.wiegand import LENGTHS, decode_bits

log = logging.getLogger(__name__)

#: Seconds without a byte from the reader after which it counts as gone: about 10
#: polls unanswered (libosdp polls every ~0.1 s; it would wait ~8 s itself, then not
#: try again for 5 minutes).
SILENCE_S = 1.0
#: Seconds an open waits for the reader to come online: identification, capabilities
#: and the secure channel handshake take ~0.25 s at 9600 baud, but OSDP lets a reader
#: take 200 ms per reply, so a slow one may need over 1 s. A silent line still fails
#: after SILENCE_S.
ONLINE_WAIT_S = 3.0
#: Seconds one event wait blocks at most, so ``stop()`` is answered promptly.
READ_TIMEOUT_S = 0.1
#: Seconds one serial write may block: a line that takes longer is a failed device.
WRITE_TIMEOUT_S = 0.5
#: Longest ASCII card number taken, in characters.
MAX_TEXT = 64

# libosdp's card formats (enum osdp_event_cardread_format_e) and its event type of a
# card read, as plain numbers so that decoding needs no libosdp; the tests check
# them against the bindings.
FORMAT_RAW = 0
FORMAT_WIEGAND = 1
FORMAT_ASCII = 2
EVENT_CARDREAD = 1
# libosdp's event type of a status report and the report type of the PD's local
# status (enum osdp_status_report_type): report[0] is tamper, report[1] power.
EVENT_STATUS = 4
STATUS_REPORT_LOCAL = 2

#: Counters of card reads (and local status reports) that were dropped.
DROPS = ("parity", "bad_data", "format", "insecure")


class OsdpCardConfig(SerialConfig):
    """An OSDP reader on RS-485, polled by gated as the Control Panel (libosdp)."""

    driver: Literal["osdp"] = Field(default="osdp", description=CARD_DRIVER)
    port: SerialPort = Field(
        description="Serial port of the RS-485 adapter the reader is wired to."
    )
    baud: int = Field(
        default=9600, gt=0, description="Serial speed in baud, as set on the reader (OSDP: 9600)."
    )
    address: int = Field(
        default=0, ge=0, le=126, description="OSDP address of the reader, 0 to 126, as set on it."
    )
    scbk_file: OptionalFile = Field(
        default=None,
        description=(
            "File holding the reader's secure channel key (SCBK) as 32 hex digits;"
            " none = no secure channel."
        ),
    )
    install_mode: bool = Field(
        default=False,
        description=(
            "Let a reader still on the default key (SCBK-D) connect and be given the key in"
            " scbk_file; turn it off once the reader has it."
        ),
    )

    @model_validator(mode="after")
    def _install_needs_key(self) -> OsdpCardConfig:
        if self.install_mode and self.scbk_file is None:
            raise KeyProblem("scbk_file", "required when install_mode = true (the key to give)")
        return self


@dataclass(frozen=True)
class CardData:
    """One decoded card read: ``uid`` when it decoded, else ``problem`` says why not."""

    uid: str | None = None
    problem: str | None = None


def decode_card(fmt: object, length: object, data: object) -> CardData:
    """The uid of one card read given as libosdp reports it: format, bit count, bytes.

    The bits are ``data`` from its most significant bit on. ``problem`` is ``parity``
    (a 26- or 34-bit Wiegand read with bad parity), ``bad_data`` (no bits, fewer bytes
    than bits, ASCII that is not printable text) or ``format`` (an unknown format).
    """
    if not isinstance(data, bytes | bytearray):
        return CardData(problem="bad_data")
    if fmt == FORMAT_ASCII:
        try:
            text = bytes(data).decode("ascii").strip()
        except UnicodeDecodeError:
            return CardData(problem="bad_data")
        if not text or len(text) > MAX_TEXT or not text.isprintable():
            return CardData(problem="bad_data")
        return CardData(uid=text.upper())
    if isinstance(fmt, bool) or fmt not in (FORMAT_RAW, FORMAT_WIEGAND):
        return CardData(problem="format")
    if not isinstance(length, int) or isinstance(length, bool) or not 0 < length <= 8 * len(data):
        return CardData(problem="bad_data")
    value = int.from_bytes(data, "big") >> (8 * len(data) - length)
    if fmt == FORMAT_WIEGAND and length in LENGTHS:
        frame = decode_bits([(value >> (length - 1 - i)) & 1 for i in range(length)])
        return CardData(uid=frame.uid) if frame.uid is not None else CardData(problem="parity")
    return CardData(uid=f"{value:0{(length + 3) // 4}X}")


@dataclass(frozen=True)
class LocalStatus:
    """The reader's own status: its tamper switch tripped, its power failed."""

    tamper: bool
    power_failure: bool


def decode_local_status(report_type: object, report: object) -> LocalStatus | None:
    """The reader's status from a libosdp status report: type, then the report's bytes.

    None for a report of another type (inputs, outputs, remote readers) or one without
    its tamper byte; a missing power byte reads as normal. Any non-zero byte is active.
    """
    if isinstance(report_type, bool) or report_type != STATUS_REPORT_LOCAL:
        return None
    if not isinstance(report, bytes | bytearray) or not report:
        return None
    return LocalStatus(tamper=report[0] != 0, power_failure=len(report) > 1 and report[1] != 0)


def read_scbk(path: str | Path) -> bytes:
    """The 16-byte secure channel base key in ``path``: 32 hex digits, spaces ignored."""
    text = Path(path).read_text(encoding="ascii", errors="replace")
    try:
        key = bytes.fromhex("".join(text.split()))
    except ValueError:
        key = b""
    if len(key) != 16:
        # never the file's content: it is a secret, even when malformed
        raise ValueError(f"{path}: an SCBK is 32 hex digits (16 bytes)")
    return key


class PortChannel:
    """libosdp's channel on an open serial port; it never raises.

    libosdp calls ``read``, ``write`` and ``flush`` on its own refresh thread, and an
    exception there ends that thread for good. So a failing port is kept in ``error``
    (the reader's thread raises it) and the channel goes quiet. ``last_rx`` is the
    monotonic time of the last byte from the reader, ``bytes_in`` counts them.
    """

    def __init__(self, port: Any):
        self.port = port
        self.error: Exception | None = None
        self.bytes_in = 0
        self.last_rx: float | None = None

    def read(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` waiting bytes, without blocking (the port's timeout is 0)."""
        if self.error is not None:
            return b""
        try:
            data = bytes(self.port.read(max_bytes))
        except Exception as exc:  # SerialException, OSError: the port went away
            self.error = exc
            return b""
        if data:
            self.bytes_in += len(data)
            self.last_rx = time.monotonic()
        return data

    def write(self, buf: bytes) -> int:
        """Send ``buf``; the number of bytes sent (0 once the port failed)."""
        if self.error is not None:
            return 0
        try:
            return int(self.port.write(buf) or 0)
        except Exception as exc:  # a write timeout is a stuck line: a failed device too
            self.error = exc
            return 0

    def flush(self) -> None:
        """Drop stale input: libosdp flushes before it repeats a command."""
        if self.error is not None:
            return
        try:
            self.port.reset_input_buffer()
        except Exception as exc:
            self.error = exc


class OsdpLink(ReconnectingReader):
    """The RS-485 port and a libosdp Control Panel polling one reader on it.

    An open succeeds once the reader is online (with the secure channel when there is
    a key); ``read_once`` hands each event the reader reports to ``on_event``, with
    whether the secure channel a key asks for was up, and raises OSError when the
    reader is gone, which closes the CP and the port and opens them afresh.
    """

    def __init__(
        self,
        name: str,
        emit: Emit,
        port: str,
        baud: int,
        address: int,
        on_event: Callable[[Mapping[str, Any], bool], None],
    ):
        super().__init__(name, emit, f"OSDP reader {address} on {port}")
        self.port = port
        self.baud = baud
        self.address = address
        self.on_event = on_event
        self.scbk: bytes | None = None
        self.install_mode = False
        self.stats["bytes"] = 0
        self._serial: Any = None
        self._channel: PortChannel | None = None
        self._cp: Any = None
        self._bytes_before = 0

    def open(self) -> None:
        """Open the port, start a CP on it and wait up to 1 s for the reader to come online."""
        import osdp

        port = open_serial(self.port, self.baud, timeout=0, write_timeout=WRITE_TIMEOUT_S)
        try:
            port.reset_input_buffer()
            channel = PortChannel(port)
            flags = []
            if self.scbk is not None and not self.install_mode:
                # with a key, never fall back to the default key or to plain text
                flags.append(osdp.LibFlag.EnforceSecure)
            info = osdp.PDInfo(self.address, channel, scbk=self.scbk, flags=flags)
            # libosdp prints to stderr by itself (no hook into logging): quiet unless
            # debugging, the driver's own health messages say what went wrong.
            debug = log.isEnabledFor(logging.DEBUG)
            level = osdp.LogLevel.Debug if debug else osdp.LogLevel.Emergency
            cp = osdp.ControlPanel([info], log_level=level)
            cp.start()
        except Exception:
            port.close()
            raise
        self._serial, self._channel, self._cp = port, channel, cp
        self._bytes_before = self.stats["bytes"]
        try:
            self._wait_online()
        except BaseException:
            self.close()
            raise

    def _wait_online(self) -> None:
        deadline = time.monotonic() + ONLINE_WAIT_S
        while not self._online():
            self._check_channel()
            if time.monotonic() > deadline:
                raise OSError(errno.ETIMEDOUT, self._why_not_online())
            if self._stop.wait(0.01):
                raise OSError(errno.ECANCELED, "stopped")

    def _online(self) -> bool:
        cp = self._cp
        if not cp.is_online(self.address):
            return False
        return self.scbk is None or bool(cp.is_sc_active(self.address))

    def _why_not_online(self) -> str:
        channel = self._channel
        if channel is None or channel.last_rx is None:
            return f"no answer at OSDP address {self.address} (wiring, address, baud?)"
        if self.scbk is not None:
            return "the reader answers but the secure channel fails (wrong scbk_file key?)"
        return "the reader answers but does not come online (baud, or it needs a key?)"

    def _check_channel(self) -> None:
        channel = self._channel
        if channel is None:
            raise OSError(errno.ENODEV, "not open")
        self.stats["bytes"] = self._bytes_before + channel.bytes_in
        if channel.error is not None:
            exc = channel.error
            if isinstance(exc, OSError) and exc.errno is None and "returned no data" in str(exc):
                # pyserial's words for a pty or USB adapter whose other end is gone
                raise OSError(errno.ENODEV, "device disconnected") from None
            raise OSError(getattr(exc, "errno", None) or errno.EIO, str(exc) or "I/O error")

    def read_once(self) -> None:
        """Wait up to 0.1 s for an event and handle it; OSError when the reader is gone."""
        event = self._cp.get_event(self.address, timeout=READ_TIMEOUT_S)
        self._check_channel()
        if event is not None:
            secure = self.scbk is None or bool(self._cp.is_sc_active(self.address))
            self.on_event(event, secure)
        if not self._cp.is_online(self.address):
            raise OSError(errno.EHOSTDOWN, "the reader went offline")
        if self.scbk is not None and not self._cp.is_sc_active(self.address):
            raise OSError(errno.EPROTO, "the secure channel went down")
        last = self._channel.last_rx if self._channel is not None else None
        if last is None or time.monotonic() - last > SILENCE_S:
            raise OSError(errno.ETIMEDOUT, f"no answer for {SILENCE_S:g} s")

    def close(self) -> None:
        """Stop the CP and close the port, ignoring errors (the port may be gone)."""
        cp, self._cp = self._cp, None
        port, self._serial = self._serial, None
        self._channel = None
        if cp is not None:
            try:
                cp.teardown()
            except Exception as exc:  # a CP that never started has nothing to stop
                log.debug("%s: CP teardown failed: %s", self.name, exc)
        if port is not None:
            try:
                port.close()
            except Exception as exc:  # closing a vanished port may fail; nothing to do
                log.debug("%s: close failed: %s", self.name, exc)


class OsdpCardReader(ReaderDriver):
    """An OSDP reader on RS-485: emits one ``card`` reading per card read it reports,
    and a ``tamper`` reading when its tamper status changes.

    Config: :class:`OsdpCardConfig` (``[card] driver = "osdp"``): ``scbk_file`` is the
    secure channel key (none = no secure channel), ``install_mode`` lets a reader on
    the default key connect and be given that key. ``stats`` adds ``cards``, the
    dropped reads (``parity``, ``bad_data``, ``format`` and ``insecure``: read while
    the secure channel a key asks for was down),
    ``status`` (local status reports taken; a malformed one is ``bad_data``, an
    untrusted clear ``insecure``) and ``other_events`` (keypad, other status reports and
    the rest, ignored).
    """

    config_model = OsdpCardConfig
    config: OsdpCardConfig
    reader: OsdpLink

    def __init__(
        self,
        name: str,
        emit: Emit,
        config: BaseModel | Mapping[str, Any] | None = None,
        ctx: DriverContext | None = None,
    ):
        super().__init__(name, emit, config, ctx)
        self.counts: dict[str, int] = dict.fromkeys(("cards", *DROPS, "status", "other_events"), 0)
        self.tamper = False  # the reader's tamper as last reported to the controller
        self.power_failure = False
        self.reader = OsdpLink(
            self.name,
            self.emit,
            self.config.port,
            self.config.baud,
            self.config.address,
            self.on_event,
        )
        self._lock = threading.Lock()

    @property
    def stats(self) -> dict[str, int]:
        """Counters for ``/metrics``: the reads' and the link's, ``dropped`` their sum."""
        return with_dropped(self.counts, DROPS, self.reader)

    def start(self) -> None:
        """Read the key and start polling; a missing port or reader is retried until it appears."""
        try:
            import osdp  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                f"{self.name}: the osdp driver needs libosdp (pip install 'gated[osdp]')"
            ) from exc
        import serial  # noqa: F401  (fail here, clearly, if pyserial is missing)

        if not self.reader.port:
            raise ValueError(f"{self.name}: no serial port configured")
        key_file = self.config.scbk_file
        install_mode = self.config.install_mode
        # The config refuses install_mode without a key too; a driver built from a
        # mapping (a test, a bench) is not validated, so it checks again.
        if install_mode and not key_file:
            raise ValueError(f"{self.name}: install_mode needs scbk_file, the key to give")
        self.reader.scbk = read_scbk(key_file) if key_file else None
        self.reader.install_mode = install_mode
        if install_mode:
            log.warning(
                "%s: install mode: a reader on the default key is given the one in %s;"
                " turn install_mode off once it is set",
                self.name,
                key_file,
            )
        elif key_file is None:
            log.info("%s: no scbk_file: OSDP without a secure channel", self.name)
        self.reader.start()

    def on_event(self, event: Mapping[str, Any], secure: bool) -> None:
        """Emit the uid of a card read, or count why it was dropped; a tamper change is
        emitted too; other events are counted."""
        kind = event.get("event")
        if kind == EVENT_STATUS and event.get("type") == STATUS_REPORT_LOCAL:
            self._local_status(event.get("report"), secure)
            return
        if kind != EVENT_CARDREAD:
            with self._lock:
                self.counts["other_events"] += 1
            return
        card = decode_card(event.get("format"), event.get("length"), event.get("data"))
        if not secure:  # a key was configured: a read outside the secure channel is not trusted
            card = CardData(problem="insecure")
        with self._lock:
            self.counts["cards" if card.uid is not None else str(card.problem)] += 1
        if card.uid is None:
            self.reader.log_drops(self.counts, DROPS)
            return
        self.emit(Reading("card", card.uid, self.name))

    def _local_status(self, report: object, secure: bool) -> None:
        # Only the reader's thread calls this: ``tamper`` needs no lock, the counters do.
        status = decode_local_status(STATUS_REPORT_LOCAL, report)
        problem = None
        if status is None:
            problem = "bad_data"
        elif self.tamper and not status.tamper and not secure:
            problem = "insecure"  # a clear nobody can vouch for must not hide a tamper
        with self._lock:
            self.counts[problem or "status"] += 1
        if status is None or problem is not None:
            self.reader.log_drops(self.counts, DROPS)
            return
        if status.power_failure != self.power_failure:
            self.power_failure = status.power_failure
            what = "a power failure" if status.power_failure else "its power back"
            log.warning("%s: the reader reports %s", self.name, what)
        if status.tamper != self.tamper:
            self.tamper = status.tamper
            what = "tamper" if status.tamper else "its tamper cleared"
            log.warning("%s: the reader reports %s", self.name, what)
            self.emit(Reading("tamper", status.tamper, self.name))
