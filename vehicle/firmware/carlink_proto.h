/* carlink v1, MCU side: framing, CRC, frame parser and the mode state machine.
 *
 * Hardware-free C99. The AVR firmware (firmware_avr.c) and the host fake MCU (host_mcu.c) both drive it:
 *   proto_init()      once, with calibration (and whether it was stored), watchdog and a TX callback;
 *   proto_tick(now)   every loop pass with a millisecond clock (updates mode/outputs, sends 50 Hz STATE);
 *   proto_rx_byte(b)  for every byte received from the host (answers HELLO, acks CMD with STATE);
 *   proto_rc_pulse()  for every RC receiver pulse measured on a channel;
 *   proto_encoder()   with the wheel encoder's tick count and the time of its last tick (v1.2, firmware
 *                     built with an encoder: proto_set_encoder(p, 1) after proto_init).
 * Outputs to write to the servo and ESC are `out_steer_us` / `out_thr_us`. The contract is
 * docs/carlink.md (and carlink-v1.md): do not change frames here without changing the Python side.
 */
#ifndef CARLINK_PROTO_H
#define CARLINK_PROTO_H

#include <stdint.h>

#define CARLINK_PROTO_VERSION 1u
#define CARLINK_PROTO_MINOR 2u         /* v1.1: CAL_REQ -> CAL (calibrated endpoints); v1.0 hosts never ask;
                                        * v1.2: ODOM (wheel encoder) at 50 Hz to a host that asked
                                        * with CAL_REQ minor >= 2, from firmware that has an encoder */
#define CARLINK_FW_VERSION 3u
#define CARLINK_MAX_FRAME 64u          /* encoded bytes without the 0x00; longer is dropped */
#define CARLINK_WATCHDOG_MS_DEFAULT 150u
#define CARLINK_STATE_PERIOD_MS 20u    /* unsolicited STATE at 50 Hz */
#define CARLINK_RC_LOST_MS 100u        /* no pulse on a channel for this long: RC lost */
#define CARLINK_MODE_AUTO_US 1600u     /* mode channel above this: AUTO allowed */
#define CARLINK_THR_OVERRIDE_US 100u   /* throttle stick this far from neutral: human override */
#define CARLINK_RC_MIN_VALID_US 800u   /* pulses outside this window are glitches and ignored */
#define CARLINK_RC_MAX_VALID_US 2200u

enum carlink_msg {
    MSG_CMD = 0x01, MSG_HELLO = 0x02, MSG_CAL_REQ = 0x03,  /* host -> MCU */
    MSG_STATE = 0x81, MSG_INFO = 0x82, MSG_CAL = 0x83,      /* MCU -> host */
    MSG_ODOM = 0x84                                         /* MCU -> host, v1.2 */
};
enum carlink_mode { MODE_MANUAL = 0, MODE_AUTO = 1, MODE_FAILSAFE = 2 };
enum carlink_cmd_flag { CMD_AUTO_REQUEST = 0x01, CMD_ESTOP = 0x02 };
enum carlink_state_flag { STATE_RC_LOST = 0x01, STATE_HOST_TIMEOUT = 0x02, STATE_OVERRIDE = 0x04 };
enum carlink_cal_flag {
    CAL_STORED = 0x01,   /* endpoints from a stored calibration, not the defaults */
    CAL_ENCODER = 0x02   /* v1.2: this firmware counts a wheel encoder and sends ODOM to a v1.2 host */
};
enum carlink_rc_channel { RC_STEER = 0, RC_THR = 1, RC_MODE = 2, RC_CHANNELS = 3 };

/* Calibrated endpoints of one output, in microseconds. */
typedef struct {
    uint16_t min_us;
    uint16_t neutral_us;
    uint16_t max_us;
} proto_endpoints_t;

typedef struct {
    proto_endpoints_t steer;
    proto_endpoints_t thr;
    uint16_t steer_deadband_us;   /* steering stick this far from neutral: human override */
} proto_calibration_t;

/* Called with one complete encoded frame (including the trailing 0x00). */
typedef void (*proto_tx_fn)(const uint8_t *frame, uint8_t len, void *ctx);

typedef struct {
    /* configuration */
    proto_calibration_t cal;
    uint8_t cal_flags;     /* CAL_STORED when cal came from a stored (EEPROM) calibration */
    uint8_t minor;         /* protocol minor answered: CARLINK_PROTO_MINOR (host_mcu --minor 0 acts as v1.0) */
    uint16_t watchdog_ms;
    proto_tx_fn tx;
    void *tx_ctx;
    /* clock */
    uint32_t now_ms;
    /* receiver: encoded bytes of the frame being collected */
    uint8_t rx_buf[CARLINK_MAX_FRAME];
    uint8_t rx_len;
    uint8_t rx_synced;     /* 0 until the first 0x00: bytes before it are discarded */
    uint8_t rx_overlong;   /* frame already dropped as overlong; skip to the next 0x00 */
    uint8_t rx_bad;        /* frames dropped, wraps */
    /* host commands */
    uint8_t have_cmd;
    uint32_t last_cmd_ms;
    int16_t cmd_steer;     /* per-mille, clamped */
    int16_t cmd_thr;
    uint8_t cmd_flags;
    uint8_t ack;           /* seq of the last valid CMD */
    /* RC receiver */
    uint16_t rc_us[RC_CHANNELS];
    uint32_t rc_last_ms[RC_CHANNELS];
    uint8_t rc_seen;       /* bit per channel: a pulse was seen since boot */
    /* state machine and outputs */
    uint8_t mode;
    uint8_t flags;
    uint8_t failsafe_latched;
    uint8_t overriding;
    uint16_t out_steer_us;
    uint16_t out_thr_us;
    uint8_t state_seq;
    uint32_t last_state_ms;
    /* wheel encoder (v1.2) */
    uint8_t has_encoder;   /* set by proto_set_encoder: the firmware counts an encoder */
    uint8_t odom_on;       /* the host asked for v1.2 (CAL_REQ minor >= 2) since its last HELLO */
    uint32_t enc_ticks;    /* rising edges since boot (wraps) */
    uint32_t enc_tick_ms;  /* clock at the last edge */
    uint32_t last_odom_ms;
} proto_t;

void proto_default_calibration(proto_calibration_t *cal);
/* Nonzero when endpoints are ordered (min < neutral < max) and inside the valid RC window. */
int proto_calibration_valid(const proto_calibration_t *cal);
/* cal NULL or invalid: the defaults (cal_flags then cleared). cal_flags: CAL_STORED for a stored calibration. */
void proto_init(proto_t *p, const proto_calibration_t *cal, uint8_t cal_flags, uint16_t watchdog_ms, proto_tx_fn tx,
                void *tx_ctx);
void proto_tick(proto_t *p, uint32_t now_ms);
void proto_rx_byte(proto_t *p, uint8_t byte);
void proto_rc_pulse(proto_t *p, uint8_t channel, uint16_t width_us);
/* v1.2: this firmware has a wheel encoder (CAL reports CAL_ENCODER; ODOM goes to hosts that ask). */
void proto_set_encoder(proto_t *p, uint8_t present);
/* v1.2: the encoder's tick count since boot and the clock (ms) at its latest tick, as counted in the ISR. */
void proto_encoder(proto_t *p, uint32_t ticks, uint32_t last_tick_ms);

/* Per-mille (-1000..1000, clamped) to microseconds on calibrated endpoints (clamped). The host ports this map
 * (driver.vehicle.calibration.Endpoints.permille_to_us) and is tested against it. */
uint16_t proto_permille_to_us(const proto_endpoints_t *e, int16_t permille);
uint16_t proto_clamp_us(const proto_endpoints_t *e, uint16_t us);

/* Codec, exposed for tests and tools. */
uint16_t carlink_crc16(const uint8_t *data, uint8_t len);
/* COBS-encodes src into dst (room for len + 2) and appends 0x00; returns bytes written. */
uint8_t carlink_cobs_encode(const uint8_t *src, uint8_t len, uint8_t *dst);
/* Decodes COBS bytes (without the 0x00) into dst; returns the decoded length or -1 on bad COBS. */
int carlink_cobs_decode(const uint8_t *src, uint8_t len, uint8_t *dst);

#endif /* CARLINK_PROTO_H */
