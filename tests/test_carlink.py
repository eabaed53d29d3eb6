"""carlink v1 codec: CRC, COBS, messages, the streaming decoder's drop accounting and clamping."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driver.units import norm_to_permille
from driver.vehicle.carlink import (
    MAX_FRAME,
    Cmd,
    CmdFlags,
    CobsError,
    FrameDecoder,
    Hello,
    Info,
    Mode,
    MsgType,
    State,
    StateFlags,
    cobs_decode,
    cobs_encode,
    crc16,
    encode,
    encode_body,
)

FAST = settings(max_examples=150, derandomize=True, deadline=None)

SAMPLES = [
    Cmd(7, -250, 400, CmdFlags.AUTO_REQUEST),
    Cmd(255, 1000, -1000, CmdFlags.AUTO_REQUEST | CmdFlags.ESTOP),
    Cmd(0, 0, 0),
    Hello(1),
    State(3, 7, 123456789, 1500, 1480, 1900, 1625, 1500, Mode.AUTO, StateFlags.OVERRIDE, 2),
    State(0, 0, 0, 0, 0, 0, 1500, 1500, Mode.FAILSAFE, StateFlags.RC_LOST | StateFlags.HOST_TIMEOUT, 255),
    Info(1, 1, 150),
]


def test_crc_check_value():
    assert crc16(b"123456789") == 0x6F91
    assert crc16(b"") == 0xFFFF


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x00", b"\x11\x00\x22", b"\x11\x22\x00", bytes(range(1, 64)),
                                  bytes(254 * [7]), bytes(300 * [9]) + b"\x00"])
def test_cobs_round_trip_examples(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert cobs_decode(encoded) == data


@FAST
@given(st.binary(max_size=300))
def test_cobs_round_trip(data):
    encoded = cobs_encode(data)
    assert 0 not in encoded
    assert len(encoded) <= len(data) + 1 + len(data) // 254
    assert cobs_decode(encoded) == data


@pytest.mark.parametrize("bad", [b"\x05\x01", b"\x02\x00\x01", b"\x00"])
def test_cobs_rejects_bad_encodings(bad):
    with pytest.raises(CobsError):
        cobs_decode(bad)


def test_known_cmd_frame():
    # the frame from vehicle_and_sim.md §2: CMD seq 1, steer 200, throttle 1000, AUTO_REQUEST
    assert encode(Cmd(1, 200, 1000, CmdFlags.AUTO_REQUEST)).hex(" ") == "04 01 01 c8 06 e8 03 01 a4 0d 00"


@pytest.mark.parametrize("msg", SAMPLES)
def test_messages_round_trip(msg):
    frame = encode(msg)
    assert frame.endswith(b"\x00") and 0 not in frame[:-1]
    assert len(frame) - 1 <= MAX_FRAME
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00" + frame) == [msg]
    assert decoder.drops.total == 0


def test_wire_sizes_match_contract():
    # CMD 11 B, HELLO 5 B, STATE 24 B, INFO 9 B on the wire (with these payloads no zero bytes are added)
    sizes = {MsgType.CMD: 6, MsgType.HELLO: 1, MsgType.STATE: 19, MsgType.INFO: 5}
    for cls in (Cmd, Hello, State, Info):
        assert cls.FORMAT.size == sizes[cls.TYPE]
    assert len(encode(Cmd(1, 200, 1000, CmdFlags.AUTO_REQUEST))) == 11


def test_cmd_clamps_and_uses_units():
    assert Cmd(300, 5000, -5000).pack_payload() == struct.pack("<BhhB", 44, 1000, -1000, 0)
    cmd = Cmd.from_norm(1, 2.5, -3.0, CmdFlags.AUTO_REQUEST)
    assert (cmd.steer, cmd.throttle) == (1000, -1000)
    cmd = Cmd.from_norm(1, 0.1234, -0.5)
    assert (cmd.steer, cmd.throttle) == (norm_to_permille(0.1234), norm_to_permille(-0.5)) == (123, -500)
    assert cmd.steer_norm == pytest.approx(0.123) and cmd.throttle_norm == pytest.approx(-0.5)
    # an out-of-range value on the wire (another sender) is clamped when decoded
    raw = encode_body(MsgType.CMD, struct.pack("<BhhB", 1, 32000, -32000, 1))
    (decoded,) = FrameDecoder().feed(b"\x00" + cobs_encode(raw) + b"\x00")
    assert (decoded.steer, decoded.throttle) == (1000, -1000)


def _frame(body: bytes) -> bytes:
    return cobs_encode(body) + b"\x00"


def test_every_drop_reason_is_counted_and_decoder_resyncs():
    good = encode(SAMPLES[0])
    cmd_body = encode_body(MsgType.CMD, SAMPLES[0].pack_payload())
    bad_crc = bytearray(cmd_body)
    bad_crc[-1] ^= 0x01
    stream = b"".join([
        b"\x17\x42garbage before sync",            # discarded: port opened mid-frame
        b"\x00",
        good,
        b"\x00\x00",                                # idle delimiters: not frames, not drops
        b"\x05\x01\x00",                            # bad COBS: code 5 runs past the end
        _frame(b"\x01\x02"),                        # short: 2 bytes
        _frame(bytes(bad_crc)),                     # bad CRC
        _frame(encode_body(MsgType.CMD, b"\x01\x02\x03\x04\x05")),  # CMD with a 5-byte payload
        _frame(encode_body(0x55, b"\x01")),         # unknown type
        bytes((MAX_FRAME + 10) * [0x11]) + b"\x00",  # overlong
        good,
    ])
    decoder = FrameDecoder()
    assert decoder.feed(stream) == [SAMPLES[0], SAMPLES[0]]
    d = decoder.drops
    assert (d.bad_cobs, d.short, d.bad_crc, d.bad_length, d.unknown_type, d.overlong) == (1, 1, 1, 1, 1, 1)
    assert d.total == 6
    assert d.presync_bytes == len(b"\x17\x42garbage before sync")


def test_overlong_limit_is_64_encoded_bytes():
    decoder = FrameDecoder()
    exactly = bytes(MAX_FRAME * [0x11])  # 64 bytes: not overlong (fails COBS instead)
    decoder.feed(b"\x00" + exactly + b"\x00")
    assert (decoder.drops.overlong, decoder.drops.bad_cobs) == (0, 1)
    decoder.feed(exactly + b"\x11" + b"\x00")
    assert decoder.drops.overlong == 1


def test_accept_filter_counts_unwanted_types():
    decoder = FrameDecoder(accept=(MsgType.STATE, MsgType.INFO))
    assert decoder.feed(b"\x00" + encode(SAMPLES[0]) + encode(SAMPLES[4])) == [SAMPLES[4]]
    assert decoder.drops.unknown_type == 1


@FAST
@given(st.lists(st.sampled_from(SAMPLES), min_size=1, max_size=6), st.data())
def test_any_chunking_decodes_the_same(msgs, data):
    stream = b"\x00" + b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder()
    out = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        out += decoder.feed(stream[a:b])
    assert out == msgs and decoder.drops.total == 0


@pytest.mark.parametrize("msg", SAMPLES)
def test_every_single_bit_flip_is_rejected(msg):
    frame = encode(msg)
    for bit in range(len(frame) * 8):
        flipped = bytearray(frame)
        flipped[bit // 8] ^= 1 << (bit % 8)
        decoder = FrameDecoder()
        out = decoder.feed(b"\x00" + bytes(flipped) + b"\x00" + frame)
        assert out == [msg], f"bit {bit} of {frame.hex(' ')}"
        assert decoder.drops.total >= 1


@FAST
@given(st.sampled_from(SAMPLES), st.lists(st.integers(0, 10_000), min_size=2, max_size=6))
def test_multi_bit_flips_never_yield_a_wrong_message(msg, bits):
    frame = bytearray(encode(msg))
    for bit in bits:
        frame[(bit // 8) % len(frame)] ^= 1 << (bit % 8)
    out = FrameDecoder().feed(b"\x00" + bytes(frame) + b"\x00" + encode(msg))
    assert all(m == msg for m in out)
    assert out[-1] == msg


@FAST
@given(st.binary(max_size=400))
def test_garbage_is_never_accepted_and_the_next_frame_survives(garbage):
    decoder = FrameDecoder()
    out = decoder.feed(b"\x00" + garbage + b"\x00" + encode(SAMPLES[1]))
    assert out == [SAMPLES[1]]
