/* The C side of the binding rows of `cargo xtask bench`: one workload
 * through libswitchboard, one JSON line on stdout for the harness
 * (crates/switchboard-bench/src/bindings.rs).
 *
 *   bench_client pubsub ADDR TOKEN N SIZE WINDOW
 *   bench_client reqrep ADDR TOKEN N SIZE
 *
 * pubsub: a publisher and a subscriber client; sb_publish blocks until the
 * hub has the message, so WINDOW threads publish at once (N / WINDOW
 * each), which keeps WINDOW publishes in flight like the Rust row. The
 * subscriber callback counts; the rate runs from the first publish to the
 * last arrival. Prints {"rate":..,"sent":..,"delivered":..}.
 *
 * reqrep: an echoing client (sb_serve) and a requester, sequential
 * sb_request calls; prints {"p50":..,"p99":..,"sent":..,"delivered":..}
 * in microseconds.
 *
 * Build: gcc -O2 bench_client.c -I crates/switchboard-c/include
 *        -L target/release -lswitchboard -lpthread
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "switchboard.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int die(const char *what, sb_error e) {
  fprintf(stderr, "%s: error %d: %s\n", what, (int)e, sb_last_error_message());
  return 1;
}

/* Client ids carry the pid, so runs never meet an id still leaving. */
static sb_error connect_as(const char *role, const char *addr, const char *token, sb_client **out) {
  char id[64];
  snprintf(id, sizeof id, "bench-c-%s-%ld", role, (long)getpid());
  sb_options o;
  memset(&o, 0, sizeof o);
  o.client_id = id;
  o.addr = addr;
  o.token = token;
  o.connect_timeout_ms = 10000;
  return sb_connect(&o, out);
}

/* ---- pub/sub ---- */

struct counter {
  atomic_long got;
  atomic_long last_ns; /* arrival time of the latest message */
};

static void on_message(void *user, const char *topic, const uint8_t *data, size_t len) {
  (void)topic;
  (void)data;
  (void)len;
  struct counter *c = user;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  atomic_store(&c->last_ns, (long)ts.tv_sec * 1000000000L + ts.tv_nsec);
  atomic_fetch_add(&c->got, 1);
}

struct publisher {
  sb_client *client;
  const uint8_t *payload;
  size_t size;
  long count;
  sb_error err;
};

static void *publish_loop(void *arg) {
  struct publisher *p = arg;
  p->err = SB_OK;
  for (long i = 0; i < p->count; i++) {
    sb_error e = sb_publish(p->client, "bench.c.pubsub", p->payload, p->size);
    if (e != SB_OK) {
      p->err = e;
      fprintf(stderr, "sb_publish: error %d: %s\n", (int)e, sb_last_error_message());
      return NULL;
    }
  }
  return NULL;
}

static int pubsub(const char *addr, const char *token, long n, size_t size, int window) {
  sb_client *pub = NULL, *subc = NULL;
  sb_subscription *sub = NULL;
  sb_error e;
  if ((e = connect_as("pub", addr, token, &pub)) != SB_OK) return die("connect", e);
  if ((e = connect_as("sub", addr, token, &subc)) != SB_OK) return die("connect", e);
  struct counter c;
  atomic_init(&c.got, 0);
  atomic_init(&c.last_ns, 0);
  if ((e = sb_subscribe(subc, "bench.c.pubsub", on_message, &c, &sub)) != SB_OK)
    return die("subscribe", e);
  uint8_t *payload = malloc(size ? size : 1);
  memset(payload, 7, size);
  if (window < 1) window = 1;
  pthread_t *threads = calloc((size_t)window, sizeof *threads);
  struct publisher *pubs = calloc((size_t)window, sizeof *pubs);
  double start = now_s();
  for (int t = 0; t < window; t++) {
    pubs[t].client = pub;
    pubs[t].payload = payload;
    pubs[t].size = size;
    pubs[t].count = n / window + (t < n % window ? 1 : 0);
    pthread_create(&threads[t], NULL, publish_loop, &pubs[t]);
  }
  int failed = 0;
  for (int t = 0; t < window; t++) {
    pthread_join(threads[t], NULL);
    failed |= pubs[t].err != SB_OK;
  }
  /* wait for the last arrival, at most 60 s */
  double deadline = now_s() + 60.0;
  while (!failed && atomic_load(&c.got) < n && now_s() < deadline) {
    struct timespec d = {0, 200000};
    nanosleep(&d, NULL);
  }
  long got = atomic_load(&c.got);
  double last = (double)atomic_load(&c.last_ns) / 1e9;
  double elapsed = (got > 0 ? last : now_s()) - start;
  sb_unsubscribe(sub);
  sb_close(pub);
  sb_close(subc);
  free(threads);
  free(pubs);
  free(payload);
  if (failed) return 1;
  printf("{\"rate\":%.1f,\"sent\":%ld,\"delivered\":%ld}\n", got / elapsed, n, got);
  return 0;
}

/* ---- request/reply ---- */

static int32_t echo(void *user, const char *from, const uint8_t *data, size_t len, sb_bytes *reply) {
  (void)user;
  (void)from;
  return sb_reply_set(reply, data, len) == SB_OK ? 0 : 1;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int reqrep(const char *addr, const char *token, long n, size_t size) {
  sb_client *server = NULL, *asker = NULL;
  sb_error e;
  if ((e = connect_as("echo", addr, token, &server)) != SB_OK) return die("connect", e);
  if ((e = sb_serve(server, echo, NULL)) != SB_OK) return die("serve", e);
  if ((e = connect_as("ask", addr, token, &asker)) != SB_OK) return die("connect", e);
  char echo_id[64];
  snprintf(echo_id, sizeof echo_id, "bench-c-echo-%ld", (long)getpid());
  uint8_t *payload = malloc(size ? size : 1);
  memset(payload, 7, size);
  double *us = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
  long ok = 0;
  for (long i = 0; i < n; i++) {
    sb_bytes reply = {NULL, 0};
    double t = now_s();
    e = sb_request(asker, echo_id, payload, size, 10000, &reply);
    us[i] = (now_s() - t) * 1e6;
    if (e != SB_OK) return die("request", e);
    ok += reply.len == size && (size == 0 || memcmp(reply.data, payload, size) == 0);
    sb_bytes_free(&reply);
  }
  qsort(us, (size_t)n, sizeof(double), cmp_double);
  long i99 = (long)((double)n * 0.99);
  if (i99 >= n) i99 = n - 1;
  printf("{\"p50\":%.1f,\"p99\":%.1f,\"sent\":%ld,\"delivered\":%ld}\n", us[n / 2], us[i99], n, ok);
  sb_close(asker);
  sb_close(server);
  free(us);
  free(payload);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 6 && strcmp(argv[1], "pubsub") == 0) {
    return pubsub(argv[2], argv[3], atol(argv[4]), (size_t)atol(argv[5]), argc > 6 ? atoi(argv[6]) : 64);
  }
  if (argc >= 6 && strcmp(argv[1], "reqrep") == 0 && atol(argv[4]) > 0) {
    return reqrep(argv[2], argv[3], atol(argv[4]), (size_t)atol(argv[5]));
  }
  fprintf(stderr, "usage: %s pubsub ADDR TOKEN N SIZE [WINDOW] | reqrep ADDR TOKEN N SIZE\n", argv[0]);
  return 2;
}
