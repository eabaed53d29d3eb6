/* host_mcu: the carlink firmware logic (carlink_proto.c) built for Linux, used as the fake MCU in tests.
 *
 * Usage: host_mcu (--fd N | --tty PATH) [--watchdog-ms N] [--rc STEER,THR,MODE] [--steer-cal MIN,NEUTRAL,MAX]
 *                [--thr-cal MIN,NEUTRAL,MAX] [--minor N] [--wheel TICKS_PER_S] [--corrupt-rx PERCENT] [--seed N]
 *   --fd N        serial line is an inherited fd (e.g. the master side of os.openpty())
 *   --tty PATH    serial line is a tty path to open (a pty slave, a socat pty, a USB serial adapter)
 *   --watchdog-ms the host command watchdog reported in INFO (default 150)
 *   --rc S,T,M    initial simulated receiver pulse widths in us (default 1500,1500,1000 = MANUAL)
 *   --steer-cal, --thr-cal  calibrated output endpoints in us, as if stored in EEPROM (default 1000,1500,2000
 *                 and not stored); invalid endpoints are an error
 *   --minor N     protocol minor to answer: 2 (default) is v1.2 (ODOM to a v1.2 host when there is an encoder),
 *                 1 acts as v1.1 firmware (CAL, never ODOM), 0 as v1.0 (CAL_REQ is an unknown frame, in rx_bad)
 *   --wheel R     the firmware has a wheel encoder, turning at R ticks per second (0 = standing still); without
 *                 it the firmware has none (CAL does not report CAL_ENCODER, no ODOM)
 *   --corrupt-rx P  flip one bit in P percent of the frames received from the host (line noise), chosen by a
 *                 PRNG seeded with --seed (default 1), so the same frames are hit on every run
 *
 * The clock is real time (CLOCK_MONOTONIC, ms since start). A simulated RC receiver feeds a pulse on each
 * channel every 20 ms. The test controls it with text lines on stdin:
 *   rc STEER THR MODE   set the receiver's pulse widths (us)
 *   rc off | rc on      stop / resume receiver pulses (RC loss is declared 100 ms after the last pulse)
 *   wheel R             the encoder now turns at R ticks per second (needs --wheel)
 *   tx HEX              write these bytes onto the serial line as if the MCU sent them (frames a test crafts)
 *   status              print a status line now
 *   quit                exit (EOF on stdin also exits, so the fake dies with its test)
 * Output on stdout, one line each, at start, whenever mode/flags/outputs/rx_bad change, and on `status`:
 *   state t_ms=.. mode=.. flags=.. out_steer_us=.. out_thr_us=.. rx_bad=.. ack=.. rc=S,T,M
 */
#define _DEFAULT_SOURCE
#include "carlink_proto.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define RC_PERIOD_MS 20u

typedef struct {
    int serial_fd;
    unsigned corrupt_percent;
    uint32_t rng;
    uint8_t frame[256];  /* bytes of the host frame being received, for --corrupt-rx */
    unsigned frame_len;
    uint16_t rc_us[RC_CHANNELS];
    int rc_on;
    uint32_t last_rc_ms;
    int has_wheel;
    double wheel_rate;   /* encoder ticks per second */
    double wheel_phase;  /* fraction of the next tick turned so far */
    uint32_t wheel_ticks, wheel_tick_ms, wheel_ms;
} sim_t;

static uint32_t clock_ms(void)
{
    static struct timespec start;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (start.tv_sec == 0 && start.tv_nsec == 0)
        start = ts;
    return (uint32_t)((ts.tv_sec - start.tv_sec) * 1000 + (ts.tv_nsec - start.tv_nsec) / 1000000);
}

static void serial_tx(const uint8_t *frame, uint8_t len, void *ctx)
{
    sim_t *sim = ctx;
    /* Like a UART with nobody listening: what does not fit is lost, the host resyncs at the next 0x00. */
    ssize_t n = write(sim->serial_fd, frame, len);
    (void)n;
}

static uint32_t xorshift32(uint32_t *state)
{
    uint32_t x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *state = x;
}

/* One received byte. With --corrupt-rx, whole frames are held until their 0x00 and some get one bit flipped. */
static void rx_byte(proto_t *p, sim_t *sim, uint8_t byte)
{
    if (!sim->corrupt_percent) {
        proto_rx_byte(p, byte);
        return;
    }
    if (byte != 0 && sim->frame_len < sizeof sim->frame) {
        sim->frame[sim->frame_len++] = byte;
        return;
    }
    if (sim->frame_len > 0) {
        uint32_t draw = xorshift32(&sim->rng);
        if (draw % 100u < sim->corrupt_percent) {
            uint32_t bit = xorshift32(&sim->rng) % (sim->frame_len * 8u);
            sim->frame[bit / 8u] ^= (uint8_t)(1u << (bit % 8u));
        }
    }
    for (unsigned i = 0; i < sim->frame_len; i++)
        proto_rx_byte(p, sim->frame[i]);
    sim->frame_len = 0;
    proto_rx_byte(p, byte);
}

static void print_state(const proto_t *p, const sim_t *sim)
{
    printf("state t_ms=%lu mode=%u flags=%u out_steer_us=%u out_thr_us=%u rx_bad=%u ack=%u rc=%u,%u,%u%s\n",
           (unsigned long)p->now_ms, p->mode, p->flags, p->out_steer_us, p->out_thr_us, p->rx_bad, p->ack,
           sim->rc_us[RC_STEER], sim->rc_us[RC_THR], sim->rc_us[RC_MODE], sim->rc_on ? "" : " rc_off");
    fflush(stdout);
}

static void tx_hex(const char *hex, sim_t *sim)
{
    uint8_t buf[128];
    unsigned n = 0, byte;
    while (n < sizeof buf && sscanf(hex, "%2x", &byte) == 1) {
        buf[n++] = (uint8_t)byte;
        hex += 2;
    }
    serial_tx(buf, (uint8_t)n, sim);
}

/* Returns 0 to keep running, 1 to quit. */
static int control_line(char *line, const proto_t *p, sim_t *sim)
{
    unsigned s, t, m;
    if (strncmp(line, "tx ", 3) == 0) {
        tx_hex(line + 3, sim);
    } else if (sscanf(line, "rc %u %u %u", &s, &t, &m) == 3) {
        sim->rc_us[RC_STEER] = (uint16_t)s;
        sim->rc_us[RC_THR] = (uint16_t)t;
        sim->rc_us[RC_MODE] = (uint16_t)m;
    } else if (strncmp(line, "wheel ", 6) == 0) {
        double rate;
        if (!sim->has_wheel || sscanf(line + 6, "%lf", &rate) != 1 || !(rate >= 0.0 && rate <= 100000.0))
            fprintf(stderr, "host_mcu: %s: needs --wheel and a rate of 0..100000 ticks/s\n", line);
        else
            sim->wheel_rate = rate;
    } else if (strncmp(line, "rc off", 6) == 0) {
        sim->rc_on = 0;
    } else if (strncmp(line, "rc on", 5) == 0) {
        sim->rc_on = 1;
    } else if (strncmp(line, "status", 6) == 0) {
        print_state(p, sim);
    } else if (strncmp(line, "quit", 4) == 0) {
        return 1;
    } else if (line[0] != '\0') {
        fprintf(stderr, "host_mcu: unknown control line: %s\n", line);
    }
    return 0;
}

static int open_serial(const char *tty_path, int fd)
{
    if (tty_path) {
        fd = open(tty_path, O_RDWR | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
            fprintf(stderr, "host_mcu: cannot open %s: %s\n", tty_path, strerror(errno));
            exit(2);
        }
    } else if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
        fprintf(stderr, "host_mcu: bad --fd %d: %s\n", fd, strerror(errno));
        exit(2);
    }
    struct termios tio;
    if (isatty(fd) && tcgetattr(fd, &tio) == 0) {
        cfmakeraw(&tio);  /* no echo, no line editing: a byte pipe like a UART */
        cfsetispeed(&tio, B115200);
        cfsetospeed(&tio, B115200);
        tcsetattr(fd, TCSANOW, &tio);
    }
    return fd;
}

static void usage(void)
{
    fprintf(stderr, "usage: host_mcu (--fd N | --tty PATH) [--watchdog-ms N] [--rc STEER,THR,MODE] "
                    "[--steer-cal MIN,NEUTRAL,MAX] [--thr-cal MIN,NEUTRAL,MAX] [--minor N] [--wheel TICKS_PER_S] "
                    "[--corrupt-rx PERCENT] [--seed N]\n");
    exit(2);
}

static void parse_endpoints(const char *arg, const char *flag, proto_endpoints_t *e)
{
    unsigned lo, mid, hi;
    if (sscanf(arg, "%u,%u,%u", &lo, &mid, &hi) != 3 || lo > 0xFFFFu || mid > 0xFFFFu || hi > 0xFFFFu) {
        fprintf(stderr, "host_mcu: %s %s: expected MIN,NEUTRAL,MAX in us\n", flag, arg);
        exit(2);
    }
    *e = (proto_endpoints_t){(uint16_t)lo, (uint16_t)mid, (uint16_t)hi};
}

int main(int argc, char **argv)
{
    const char *tty_path = NULL;
    int fd = -1;
    unsigned watchdog_ms = CARLINK_WATCHDOG_MS_DEFAULT;
    unsigned minor = CARLINK_PROTO_MINOR;
    sim_t sim = {.rc_us = {1500, 1500, 1000}, .rc_on = 1, .rng = 1};
    proto_calibration_t cal;
    proto_default_calibration(&cal);
    uint8_t cal_flags = 0;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        if (strcmp(argv[i], "--fd") == 0) {
            fd = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--tty") == 0) {
            tty_path = argv[++i];
        } else if (strcmp(argv[i], "--watchdog-ms") == 0) {
            watchdog_ms = (unsigned)atoi(argv[++i]);
        } else if (strcmp(argv[i], "--rc") == 0) {
            unsigned s, t, m;
            if (sscanf(argv[++i], "%u,%u,%u", &s, &t, &m) != 3)
                usage();
            sim.rc_us[0] = (uint16_t)s; sim.rc_us[1] = (uint16_t)t; sim.rc_us[2] = (uint16_t)m;
        } else if (strcmp(argv[i], "--steer-cal") == 0) {
            parse_endpoints(argv[++i], "--steer-cal", &cal.steer);
            cal_flags = CAL_STORED;
        } else if (strcmp(argv[i], "--thr-cal") == 0) {
            parse_endpoints(argv[++i], "--thr-cal", &cal.thr);
            cal_flags = CAL_STORED;
        } else if (strcmp(argv[i], "--minor") == 0) {
            minor = (unsigned)atoi(argv[++i]);
        } else if (strcmp(argv[i], "--wheel") == 0) {
            sim.has_wheel = 1;
            sim.wheel_rate = atof(argv[++i]);
            if (!(sim.wheel_rate >= 0.0 && sim.wheel_rate <= 100000.0))
                usage();
        } else if (strcmp(argv[i], "--corrupt-rx") == 0) {
            sim.corrupt_percent = (unsigned)atoi(argv[++i]);
            if (sim.corrupt_percent > 100)
                usage();
        } else if (strcmp(argv[i], "--seed") == 0) {
            sim.rng = (uint32_t)strtoul(argv[++i], NULL, 10);
            if (sim.rng == 0)
                sim.rng = 1;  /* xorshift's one fixed point */
        } else {
            usage();
        }
    }
    if ((fd < 0) == (tty_path == NULL))
        usage();
    if (!proto_calibration_valid(&cal)) {
        fprintf(stderr, "host_mcu: calibration %u,%u,%u / %u,%u,%u is not valid: each needs %u <= MIN < NEUTRAL < MAX "
                "<= %u us\n", cal.steer.min_us, cal.steer.neutral_us, cal.steer.max_us, cal.thr.min_us,
                cal.thr.neutral_us, cal.thr.max_us, CARLINK_RC_MIN_VALID_US, CARLINK_RC_MAX_VALID_US);
        exit(2);
    }
    signal(SIGPIPE, SIG_IGN);
    sim.serial_fd = open_serial(tty_path, fd);
    fcntl(STDIN_FILENO, F_SETFL, fcntl(STDIN_FILENO, F_GETFL) | O_NONBLOCK);

    proto_t p;
    proto_init(&p, &cal, cal_flags, (uint16_t)watchdog_ms, serial_tx, &sim);
    p.minor = (uint8_t)minor;
    proto_set_encoder(&p, (uint8_t)sim.has_wheel);
    sim.wheel_ms = clock_ms();
    proto_tick(&p, clock_ms());
    print_state(&p, &sim);
    uint8_t last_mode = p.mode, last_flags = p.flags, last_bad = p.rx_bad;
    uint16_t last_steer = p.out_steer_us, last_thr = p.out_thr_us;

    char line[256];
    size_t line_len = 0;
    for (;;) {
        struct pollfd fds[2] = {{.fd = sim.serial_fd, .events = POLLIN}, {.fd = STDIN_FILENO, .events = POLLIN}};
        poll(fds, 2, 1);
        /* Inputs first, stamped now, then the state machine: a real MCU timestamps pulses and bytes in its
         * interrupts, while this process may have been descheduled on a busy machine. Handled in this order, a
         * late wake-up never reads as a lost receiver or a late host when the pulses and CMDs were on time. */
        uint32_t now = clock_ms();
        p.now_ms = now;
        if (sim.rc_on && now - sim.last_rc_ms >= RC_PERIOD_MS) {
            for (uint8_t ch = 0; ch < RC_CHANNELS; ch++)
                proto_rc_pulse(&p, ch, sim.rc_us[ch]);
            sim.last_rc_ms = now;
        }
        if (sim.has_wheel) {  /* the encoder's edges, as the AVR's interrupt counts them */
            sim.wheel_phase += sim.wheel_rate * (double)(now - sim.wheel_ms) / 1000.0;
            sim.wheel_ms = now;
            if (sim.wheel_phase >= 1.0) {
                uint32_t edges = (uint32_t)sim.wheel_phase;
                sim.wheel_ticks += edges;
                sim.wheel_phase -= edges;
                sim.wheel_tick_ms = now;
            }
            proto_encoder(&p, sim.wheel_ticks, sim.wheel_tick_ms);
        }
        if (fds[0].revents & POLLIN) {
            uint8_t buf[256];
            ssize_t n = read(sim.serial_fd, buf, sizeof buf);
            for (ssize_t i = 0; i < n; i++)
                rx_byte(&p, &sim, buf[i]);
        } else if (fds[0].revents & (POLLHUP | POLLERR)) {
            usleep(1000);  /* nobody has the other end open: keep running like a real MCU */
        }
        proto_tick(&p, now);
        if (fds[1].revents & (POLLIN | POLLHUP)) {
            char c;
            ssize_t n;
            while ((n = read(STDIN_FILENO, &c, 1)) == 1) {
                if (c == '\n' || line_len == sizeof line - 1) {
                    line[line_len] = '\0';
                    line_len = 0;
                    if (control_line(line, &p, &sim))
                        return 0;
                } else {
                    line[line_len++] = c;
                }
            }
            if (n == 0)
                return 0;  /* stdin closed: the test is gone */
        }
        if (p.mode != last_mode || p.flags != last_flags || p.out_steer_us != last_steer
            || p.out_thr_us != last_thr || p.rx_bad != last_bad) {
            print_state(&p, &sim);
            last_mode = p.mode; last_flags = p.flags; last_bad = p.rx_bad;
            last_steer = p.out_steer_us; last_thr = p.out_thr_us;
        }
    }
}
