/* carlink v1, MCU side. See carlink_proto.h for how to drive it and docs/carlink.md for the contract. */
#include "carlink_proto.h"

#include <string.h>

#define CMD_PAYLOAD_LEN 6u
#define HELLO_PAYLOAD_LEN 1u
#define STATE_PAYLOAD_LEN 19u
#define INFO_PAYLOAD_LEN 5u
#define CAL_REQ_PAYLOAD_LEN 1u
#define CAL_PAYLOAD_LEN 16u
#define ODOM_PAYLOAD_LEN 12u
#define MAX_BODY (1u + STATE_PAYLOAD_LEN + 2u)

/* ---- codec ---- */

uint16_t carlink_crc16(const uint8_t *data, uint8_t len)
{
    /* CRC-16/MCRF4XX: reflected poly 0x8408, init 0xFFFF, no final xor (avr-libc _crc_ccitt_update). */
    uint16_t crc = 0xFFFFu;
    for (uint8_t i = 0; i < len; i++) {
        crc ^= data[i];
        for (uint8_t bit = 0; bit < 8; bit++)
            crc = (crc & 1u) ? (uint16_t)((crc >> 1) ^ 0x8408u) : (uint16_t)(crc >> 1);
    }
    return crc;
}

uint8_t carlink_cobs_encode(const uint8_t *src, uint8_t len, uint8_t *dst)
{
    uint8_t code_at = 0, out = 1, code = 1;
    for (uint8_t i = 0; i < len; i++) {
        if (src[i] == 0) {
            dst[code_at] = code;
            code_at = out++;
            code = 1;
        } else {
            dst[out++] = src[i];
            if (++code == 0xFFu) {
                dst[code_at] = code;
                code_at = out++;
                code = 1;
            }
        }
    }
    dst[code_at] = code;
    dst[out++] = 0;
    return out;
}

int carlink_cobs_decode(const uint8_t *src, uint8_t len, uint8_t *dst)
{
    uint8_t in = 0, out = 0;
    while (in < len) {
        uint8_t code = src[in++];
        if (code == 0)
            return -1;
        for (uint8_t k = 1; k < code; k++) {
            if (in >= len || src[in] == 0)
                return -1;
            dst[out++] = src[in++];
        }
        if (code != 0xFFu && in < len)
            dst[out++] = 0;
    }
    return out;
}

/* ---- little-endian helpers ---- */

static void put_u16(uint8_t *b, uint16_t v) { b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); }
static void put_u32(uint8_t *b, uint32_t v) { put_u16(b, (uint16_t)v); put_u16(b + 2, (uint16_t)(v >> 16)); }
static uint16_t get_u16(const uint8_t *b) { return (uint16_t)(b[0] | ((uint16_t)b[1] << 8)); }

static int16_t clamp_permille(int16_t v)
{
    if (v > 1000) return 1000;
    if (v < -1000) return -1000;
    return v;
}

/* ---- mapping ---- */

uint16_t proto_clamp_us(const proto_endpoints_t *e, uint16_t us)
{
    if (us < e->min_us) return e->min_us;
    if (us > e->max_us) return e->max_us;
    return us;
}

uint16_t proto_permille_to_us(const proto_endpoints_t *e, int16_t permille)
{
    int32_t v = clamp_permille(permille);
    int32_t span = v >= 0 ? (int32_t)e->max_us - e->neutral_us : (int32_t)e->neutral_us - e->min_us;
    int32_t us = (int32_t)e->neutral_us + (v * span + (v >= 0 ? 500 : -500)) / 1000;
    if (us < 0) us = 0;
    return proto_clamp_us(e, (uint16_t)us);
}

void proto_default_calibration(proto_calibration_t *cal)
{
    cal->steer.min_us = 1000; cal->steer.neutral_us = 1500; cal->steer.max_us = 2000;
    cal->thr.min_us = 1000; cal->thr.neutral_us = 1500; cal->thr.max_us = 2000;
    cal->steer_deadband_us = 100;
}

static int endpoints_valid(const proto_endpoints_t *e)
{
    return e->min_us >= CARLINK_RC_MIN_VALID_US && e->max_us <= CARLINK_RC_MAX_VALID_US
        && e->min_us < e->neutral_us && e->neutral_us < e->max_us;
}

int proto_calibration_valid(const proto_calibration_t *cal)
{
    return endpoints_valid(&cal->steer) && endpoints_valid(&cal->thr)
        && cal->steer_deadband_us > 0 && cal->steer_deadband_us < 400;
}

/* ---- outgoing messages ---- */

static void send_body(proto_t *p, uint8_t *body, uint8_t len)
{
    uint8_t frame[MAX_BODY + 4];
    uint16_t crc = carlink_crc16(body, len);
    put_u16(body + len, crc);
    uint8_t n = carlink_cobs_encode(body, (uint8_t)(len + 2), frame);
    if (p->tx)
        p->tx(frame, n, p->tx_ctx);
}

static void send_state(proto_t *p)
{
    uint8_t b[MAX_BODY];
    b[0] = MSG_STATE;
    b[1] = p->state_seq++;
    b[2] = p->ack;
    put_u32(b + 3, p->now_ms);
    put_u16(b + 7, p->rc_us[RC_STEER]);
    put_u16(b + 9, p->rc_us[RC_THR]);
    put_u16(b + 11, p->rc_us[RC_MODE]);
    put_u16(b + 13, p->out_steer_us);
    put_u16(b + 15, p->out_thr_us);
    b[17] = p->mode;
    b[18] = p->flags;
    b[19] = p->rx_bad;
    send_body(p, b, 1 + STATE_PAYLOAD_LEN);
    p->last_state_ms = p->now_ms;
}

static void send_info(proto_t *p)
{
    uint8_t b[MAX_BODY];
    b[0] = MSG_INFO;
    b[1] = CARLINK_PROTO_VERSION;
    put_u16(b + 2, CARLINK_FW_VERSION);
    put_u16(b + 4, p->watchdog_ms);
    send_body(p, b, 1 + INFO_PAYLOAD_LEN);
}

static void put_endpoints(uint8_t *b, const proto_endpoints_t *e)
{
    put_u16(b, e->min_us);
    put_u16(b + 2, e->neutral_us);
    put_u16(b + 4, e->max_us);
}

/* v1.1: the endpoints the outputs are mapped and clamped to, so the host converts pulses as this MCU does. */
static void send_cal(proto_t *p)
{
    uint8_t b[MAX_BODY];
    b[0] = MSG_CAL;
    b[1] = p->minor;
    put_endpoints(b + 2, &p->cal.steer);
    put_endpoints(b + 8, &p->cal.thr);
    put_u16(b + 14, p->cal.steer_deadband_us);
    b[16] = (uint8_t)(p->cal_flags | (p->minor >= 2 && p->has_encoder ? CAL_ENCODER : 0));
    send_body(p, b, 1 + CAL_PAYLOAD_LEN);
}

/* v1.2: the wheel encoder's count and the time of its last tick; the host turns them into m/s. */
static void send_odom(proto_t *p)
{
    uint8_t b[MAX_BODY];
    b[0] = MSG_ODOM;
    put_u32(b + 1, p->now_ms);
    put_u32(b + 5, p->enc_ticks);
    put_u32(b + 9, p->enc_tick_ms);
    send_body(p, b, 1 + ODOM_PAYLOAD_LEN);
    p->last_odom_ms = p->now_ms;
}

/* ---- state machine ---- */

static uint16_t abs_diff(uint16_t a, uint16_t b) { return a > b ? (uint16_t)(a - b) : (uint16_t)(b - a); }

static void latch_failsafe(proto_t *p)
{
    p->failsafe_latched = 1;
}

static void update(proto_t *p)
{
    uint32_t now = p->now_ms;
    uint8_t rc_lost = 0;
    for (uint8_t ch = 0; ch < RC_CHANNELS; ch++)
        if (!(p->rc_seen & (1u << ch)) || now - p->rc_last_ms[ch] > CARLINK_RC_LOST_MS)
            rc_lost = 1;
    uint8_t host_fresh = p->have_cmd && now - p->last_cmd_ms <= p->watchdog_ms;
    uint8_t switch_auto = !rc_lost && p->rc_us[RC_MODE] > CARLINK_MODE_AUTO_US;
    uint8_t flags = (uint8_t)((rc_lost ? STATE_RC_LOST : 0) | (host_fresh ? 0 : STATE_HOST_TIMEOUT));

    /* FAILSAFE latches until the mode channel has been seen outside MANUAL and then in MANUAL. */
    if (p->failsafe_latched == 1 && (rc_lost || switch_auto))
        p->failsafe_latched = 2;  /* armed: the next MANUAL clears it */
    else if (p->failsafe_latched == 2 && !rc_lost && !switch_auto)
        p->failsafe_latched = 0;
    if (rc_lost)
        p->failsafe_latched = 2;

    if (!p->failsafe_latched && switch_auto) {
        uint16_t thr_dev = abs_diff(p->rc_us[RC_THR], p->cal.thr.neutral_us);
        uint16_t steer_dev = abs_diff(p->rc_us[RC_STEER], p->cal.steer.neutral_us);
        /* hysteresis: take over beyond the threshold, hand back below half of it */
        uint8_t shift = p->overriding ? 1 : 0;
        p->overriding = thr_dev > (CARLINK_THR_OVERRIDE_US >> shift) || steer_dev > (p->cal.steer_deadband_us >> shift);
        if (p->overriding) {
            p->mode = MODE_AUTO;
            flags |= STATE_OVERRIDE;
            p->out_steer_us = proto_clamp_us(&p->cal.steer, p->rc_us[RC_STEER]);
            p->out_thr_us = proto_clamp_us(&p->cal.thr, p->rc_us[RC_THR]);
        } else if (host_fresh && (p->cmd_flags & CMD_AUTO_REQUEST)) {
            p->mode = MODE_AUTO;
            p->out_steer_us = proto_permille_to_us(&p->cal.steer, p->cmd_steer);
            p->out_thr_us = proto_permille_to_us(&p->cal.thr, p->cmd_thr);
        } else {
            p->failsafe_latched = 2;  /* in AUTO without a live host: neutral, latched */
        }
    } else if (!p->failsafe_latched) {
        p->overriding = 0;
        p->mode = MODE_MANUAL;
        p->out_steer_us = proto_clamp_us(&p->cal.steer, p->rc_us[RC_STEER]);
        p->out_thr_us = proto_clamp_us(&p->cal.thr, p->rc_us[RC_THR]);
    }
    if (p->failsafe_latched) {
        p->overriding = 0;
        p->mode = MODE_FAILSAFE;
        p->out_thr_us = p->cal.thr.neutral_us;  /* steering is held where it was */
        p->out_steer_us = proto_clamp_us(&p->cal.steer, p->out_steer_us);
    }
    p->flags = flags;
}

/* ---- incoming frames ---- */

static void handle_frame(proto_t *p)
{
    uint8_t body[CARLINK_MAX_FRAME];
    int n = carlink_cobs_decode(p->rx_buf, p->rx_len, body);
    if (n < 3 || carlink_crc16(body, (uint8_t)(n - 2)) != get_u16(body + n - 2)) {
        p->rx_bad++;
        return;
    }
    uint8_t payload_len = (uint8_t)(n - 3);
    const uint8_t *pl = body + 1;
    if (body[0] == MSG_CMD && payload_len == CMD_PAYLOAD_LEN) {
        p->ack = pl[0];
        p->cmd_steer = clamp_permille((int16_t)get_u16(pl + 1));
        p->cmd_thr = clamp_permille((int16_t)get_u16(pl + 3));
        p->cmd_flags = pl[5];
        p->have_cmd = 1;
        p->last_cmd_ms = p->now_ms;
        if (p->cmd_flags & CMD_ESTOP)
            latch_failsafe(p);
        update(p);
        send_state(p);  /* the ack */
    } else if (body[0] == MSG_HELLO && payload_len == HELLO_PAYLOAD_LEN) {
        p->odom_on = 0;  /* a new host session: ODOM only once it asks for v1.2 */
        send_info(p);
    } else if (p->minor >= 1 && body[0] == MSG_CAL_REQ && payload_len == CAL_REQ_PAYLOAD_LEN) {
        /* Any requested minor >= 1 gets this MCU's CAL; a v1.2 host (minor >= 2) also gets ODOM from here on. */
        p->odom_on = (uint8_t)(pl[0] >= 2 && p->minor >= 2 && p->has_encoder);
        send_cal(p);
    } else {
        p->rx_bad++;  /* unknown type or wrong payload length */
    }
}

void proto_rx_byte(proto_t *p, uint8_t byte)
{
    if (byte == 0) {
        uint8_t complete = p->rx_synced && !p->rx_overlong && p->rx_len > 0;
        if (complete)
            handle_frame(p);
        p->rx_synced = 1;
        p->rx_overlong = 0;
        p->rx_len = 0;
        return;
    }
    if (!p->rx_synced || p->rx_overlong)
        return;
    if (p->rx_len >= CARLINK_MAX_FRAME) {
        p->rx_overlong = 1;
        p->rx_bad++;
        return;
    }
    p->rx_buf[p->rx_len++] = byte;
}

void proto_rc_pulse(proto_t *p, uint8_t channel, uint16_t width_us)
{
    if (channel >= RC_CHANNELS || width_us < CARLINK_RC_MIN_VALID_US || width_us > CARLINK_RC_MAX_VALID_US)
        return;
    p->rc_us[channel] = width_us;
    p->rc_last_ms[channel] = p->now_ms;
    p->rc_seen |= (uint8_t)(1u << channel);
}

void proto_tick(proto_t *p, uint32_t now_ms)
{
    p->now_ms = now_ms;
    update(p);
    if (now_ms - p->last_state_ms >= CARLINK_STATE_PERIOD_MS)
        send_state(p);
    if (p->odom_on && now_ms - p->last_odom_ms >= CARLINK_STATE_PERIOD_MS)
        send_odom(p);  /* 50 Hz on its own clock: acks reset the STATE timer, not this one */
}

void proto_set_encoder(proto_t *p, uint8_t present)
{
    p->has_encoder = present ? 1u : 0u;
    if (!p->has_encoder)
        p->odom_on = 0;
}

void proto_encoder(proto_t *p, uint32_t ticks, uint32_t last_tick_ms)
{
    p->enc_ticks = ticks;
    p->enc_tick_ms = last_tick_ms;
}

void proto_init(proto_t *p, const proto_calibration_t *cal, uint8_t cal_flags, uint16_t watchdog_ms, proto_tx_fn tx,
                void *tx_ctx)
{
    memset(p, 0, sizeof *p);
    if (cal && proto_calibration_valid(cal)) {
        p->cal = *cal;
        p->cal_flags = cal_flags;
    } else {
        proto_default_calibration(&p->cal);
    }
    p->minor = CARLINK_PROTO_MINOR;
    p->watchdog_ms = watchdog_ms ? watchdog_ms : CARLINK_WATCHDOG_MS_DEFAULT;
    p->tx = tx;
    p->tx_ctx = tx_ctx;
    p->mode = MODE_FAILSAFE;
    p->failsafe_latched = 2;
    p->out_steer_us = p->cal.steer.neutral_us;
    p->out_thr_us = p->cal.thr.neutral_us;
}
