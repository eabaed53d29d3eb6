"""carlink v1.2 codec: COBS framing, CRC-16/MCRF4XX, the messages and a streaming frame decoder.

The contract is ``docs/carlink.md``. A frame on the wire is ``COBS(type | payload | crc16_le) + 0x00``.
v1.1 adds one exchange to v1.0 and changes no v1.0 frame: the host may send CAL_REQ after the handshake
and a v1.1 MCU answers CAL (its calibrated endpoints); a v1.0 MCU drops CAL_REQ as an unknown frame.
v1.2 adds one MCU → host frame and changes none: a host that sends CAL_REQ with minor 2 to firmware that
counts a wheel encoder (CAL flag ``ENCODER``) gets ODOM (tick count, time of the last tick) at 50 Hz;
older hosts never ask, so they never see it.
This module is pure (no I/O); :mod:`driver.vehicle.link` runs it over a serial port and
``vehicle/firmware/carlink_proto.c`` is the same codec on the MCU.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import ClassVar

from driver.errors import DriverError
from driver.units import norm_to_permille, permille_to_norm

PROTO_VERSION = 1
PROTO_MINOR = 2  # v1.1: CAL_REQ -> CAL; v1.2: ODOM (wheel encoder) to a host whose CAL_REQ says minor >= 2
MAX_FRAME = 64  # encoded bytes without the 0x00 delimiter; a longer frame is dropped
PERMILLE_MAX = 1000


class MsgType(IntEnum):
    CMD = 0x01
    HELLO = 0x02
    CAL_REQ = 0x03  # v1.1
    STATE = 0x81
    INFO = 0x82
    CAL = 0x83  # v1.1
    ODOM = 0x84  # v1.2


class Mode(IntEnum):
    MANUAL = 0
    AUTO = 1
    FAILSAFE = 2


class CmdFlags(IntFlag):
    NONE = 0
    AUTO_REQUEST = 0x01
    ESTOP = 0x02


class StateFlags(IntFlag):
    NONE = 0
    RC_LOST = 0x01
    HOST_TIMEOUT = 0x02
    OVERRIDE = 0x04


class CalFlags(IntFlag):
    NONE = 0
    STORED = 0x01  # the endpoints come from a stored calibration, not the firmware's defaults
    ENCODER = 0x02  # v1.2: the firmware counts a wheel encoder and sends ODOM to a v1.2 host


# ---- CRC and COBS ----

def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MCRF4XX (reflected poly 0x8408, init 0xFFFF, no final xor); ``crc16(b"123456789") == 0x6F91``."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data``; the result contains no 0x00 (the delimiter is not appended)."""
    out = bytearray(b"\x00")
    code_at, code = 0, 1
    for byte in data:
        if byte == 0:
            out[code_at] = code
            code_at, code = len(out), 1
            out.append(0)
        else:
            out.append(byte)
            code += 1
            if code == 0xFF:
                out[code_at] = code
                code_at, code = len(out), 1
                out.append(0)
    out[code_at] = code
    return bytes(out)


class CobsError(DriverError, ValueError):
    """Bytes that are not a valid COBS encoding."""


def cobs_decode(data: bytes) -> bytes:
    """Inverse of :func:`cobs_encode` (input without the 0x00 delimiter); raises :class:`CobsError`."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        i += 1
        if code == 0 or i + code - 1 > n:
            raise CobsError(f"COBS code {code} at offset {i - 1} runs past the end of {n} bytes")
        block = data[i : i + code - 1]
        if 0 in block:
            raise CobsError("0x00 inside a COBS frame")
        out += block
        i += code - 1
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


# ---- messages ----

def clamp_permille(value: int) -> int:
    """Clamp a per-mille value to -1000..1000 (what both ends of the link do with out-of-range values)."""
    return max(-PERMILLE_MAX, min(PERMILLE_MAX, int(value)))


@dataclass(frozen=True)
class Cmd:
    """Host → MCU drive command. ``steer``/``throttle`` are per-mille, clamped to -1000..1000 on construction."""

    seq: int
    steer: int
    throttle: int
    flags: CmdFlags = CmdFlags.NONE

    TYPE: ClassVar[MsgType] = MsgType.CMD
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<BhhB")

    def __post_init__(self) -> None:
        object.__setattr__(self, "seq", self.seq & 0xFF)
        object.__setattr__(self, "steer", clamp_permille(self.steer))
        object.__setattr__(self, "throttle", clamp_permille(self.throttle))
        object.__setattr__(self, "flags", CmdFlags(int(self.flags) & 0xFF))

    @classmethod
    def from_norm(cls, seq: int, steer: float, throttle: float, flags: CmdFlags = CmdFlags.NONE) -> Cmd:
        """A CMD from normalised [-1, 1] values, converted with :func:`driver.units.norm_to_permille`."""
        return cls(seq, norm_to_permille(steer), norm_to_permille(throttle), flags)

    @property
    def steer_norm(self) -> float:
        return permille_to_norm(self.steer)

    @property
    def throttle_norm(self) -> float:
        return permille_to_norm(self.throttle)

    def pack_payload(self) -> bytes:
        return self.FORMAT.pack(self.seq, self.steer, self.throttle, int(self.flags))

    @classmethod
    def unpack_payload(cls, payload: bytes) -> Cmd:
        return cls(*cls.FORMAT.unpack(payload))


@dataclass(frozen=True)
class Hello:
    """Host → MCU handshake; the MCU answers with :class:`Info`."""

    proto_version: int = PROTO_VERSION

    TYPE: ClassVar[MsgType] = MsgType.HELLO
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<B")

    def pack_payload(self) -> bytes:
        return self.FORMAT.pack(self.proto_version)

    @classmethod
    def unpack_payload(cls, payload: bytes) -> Hello:
        return cls(*cls.FORMAT.unpack(payload))


@dataclass(frozen=True)
class State:
    """MCU → host status: the ack of each CMD and a 50 Hz report. Pulse widths in microseconds."""

    seq: int
    ack: int
    t_ms: int
    rc_steer_us: int
    rc_thr_us: int
    rc_mode_us: int
    out_steer_us: int
    out_thr_us: int
    mode: Mode
    flags: StateFlags
    rx_bad: int

    TYPE: ClassVar[MsgType] = MsgType.STATE
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<BBIHHHHHBBB")

    def pack_payload(self) -> bytes:
        return self.FORMAT.pack(self.seq & 0xFF, self.ack & 0xFF, self.t_ms & 0xFFFFFFFF, self.rc_steer_us,
                                self.rc_thr_us, self.rc_mode_us, self.out_steer_us, self.out_thr_us,
                                int(self.mode), int(self.flags) & 0xFF, self.rx_bad & 0xFF)

    @classmethod
    def unpack_payload(cls, payload: bytes) -> State:
        f = cls.FORMAT.unpack(payload)
        mode = Mode(f[8]) if f[8] in Mode._value2member_map_ else f[8]  # an unknown mode stays an int: a fault
        return cls(*f[:8], mode, StateFlags(f[9]), f[10])

    @property
    def mode_known(self) -> bool:
        return isinstance(self.mode, Mode)


@dataclass(frozen=True)
class Info:
    """MCU → host reply to HELLO."""

    proto_version: int
    fw_version: int
    watchdog_ms: int

    TYPE: ClassVar[MsgType] = MsgType.INFO
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<BHH")

    def pack_payload(self) -> bytes:
        return self.FORMAT.pack(self.proto_version, self.fw_version, self.watchdog_ms)

    @classmethod
    def unpack_payload(cls, payload: bytes) -> Info:
        return cls(*cls.FORMAT.unpack(payload))


@dataclass(frozen=True)
class CalRequest:
    """Host → MCU (v1.1): report your calibration; ``minor`` is the host's protocol minor."""

    minor: int = PROTO_MINOR

    TYPE: ClassVar[MsgType] = MsgType.CAL_REQ
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<B")

    def pack_payload(self) -> bytes:
        return self.FORMAT.pack(self.minor)

    @classmethod
    def unpack_payload(cls, payload: bytes) -> CalRequest:
        return cls(*cls.FORMAT.unpack(payload))


@dataclass(frozen=True)
class Cal:
    """MCU → host (v1.1) reply to CAL_REQ: the endpoints (µs) outputs are mapped and clamped to."""

    minor: int
    steer_min_us: int
    steer_neutral_us: int
    steer_max_us: int
    thr_min_us: int
    thr_neutral_us: int
    thr_max_us: int
    steer_deadband_us: int
    flags: CalFlags

    TYPE: ClassVar[MsgType] = MsgType.CAL
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<BHHHHHHHB")

    def pack_payload(self) -> bytes:
        return self.FORMAT.pack(self.minor, self.steer_min_us, self.steer_neutral_us, self.steer_max_us,
                                self.thr_min_us, self.thr_neutral_us, self.thr_max_us, self.steer_deadband_us,
                                int(self.flags) & 0xFF)

    @classmethod
    def unpack_payload(cls, payload: bytes) -> Cal:
        f = cls.FORMAT.unpack(payload)
        return cls(*f[:8], CalFlags(f[8]))


@dataclass(frozen=True)
class Odom:
    """MCU → host (v1.2), at 50 Hz once a v1.2 host asked: the wheel encoder's rising edges
    since boot (``ticks``, wraps at 2³²) and the MCU clock at the newest edge (``tick_ms``) and now
    (``t_ms``). One channel: the count never goes down, reversing included."""

    t_ms: int
    ticks: int
    tick_ms: int

    TYPE: ClassVar[MsgType] = MsgType.ODOM
    FORMAT: ClassVar[struct.Struct] = struct.Struct("<III")

    def pack_payload(self) -> bytes:
        return self.FORMAT.pack(self.t_ms & 0xFFFFFFFF, self.ticks & 0xFFFFFFFF, self.tick_ms & 0xFFFFFFFF)

    @classmethod
    def unpack_payload(cls, payload: bytes) -> Odom:
        return cls(*cls.FORMAT.unpack(payload))


Message = Cmd | Hello | CalRequest | State | Info | Cal | Odom
MESSAGES: dict[int, type] = {m.TYPE: m for m in (Cmd, Hello, CalRequest, State, Info, Cal, Odom)}


def encode_body(msg_type: int, payload: bytes) -> bytes:
    """``type | payload | crc16_le`` (before COBS)."""
    body = bytes([msg_type]) + payload
    return body + struct.pack("<H", crc16(body))


def encode(msg: Message) -> bytes:
    """One complete frame for the wire: ``COBS(type | payload | crc) + 0x00``."""
    return cobs_encode(encode_body(msg.TYPE, msg.pack_payload())) + b"\x00"


# ---- streaming decoder ----

@dataclass
class DropCounts:
    """Frames dropped by a :class:`FrameDecoder`, by reason."""

    bad_cobs: int = 0
    short: int = 0
    bad_crc: int = 0
    bad_length: int = 0  # known type, wrong payload length
    unknown_type: int = 0
    overlong: int = 0
    presync_bytes: int = 0  # bytes discarded before the first 0x00 (not frames, not in ``total``)

    @property
    def total(self) -> int:
        return self.bad_cobs + self.short + self.bad_crc + self.bad_length + self.unknown_type + self.overlong


class FrameDecoder:
    """Feed raw bytes, get complete valid messages; bad frames are counted in :attr:`drops` and skipped.

    Bytes before the first 0x00 are discarded (we may have opened the port mid-frame). A frame whose encoded
    length grows past :data:`MAX_FRAME` is dropped and the decoder waits for the next 0x00. Two consecutive
    0x00 (an empty frame) are idle/sync bytes, not a drop.
    """

    def __init__(self, accept: tuple[MsgType, ...] | None = None) -> None:
        self.accept = set(accept) if accept is not None else set(MESSAGES)
        self.drops = DropCounts()
        self._buf = bytearray()
        self._synced = False
        self._overlong = False

    def feed(self, data: bytes) -> list[Message]:
        """Decode every complete frame in ``data`` (plus what was buffered); returns the valid messages."""
        return list(self.iter_feed(data))

    def iter_feed(self, data: bytes) -> Iterator[Message]:
        for byte in data:
            if byte == 0:
                if self._synced and not self._overlong and self._buf:
                    msg = self._decode(bytes(self._buf))
                    if msg is not None:
                        yield msg
                self._synced, self._overlong = True, False
                self._buf.clear()
            elif not self._synced:
                self.drops.presync_bytes += 1
            elif self._overlong:
                continue
            elif len(self._buf) >= MAX_FRAME:
                self._overlong = True
                self.drops.overlong += 1
                self._buf.clear()
            else:
                self._buf.append(byte)

    def _decode(self, encoded: bytes) -> Message | None:
        try:
            body = cobs_decode(encoded)
        except CobsError:
            self.drops.bad_cobs += 1
            return None
        if len(body) < 3:
            self.drops.short += 1
            return None
        if crc16(body[:-2]) != struct.unpack_from("<H", body, len(body) - 2)[0]:
            self.drops.bad_crc += 1
            return None
        cls = MESSAGES.get(body[0])
        if cls is None or body[0] not in self.accept:
            self.drops.unknown_type += 1
            return None
        payload = body[1:-2]
        if len(payload) != cls.FORMAT.size:
            self.drops.bad_length += 1
            return None
        return cls.unpack_payload(payload)
