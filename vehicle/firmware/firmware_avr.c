/* carlink v1 reference firmware for the ATmega328P at 16 MHz (Arduino Uno / Nano).
 *
 * Pins (Arduino names):
 *   D9  (PB1, OC1A)  steering servo signal      D2 (PD2)  RC receiver steering channel
 *   D10 (PB2, OC1B)  ESC signal                 D3 (PD3)  RC receiver throttle channel
 *   D13 (PB5)        LED (mode / calibration)   D4 (PD4)  RC receiver mode channel (2/3-position switch)
 *   D7  (PD7)        calibration jumper: tie to GND at power-on to calibrate
 *   D5  (PD5)        wheel encoder (built with ENCODER=1: `make avr ENCODER=1`): rising edges are counted
 *   D0/D1            UART to the host, 115200 8N1
 *
 * Timer1 runs at 2 MHz (0.5 us) in fast PWM with TOP 39999: hardware 50 Hz servo/ESC pulses, and its counter
 * times the RC pulses measured by the pin-change interrupt. Timer0 gives the 1 ms clock. The hardware watchdog
 * (60 ms) resets the MCU if the main loop stalls; after a reset the outputs start at neutral in FAILSAFE.
 *
 * Calibration: power on with D7 grounded and the sticks centred. The LED blinks fast; the centre is captured
 * over the first 0.5 s, then move both sticks to all their extremes. Remove the jumper (or wait 15 s) to save;
 * the LED then goes solid for 1 s if the sweep was plausible (stored in EEPROM) or blinks 5 times if
 * it was not (defaults kept). Output endpoints are the stick extremes (set your transmitter's endpoint
 * adjustment to the servo's mechanical limits first).
 */
#include <avr/eeprom.h>
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/wdt.h>
#include <util/delay.h>

#include "carlink_proto.h"

#define BAUD 115200UL
#define UBRR_VALUE ((F_CPU + 4UL * BAUD) / (8UL * BAUD) - 1UL) /* U2X: 16 -> 117647 baud, +2.1% */
#define PWM_TOP 39999u                                        /* 20 ms at 0.5 us per tick */
#define RC_PIN_MASK (_BV(PD2) | _BV(PD3) | _BV(PD4))
#ifndef CARLINK_ENCODER
#define CARLINK_ENCODER 0 /* 1: a wheel encoder on D5 (carlink v1.2 ODOM) */
#endif
#define ENC_PIN_MASK (CARLINK_ENCODER ? _BV(PD5) : 0)
#define CAL_MAGIC 0xCA1Bu
#define CAL_TIMEOUT_MS 15000u
#define RX_RING 64u /* powers of two */
#define TX_RING 128u

/* ---- 1 ms clock (Timer0) ---- */

static volatile uint32_t g_millis;

ISR(TIMER0_COMPA_vect) { g_millis++; }

static uint32_t millis(void)
{
    uint8_t sreg = SREG;
    cli();
    uint32_t ms = g_millis;
    SREG = sreg;
    return ms;
}

/* ---- RC input: pin-change interrupts on PD2..PD4, timed with TCNT1 ---- */

static volatile uint16_t g_rc_rise[RC_CHANNELS];
static volatile uint16_t g_rc_width[RC_CHANNELS]; /* in 0.5 us ticks */
static volatile uint8_t g_rc_new;                  /* bit per channel */
static volatile uint8_t g_rc_last_pins;
static volatile uint32_t g_enc_ticks;   /* wheel encoder rising edges since boot */
static volatile uint32_t g_enc_tick_ms; /* g_millis at the last edge */

ISR(PCINT2_vect)
{
    uint16_t t = TCNT1;
    uint8_t pins = PIND & (RC_PIN_MASK | ENC_PIN_MASK);
    uint8_t changed = pins ^ g_rc_last_pins;
    g_rc_last_pins = pins;
    if ((changed & pins) & ENC_PIN_MASK) {
        g_enc_ticks++;
        g_enc_tick_ms = g_millis;
    }
    for (uint8_t ch = 0; ch < RC_CHANNELS; ch++) {
        uint8_t bit = _BV(PD2 + ch);
        if (!(changed & bit))
            continue;
        if (pins & bit) {
            g_rc_rise[ch] = t;
        } else {
            uint16_t rise = g_rc_rise[ch];
            g_rc_width[ch] = t >= rise ? t - rise : (uint16_t)(t + PWM_TOP + 1u - rise);
            g_rc_new |= bit >> PD2;
        }
    }
}

/* Copies out new pulses; returns the channel bitmask of those that arrived. */
static uint8_t take_rc_pulses(uint16_t width_us[RC_CHANNELS])
{
    cli();
    uint8_t fresh = g_rc_new;
    g_rc_new = 0;
    for (uint8_t ch = 0; ch < RC_CHANNELS; ch++)
        width_us[ch] = g_rc_width[ch] / 2u;
    sei();
    return fresh;
}

/* The encoder's count and the time of its last edge, read together. */
static void take_encoder(uint32_t *ticks, uint32_t *tick_ms)
{
    cli();
    *ticks = g_enc_ticks;
    *tick_ms = g_enc_tick_ms;
    sei();
}

/* ---- UART with RX and TX rings ---- */

static volatile uint8_t g_rx[RX_RING], g_rx_head, g_rx_tail;
static volatile uint8_t g_tx[TX_RING], g_tx_head, g_tx_tail;

ISR(USART_RX_vect)
{
    uint8_t b = UDR0;
    uint8_t next = (uint8_t)((g_rx_head + 1u) & (RX_RING - 1u));
    if (next != g_rx_tail) { /* on overflow the byte is lost; the frame fails its CRC and is counted */
        g_rx[g_rx_head] = b;
        g_rx_head = next;
    }
}

ISR(USART_UDRE_vect)
{
    if (g_tx_head == g_tx_tail) {
        UCSR0B &= (uint8_t)~_BV(UDRIE0);
        return;
    }
    UDR0 = g_tx[g_tx_tail];
    g_tx_tail = (uint8_t)((g_tx_tail + 1u) & (TX_RING - 1u));
}

static void uart_tx_frame(const uint8_t *frame, uint8_t len, void *ctx)
{
    (void)ctx;
    uint8_t free_bytes = (uint8_t)((g_tx_tail - g_tx_head - 1u) & (TX_RING - 1u));
    if (len > free_bytes)
        return; /* host not keeping up: drop the whole frame rather than send half of it */
    for (uint8_t i = 0; i < len; i++) {
        g_tx[g_tx_head] = frame[i];
        g_tx_head = (uint8_t)((g_tx_head + 1u) & (TX_RING - 1u));
    }
    UCSR0B |= _BV(UDRIE0);
}

static int uart_rx_byte(void)
{
    if (g_rx_head == g_rx_tail)
        return -1;
    uint8_t b = g_rx[g_rx_tail];
    g_rx_tail = (uint8_t)((g_rx_tail + 1u) & (RX_RING - 1u));
    return b;
}

/* ---- calibration in EEPROM ---- */

typedef struct {
    uint16_t magic;
    proto_calibration_t cal;
    uint16_t crc;
} stored_calibration_t;

static stored_calibration_t EEMEM ee_calibration;

/* The stored calibration if there is a valid one (returns CAL_STORED), else the defaults (returns 0). */
static uint8_t load_calibration(proto_calibration_t *cal)
{
    stored_calibration_t s;
    eeprom_read_block(&s, &ee_calibration, sizeof s);
    if (s.magic == CAL_MAGIC && s.crc == carlink_crc16((const uint8_t *)&s.cal, sizeof s.cal)
        && proto_calibration_valid(&s.cal)) {
        *cal = s.cal;
        return CAL_STORED;
    }
    proto_default_calibration(cal);
    return 0;
}

static void save_calibration(const proto_calibration_t *cal)
{
    stored_calibration_t s = {.magic = CAL_MAGIC, .cal = *cal};
    s.crc = carlink_crc16((const uint8_t *)&s.cal, sizeof s.cal);
    eeprom_update_block(&s, &ee_calibration, sizeof s);
}

static void write_outputs(uint16_t steer_us, uint16_t thr_us)
{
    /* 16-bit timer registers share one TEMP byte with the TCNT1 read in PCINT2_vect: write them atomically. */
    uint8_t sreg = SREG;
    cli();
    OCR1A = (uint16_t)(steer_us * 2u);
    OCR1B = (uint16_t)(thr_us * 2u);
    SREG = sreg;
}

static void led(uint8_t on)
{
    if (on)
        PORTB |= _BV(PB5);
    else
        PORTB &= (uint8_t)~_BV(PB5);
}

static void calibrate(void)
{
    proto_calibration_t cal;
    proto_default_calibration(&cal);
    uint32_t sum[2] = {0, 0}, n = 0;
    uint16_t lo[2] = {0xFFFFu, 0xFFFFu}, hi[2] = {0, 0};
    uint32_t start = millis();
    while ((PIND & _BV(PD7)) == 0 && millis() - start < CAL_TIMEOUT_MS) {
        wdt_reset();
        uint32_t now = millis();
        led((now / 100u) & 1u);
        uint16_t w[RC_CHANNELS];
        uint8_t fresh = take_rc_pulses(w);
        for (uint8_t ch = 0; ch < 2; ch++) {
            if (!(fresh & (1u << ch)) || w[ch] < CARLINK_RC_MIN_VALID_US || w[ch] > CARLINK_RC_MAX_VALID_US)
                continue;
            if (now - start < 500u) {
                sum[ch] += w[ch];
                if (ch == 0)
                    n++;
            }
            if (w[ch] < lo[ch]) lo[ch] = w[ch];
            if (w[ch] > hi[ch]) hi[ch] = w[ch];
        }
    }
    if (n > 0) {
        cal.steer = (proto_endpoints_t){lo[0], (uint16_t)(sum[0] / n), hi[0]};
        cal.thr = (proto_endpoints_t){lo[1], (uint16_t)(sum[1] / n), hi[1]};
    }
    uint8_t ok = n > 0 && proto_calibration_valid(&cal) && hi[0] - lo[0] > 300u && hi[1] - lo[1] > 300u;
    if (ok)
        save_calibration(&cal);
    for (uint8_t i = 0; i < 10u; i++) { /* 1 s: solid when saved, slow blinks when not */
        led(ok ? 1u : (uint8_t)(i & 1u));
        wdt_reset();
        _delay_ms(100);
    }
    led(0);
}

/* ---- setup and main loop ---- */

/* Runs before main: a watchdog reset leaves the watchdog enabled, so turn it off first thing. */
void early_wdt_off(void) __attribute__((naked, used, section(".init3")));
void early_wdt_off(void)
{
    MCUSR = 0;
    wdt_disable();
}

static void setup_hardware(uint16_t steer_neutral_us, uint16_t thr_neutral_us)
{
    DDRB |= _BV(PB1) | _BV(PB2) | _BV(PB5);         /* servo, ESC, LED */
    DDRD &= (uint8_t)~(RC_PIN_MASK | ENC_PIN_MASK | _BV(PD7));
    PORTD |= _BV(PD7) | ENC_PIN_MASK;              /* pull-ups: calibration jumper, open-collector encoder */
    /* Timer1: fast PWM, TOP = ICR1, non-inverting on OC1A/OC1B, prescaler 8 (0.5 us). */
    ICR1 = PWM_TOP;
    write_outputs(steer_neutral_us, thr_neutral_us);
    TCCR1A = _BV(COM1A1) | _BV(COM1B1) | _BV(WGM11);
    TCCR1B = _BV(WGM13) | _BV(WGM12) | _BV(CS11);
    /* Timer0: CTC at 1 kHz (16 MHz / 64 / 250). */
    TCCR0A = _BV(WGM01);
    TCCR0B = _BV(CS01) | _BV(CS00);
    OCR0A = 249;
    TIMSK0 = _BV(OCIE0A);
    /* RC pins (and the encoder): pin-change interrupts on PCINT18..20 (and 21). */
    g_rc_last_pins = PIND & (RC_PIN_MASK | ENC_PIN_MASK);
    PCMSK2 = RC_PIN_MASK | ENC_PIN_MASK;
    PCICR = _BV(PCIE2);
    /* UART 115200 8N1, double speed. */
    UBRR0 = (uint16_t)UBRR_VALUE;
    UCSR0A = _BV(U2X0);
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
}

int main(void)
{
    proto_calibration_t cal;
    uint8_t cal_flags = load_calibration(&cal);
    setup_hardware(cal.steer.neutral_us, cal.thr.neutral_us);
    sei();
    if ((PIND & _BV(PD7)) == 0) { /* before the watchdog is armed: EEPROM writes take ~3.4 ms per byte */
        calibrate();
        cal_flags = load_calibration(&cal);
    }
    wdt_enable(WDTO_60MS);

    static proto_t proto;
    proto_init(&proto, &cal, cal_flags, CARLINK_WATCHDOG_MS_DEFAULT, uart_tx_frame, 0);
    proto_set_encoder(&proto, CARLINK_ENCODER);
    for (;;) {
        wdt_reset();
        if (CARLINK_ENCODER) {
            uint32_t ticks, tick_ms;
            take_encoder(&ticks, &tick_ms);
            proto_encoder(&proto, ticks, tick_ms);
        }
        proto_tick(&proto, millis());
        uint16_t w[RC_CHANNELS];
        uint8_t fresh = take_rc_pulses(w);
        for (uint8_t ch = 0; ch < RC_CHANNELS; ch++)
            if (fresh & (1u << ch))
                proto_rc_pulse(&proto, ch, w[ch]);
        int b;
        while ((b = uart_rx_byte()) >= 0)
            proto_rx_byte(&proto, (uint8_t)b);
        write_outputs(proto.out_steer_us, proto.out_thr_us);
        led(proto.mode == MODE_AUTO || (proto.mode == MODE_FAILSAFE && ((proto.now_ms / 250u) & 1u)));
    }
}
