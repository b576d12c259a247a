/* The C side of tests/c_program.rs: talks to a Rust client ("rust-peer")
 * through a real hub. Usage: interop HUB_ADDR TOKEN. Exits 0 and prints
 * "interop: ok" when every check passed; otherwise prints the failed check
 * and exits 1. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "switchboard.h"

static int failures = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "interop.c:%d: check failed: %s (last error: %s)\n", \
              __LINE__, #cond, sb_last_error_message());                   \
      failures++;                                                          \
    }                                                                      \
  } while (0)

#define CHECK_BYTES(b, text) \
  CHECK((b).len == strlen(text) && memcmp((b).data, (text), (b).len) == 0)

/* What the subscription callback saw, shared with the main thread. */
struct inbox {
  pthread_mutex_t lock;
  pthread_cond_t changed;
  char last[64];
  int count;
};

static void on_message(void *user_data, const char *topic, const uint8_t *data, size_t len) {
  struct inbox *in = user_data;
  pthread_mutex_lock(&in->lock);
  size_t n = len < sizeof in->last - 1 ? len : sizeof in->last - 1;
  memcpy(in->last, data, n);
  in->last[n] = '\0';
  in->count++;
  (void)topic;
  pthread_cond_signal(&in->changed);
  pthread_mutex_unlock(&in->lock);
}

/* Records kv watch events into an inbox as "KEY=VALUE@VERSION" or
 * "KEY deleted@VERSION". */
static void on_kv(void *user_data, const char *key, const uint8_t *data, size_t len,
                  uint64_t version, int32_t deleted) {
  struct inbox *in = user_data;
  pthread_mutex_lock(&in->lock);
  if (deleted)
    snprintf(in->last, sizeof in->last, "%s deleted@%llu", key, (unsigned long long)version);
  else
    snprintf(in->last, sizeof in->last, "%s=%.*s@%llu", key, (int)len, (const char *)data,
             (unsigned long long)version);
  in->count++;
  pthread_cond_signal(&in->changed);
  pthread_mutex_unlock(&in->lock);
}

/* Waits up to 20 s for the inbox's last entry to be `text`. */
static int wait_last(struct inbox *in, const char *text) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 20;
  pthread_mutex_lock(&in->lock);
  int rc = 0;
  while (strcmp(in->last, text) != 0 && rc == 0)
    rc = pthread_cond_timedwait(&in->changed, &in->lock, &deadline);
  int ok = strcmp(in->last, text) == 0;
  if (!ok) fprintf(stderr, "waited for \"%s\", last is \"%s\"\n", text, in->last);
  pthread_mutex_unlock(&in->lock);
  return ok;
}

/* Waits up to 20 s for the inbox to hold `count` messages. */
static int wait_for(struct inbox *in, int count) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 20;
  pthread_mutex_lock(&in->lock);
  int rc = 0;
  while (in->count < count && rc == 0) rc = pthread_cond_timedwait(&in->changed, &in->lock, &deadline);
  int ok = in->count >= count;
  pthread_mutex_unlock(&in->lock);
  return ok;
}

/* Answers requests with "c:" + the payload; "fail" gets an error reply. */
static int32_t handler(void *user_data, const char *from, const uint8_t *data, size_t len,
                       sb_bytes *reply) {
  (void)user_data;
  (void)from;
  if (len == 9 && memcmp(data, "big-reply", 9) == 0) {
    size_t big_len = 16 * 1024 * 1024 + 1;
    uint8_t *big = calloc(big_len, 1);
    if (big == NULL) return 1;
    sb_error e = sb_reply_set(reply, big, big_len);
    free(big);
    return e == SB_OK ? 0 : 1;
  }
  if (len == 4 && memcmp(data, "fail", 4) == 0) {
    sb_reply_set(reply, (const uint8_t *)"refused by C", 12);
    return 1;
  }
  uint8_t buf[256];
  if (len > sizeof buf - 2) len = sizeof buf - 2;
  buf[0] = 'c';
  buf[1] = ':';
  memcpy(buf + 2, data, len);
  return sb_reply_set(reply, buf, len + 2) == SB_OK ? 0 : 1;
}

/* Not in the header: a debug-build hook that panics inside the library
 * (src/testing.rs). place 0: on the calling thread; 1: in a runtime task;
 * 2: holding the client's serve lock. */
extern sb_error sb__test_panic(sb_client *client, int32_t place);

/* ---- bad input, table-driven ------------------------------------------ */

/* What the bad-input cases use: a live client, a closed one, an ended
 * subscription, a payload over the hub's frame limit (16 MiB). */
struct bad_ctx {
  const char *addr, *token;
  sb_client *live, *dead;
  sb_subscription *dead_sub;
  const uint8_t *big;
  size_t big_len;
};

/* Outputs the cases write to (or must leave alone). */
static sb_client *out_client;
static sb_subscription *out_sub;
static sb_bytes out_bytes;
static uint64_t out_version;
static int32_t out_existed;

static const char bad_utf8[] = "bad-\xff\xfe";
static const uint8_t some[] = "abc";
#define MADE_UP_CLIENT ((sb_client *)(uintptr_t)0x7fff1234)
#define MADE_UP_SUB ((sb_subscription *)(uintptr_t)0x7fff1235)

static void noop_message(void *u, const char *t, const uint8_t *d, size_t n) {
  (void)u, (void)t, (void)d, (void)n;
}
static void noop_kv(void *u, const char *k, const uint8_t *d, size_t n, uint64_t v, int32_t del) {
  (void)u, (void)k, (void)d, (void)n, (void)v, (void)del;
}
static int32_t noop_handler(void *u, const char *f, const uint8_t *d, size_t n, sb_bytes *r) {
  (void)u, (void)f, (void)d, (void)n, (void)r;
  return 0;
}

/* One row per bad argument of every function: name, the code it must
 * answer, a part of the message it must leave, and the call (`x` is the
 * struct bad_ctx). Every pointer argument NULL (where NULL is not
 * allowed), every string argument invalid UTF-8, every client call on a
 * closed handle, every payload call over the frame limit. */
#define BAD_CASES(X)                                                                            \
  X(connect_options_null, SB_ERR_NULL, "options", sb_connect(NULL, &out_client))                \
  X(connect_out_null, SB_ERR_NULL, "out",                                                       \
    sb_connect(&(sb_options){.client_id = "c-bad-x", .addr = x->addr, .token = x->token}, NULL)) \
  X(connect_id_null, SB_ERR_NULL, "client_id",                                                  \
    sb_connect(&(sb_options){.addr = x->addr, .token = x->token}, &out_client))                 \
  X(connect_id_utf8, SB_ERR_UTF8, "client_id",                                                  \
    sb_connect(&(sb_options){.client_id = bad_utf8, .addr = x->addr, .token = x->token},        \
               &out_client))                                                                    \
  X(connect_addr_utf8, SB_ERR_UTF8, "addr",                                                     \
    sb_connect(&(sb_options){.client_id = "c-bad-x", .addr = bad_utf8, .token = x->token},      \
               &out_client))                                                                    \
  X(connect_token_utf8, SB_ERR_UTF8, "token",                                                   \
    sb_connect(&(sb_options){.client_id = "c-bad-x", .addr = x->addr, .token = bad_utf8},       \
               &out_client))                                                                    \
  X(connect_service_utf8, SB_ERR_UTF8, "service",                                               \
    sb_connect(&(sb_options){.client_id = "c-bad-x", .service = bad_utf8}, &out_client))        \
  X(connect_wrong_token, SB_ERR_AUTH_FAILED, "",                                                \
    sb_connect(&(sb_options){.client_id = "c-bad-x", .addr = x->addr, .token = "wrong"},        \
               &out_client))                                                                    \
  X(close_null, SB_ERR_NULL, "client", sb_close(NULL))                                          \
  X(close_twice, SB_ERR_CLOSED, "closed", sb_close(x->dead))                                    \
  X(close_made_up, SB_ERR_CLOSED, "closed", sb_close(MADE_UP_CLIENT))                           \
  X(publish_client_null, SB_ERR_NULL, "client", sb_publish(NULL, "t", some, 3))                 \
  X(publish_closed, SB_ERR_CLOSED, "closed", sb_publish(x->dead, "t", some, 3))                 \
  X(publish_topic_null, SB_ERR_NULL, "topic", sb_publish(x->live, NULL, some, 3))               \
  X(publish_topic_utf8, SB_ERR_UTF8, "topic", sb_publish(x->live, bad_utf8, some, 3))           \
  X(publish_data_null, SB_ERR_NULL, "data", sb_publish(x->live, "t", NULL, 3))                  \
  X(publish_too_big, SB_ERR_INVALID_ARGUMENT, "exceeds",                                        \
    sb_publish(x->live, "t", x->big, x->big_len))                                               \
  X(send_client_null, SB_ERR_NULL, "client", sb_send(NULL, "rust-peer", some, 3))               \
  X(send_closed, SB_ERR_CLOSED, "closed", sb_send(x->dead, "rust-peer", some, 3))               \
  X(send_to_null, SB_ERR_NULL, "to", sb_send(x->live, NULL, some, 3))                           \
  X(send_to_utf8, SB_ERR_UTF8, "to", sb_send(x->live, bad_utf8, some, 3))                       \
  X(send_data_null, SB_ERR_NULL, "data", sb_send(x->live, "rust-peer", NULL, 3))                \
  X(send_too_big, SB_ERR_INVALID_ARGUMENT, "exceeds",                                           \
    sb_send(x->live, "rust-peer", x->big, x->big_len))                                          \
  X(request_client_null, SB_ERR_NULL, "client",                                                 \
    sb_request(NULL, "rust-peer", some, 3, 1000, &out_bytes))                                   \
  X(request_closed, SB_ERR_CLOSED, "closed",                                                    \
    sb_request(x->dead, "rust-peer", some, 3, 1000, &out_bytes))                                \
  X(request_to_null, SB_ERR_NULL, "to", sb_request(x->live, NULL, some, 3, 1000, &out_bytes))   \
  X(request_to_utf8, SB_ERR_UTF8, "to",                                                         \
    sb_request(x->live, bad_utf8, some, 3, 1000, &out_bytes))                                   \
  X(request_data_null, SB_ERR_NULL, "data",                                                     \
    sb_request(x->live, "rust-peer", NULL, 3, 1000, &out_bytes))                                \
  X(request_reply_null, SB_ERR_NULL, "reply", sb_request(x->live, "rust-peer", some, 3, 1000, NULL)) \
  X(request_too_big, SB_ERR_INVALID_ARGUMENT, "exceeds",                                        \
    sb_request(x->live, "rust-peer", x->big, x->big_len, 1000, &out_bytes))                     \
  X(serve_client_null, SB_ERR_NULL, "client", sb_serve(NULL, noop_handler, NULL))               \
  X(serve_closed, SB_ERR_CLOSED, "closed", sb_serve(x->dead, noop_handler, NULL))               \
  X(serve_handler_null, SB_ERR_NULL, "handler", sb_serve(x->live, NULL, NULL))                  \
  X(subscribe_client_null, SB_ERR_NULL, "client",                                               \
    sb_subscribe(NULL, "t.>", noop_message, NULL, &out_sub))                                    \
  X(subscribe_closed, SB_ERR_CLOSED, "closed",                                                  \
    sb_subscribe(x->dead, "t.>", noop_message, NULL, &out_sub))                                 \
  X(subscribe_pattern_null, SB_ERR_NULL, "pattern",                                             \
    sb_subscribe(x->live, NULL, noop_message, NULL, &out_sub))                                  \
  X(subscribe_pattern_utf8, SB_ERR_UTF8, "pattern",                                             \
    sb_subscribe(x->live, bad_utf8, noop_message, NULL, &out_sub))                              \
  X(subscribe_callback_null, SB_ERR_NULL, "callback",                                           \
    sb_subscribe(x->live, "t.>", NULL, NULL, &out_sub))                                         \
  X(subscribe_out_null, SB_ERR_NULL, "out", sb_subscribe(x->live, "t.>", noop_message, NULL, NULL)) \
  X(unsubscribe_null, SB_ERR_NULL, "subscription", sb_unsubscribe(NULL))                        \
  X(unsubscribe_twice, SB_ERR_CLOSED, "closed", sb_unsubscribe(x->dead_sub))                    \
  X(unsubscribe_made_up, SB_ERR_CLOSED, "closed", sb_unsubscribe(MADE_UP_SUB))                  \
  X(kv_set_client_null, SB_ERR_NULL, "client", sb_kv_set(NULL, "k", some, 3, &out_version))     \
  X(kv_set_closed, SB_ERR_CLOSED, "closed", sb_kv_set(x->dead, "k", some, 3, &out_version))     \
  X(kv_set_key_null, SB_ERR_NULL, "key", sb_kv_set(x->live, NULL, some, 3, &out_version))       \
  X(kv_set_key_utf8, SB_ERR_UTF8, "key", sb_kv_set(x->live, bad_utf8, some, 3, &out_version))   \
  X(kv_set_data_null, SB_ERR_NULL, "data", sb_kv_set(x->live, "k", NULL, 3, &out_version))      \
  X(kv_set_too_big, SB_ERR_INVALID_ARGUMENT, "exceeds",                                         \
    sb_kv_set(x->live, "k", x->big, x->big_len, &out_version))                                  \
  X(kv_get_client_null, SB_ERR_NULL, "client", sb_kv_get(NULL, "k", &out_bytes, &out_version))  \
  X(kv_get_closed, SB_ERR_CLOSED, "closed", sb_kv_get(x->dead, "k", &out_bytes, &out_version))  \
  X(kv_get_key_null, SB_ERR_NULL, "key", sb_kv_get(x->live, NULL, &out_bytes, &out_version))    \
  X(kv_get_key_utf8, SB_ERR_UTF8, "key", sb_kv_get(x->live, bad_utf8, &out_bytes, &out_version)) \
  X(kv_get_value_null, SB_ERR_NULL, "value", sb_kv_get(x->live, "k", NULL, &out_version))       \
  X(kv_delete_client_null, SB_ERR_NULL, "client", sb_kv_delete(NULL, "k", &out_existed))        \
  X(kv_delete_closed, SB_ERR_CLOSED, "closed", sb_kv_delete(x->dead, "k", &out_existed))        \
  X(kv_delete_key_null, SB_ERR_NULL, "key", sb_kv_delete(x->live, NULL, &out_existed))          \
  X(kv_delete_key_utf8, SB_ERR_UTF8, "key", sb_kv_delete(x->live, bad_utf8, &out_existed))      \
  X(kv_watch_client_null, SB_ERR_NULL, "client", sb_kv_watch(NULL, "k", 0, noop_kv, NULL, &out_sub)) \
  X(kv_watch_closed, SB_ERR_CLOSED, "closed", sb_kv_watch(x->dead, "k", 0, noop_kv, NULL, &out_sub)) \
  X(kv_watch_key_null, SB_ERR_NULL, "key", sb_kv_watch(x->live, NULL, 0, noop_kv, NULL, &out_sub)) \
  X(kv_watch_key_utf8, SB_ERR_UTF8, "key",                                                      \
    sb_kv_watch(x->live, bad_utf8, 1, noop_kv, NULL, &out_sub))                                 \
  X(kv_watch_callback_null, SB_ERR_NULL, "callback",                                            \
    sb_kv_watch(x->live, "k", 0, NULL, NULL, &out_sub))                                         \
  X(kv_watch_out_null, SB_ERR_NULL, "out", sb_kv_watch(x->live, "k", 0, noop_kv, NULL, NULL))   \
  X(reply_set_reply_null, SB_ERR_NULL, "reply", sb_reply_set(NULL, some, 3))                    \
  X(reply_set_data_null, SB_ERR_NULL, "data", sb_reply_set(&out_bytes, NULL, 3))

#define DEFINE_CASE(name, want, says, ...)           \
  static sb_error bad_##name(struct bad_ctx *x) {    \
    (void)x;                                         \
    return __VA_ARGS__;                              \
  }
BAD_CASES(DEFINE_CASE)

struct bad_case {
  const char *name;
  sb_error want;
  const char *says;
  sb_error (*run)(struct bad_ctx *);
};
#define ROW(name, want, says, ...) {#name, want, says, bad_##name},
static const struct bad_case bad_cases[] = {BAD_CASES(ROW)};

/* Runs every bad-input case: each answers its code and a message, none
 * crashes or touches its outputs, and the live client still works. */
static void bad_input(const char *addr, const char *token) {
  struct bad_ctx x = {.addr = addr, .token = token};
  sb_options live = {.client_id = "c-bad-live", .addr = addr, .token = token};
  sb_options dead = {.client_id = "c-bad-dead", .addr = addr, .token = token};
  CHECK(sb_connect(&live, &x.live) == SB_OK);
  CHECK(sb_connect(&dead, &x.dead) == SB_OK);
  if (!x.live || !x.dead) return;
  CHECK(sb_subscribe(x.dead, "gone.>", noop_message, NULL, &x.dead_sub) == SB_OK);
  CHECK(sb_close(x.dead) == SB_OK); /* ends dead_sub too */
  x.big_len = 16 * 1024 * 1024 + 1;
  uint8_t *big = calloc(x.big_len, 1);
  CHECK(big != NULL);
  if (!big) return;
  x.big = big;

  size_t n = sizeof bad_cases / sizeof bad_cases[0];
  for (size_t i = 0; i < n; i++) {
    const struct bad_case *c = &bad_cases[i];
    sb_error got = c->run(&x);
    const char *msg = sb_last_error_message();
    if (got != c->want || msg == NULL || msg[0] == '\0' || strstr(msg, c->says) == NULL) {
      fprintf(stderr, "bad input %s: got %d (want %d), message \"%s\" (want \"%s\" in it)\n",
              c->name, (int)got, (int)c->want, msg ? msg : "(NULL)", c->says);
      failures++;
    }
  }
  printf("bad input: %zu cases\n", n);
  CHECK(out_client == NULL && out_sub == NULL && out_bytes.data == NULL);
  sb_bytes_free(NULL); /* does nothing */
  sb_bytes_free(&out_bytes);

  /* after all that the live client works */
  CHECK(sb_kv_set(x.live, "c/bad-input", some, 3, NULL) == SB_OK);
  CHECK(sb_close(x.live) == SB_OK);
  free(big);
}

/* ---- threads ----------------------------------------------------------- */

/* A request made on another thread, for close_while_requesting. */
struct pending {
  sb_client *client;
  sb_error result;
  sb_bytes reply;
};

static void *request_slowly(void *arg) {
  struct pending *p = arg;
  p->result = sb_request(p->client, "rust-peer", (const uint8_t *)"slow", 4, 10000, &p->reply);
  return NULL;
}

static void *fail_on_this_thread(void *arg) {
  (void)arg;
  sb_error e = sb_close(NULL);
  return (void *)(uintptr_t)(e == SB_ERR_NULL && strstr(sb_last_error_message(), "client"));
}

/* sb_close while another thread waits in sb_request on the same client:
 * that call ends (with SB_ERR_CLOSED, or the reply if it came first) and
 * nothing hangs. The last error is per thread. */
static void threads(const char *addr, const char *token) {
  sb_client *other = NULL;
  sb_options options = {.client_id = "c-threaded", .addr = addr, .token = token};
  CHECK(sb_connect(&options, &other) == SB_OK);
  if (!other) return;
  struct pending p = {.client = other, .result = SB_OK};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, request_slowly, &p) == 0);
  struct timespec pause = {0, 300 * 1000 * 1000};
  nanosleep(&pause, NULL);
  CHECK(sb_close(other) == SB_OK);
  pthread_join(t, NULL);
  CHECK(p.result == SB_ERR_CLOSED || p.result == SB_OK);
  sb_bytes_free(&p.reply);

  CHECK(sb_publish(NULL, "t", NULL, 0) == SB_ERR_NULL);
  CHECK(strcmp(sb_last_error_message(), "client is NULL") == 0);
  CHECK(sb_kv_get(MADE_UP_CLIENT, "k", &out_bytes, NULL) == SB_ERR_CLOSED);
  char before[128];
  snprintf(before, sizeof before, "%s", sb_last_error_message());
  void *ok = NULL;
  CHECK(pthread_create(&t, NULL, fail_on_this_thread, NULL) == 0);
  pthread_join(t, &ok);
  CHECK(ok != NULL);
  CHECK(strcmp(sb_last_error_message(), before) == 0); /* not the other thread's */
}

/* ---- panics ------------------------------------------------------------ */

/* A panic inside the library comes back as SB_ERR_PANIC with its message,
 * wherever it happens, and the client keeps working. */
static void panics(sb_client *c) {
  for (int32_t place = 0; place <= 2; place++) {
    CHECK(sb__test_panic(c, place) == SB_ERR_PANIC);
    CHECK(strstr(sb_last_error_message(), "a panic in libswitchboard") != NULL);
    CHECK(strstr(sb_last_error_message(), "test panic") != NULL);
    uint64_t version = 0;
    CHECK(sb_kv_set(c, "c/after-panic", some, 3, &version) == SB_OK);
    CHECK(version == (uint64_t)place + 1);
  }
  CHECK(sb__test_panic(NULL, 2) == SB_ERR_NULL);
  CHECK(sb__test_panic(c, 3) == SB_ERR_INVALID_ARGUMENT);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: interop HUB_ADDR TOKEN\n");
    return 2;
  }
  const char *addr = argv[1], *token = argv[2];
  bad_input(addr, token);

  sb_client *c = NULL;
  sb_options o = {.client_id = "c-prog", .addr = addr, .token = token};
  CHECK(sb_connect(&o, &c) == SB_OK);
  if (c == NULL) return 1;

  /* a pattern the hub refuses */
  CHECK(sb_publish(c, "bad..topic", (const uint8_t *)"x", 1) == SB_ERR_INVALID_ARGUMENT);

  /* panics inside the library, one while holding the serve lock that
   * sb_serve and sb_close take next */
  panics(c);

  /* serve: the Rust peer calls us back while we wait in sb_request */
  CHECK(sb_serve(c, handler, NULL) == SB_OK);

  /* pub/sub both ways */
  struct inbox in = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0};
  sb_subscription *sub = NULL;
  CHECK(sb_subscribe(c, "to-c.>", on_message, &in, &sub) == SB_OK);
  CHECK(sb_publish(c, "from-c.hello", (const uint8_t *)"hi", 2) == SB_OK);
  CHECK(wait_for(&in, 1));
  CHECK(strcmp(in.last, "echo:hi") == 0);

  /* a direct message to Rust; Rust answers on a topic */
  CHECK(sb_send(c, "rust-peer", (const uint8_t *)"direct-hi", 9) == SB_OK);
  CHECK(wait_for(&in, 2));
  CHECK(strcmp(in.last, "got:direct-hi") == 0);
  CHECK(sb_send(c, "nobody", (const uint8_t *)"x", 1) == SB_ERR_NO_SUCH_CLIENT);

  /* request/reply, C to Rust */
  sb_bytes reply = {0};
  CHECK(sb_request(c, "rust-peer", (const uint8_t *)"hello", 5, 5000, &reply) == SB_OK);
  CHECK_BYTES(reply, "rust:hello");
  sb_bytes_free(&reply);
  CHECK(reply.data == NULL && reply.len == 0);
  sb_bytes_free(&reply); /* a second free does nothing */

  /* request/reply, Rust to C (nested in a C request) */
  CHECK(sb_request(c, "rust-peer", (const uint8_t *)"call-me-back", 12, 10000, &reply) == SB_OK);
  CHECK_BYTES(reply, "c:ping");
  sb_bytes_free(&reply);

  /* a handler's reply over the frame limit cannot be sent: the requester
   * gets an error, not the reply and not a hang, and the serving client
   * keeps working. */
  sb_client *other = NULL;
  sb_options other_options = {.client_id = "c-other", .addr = addr, .token = token};
  CHECK(sb_connect(&other_options, &other) == SB_OK);
  sb_error big_reply = sb_request(other, "c-prog", (const uint8_t *)"big-reply", 9, 2000, &reply);
  CHECK(big_reply == SB_ERR_REMOTE);
  CHECK(strstr(sb_last_error_message(), "could not send its reply") != NULL);
  CHECK(reply.data == NULL);
  CHECK(sb_request(other, "c-prog", (const uint8_t *)"again", 5, 5000, &reply) == SB_OK);
  CHECK_BYTES(reply, "c:again");
  sb_bytes_free(&reply);
  CHECK(sb_close(other) == SB_OK);

  threads(addr, token);

  /* request errors */
  CHECK(sb_request(c, "nobody", (const uint8_t *)"x", 1, 2000, &reply) == SB_ERR_NO_SUCH_CLIENT);
  CHECK(sb_request(c, "rust-peer", (const uint8_t *)"slow", 4, 300, &reply) == SB_ERR_TIMEOUT);
  CHECK(sb_request(c, "rust-peer", (const uint8_t *)"fail", 4, 5000, &reply) == SB_ERR_REMOTE);
  CHECK(strstr(sb_last_error_message(), "refused by Rust") != NULL);

  /* kv: read what Rust wrote, write what Rust reads */
  uint64_t version = 0;
  CHECK(sb_kv_get(c, "rust/key", &reply, &version) == SB_OK);
  CHECK_BYTES(reply, "from-rust");
  CHECK(version == 1);
  sb_bytes_free(&reply);
  CHECK(sb_kv_get(c, "missing/key", &reply, NULL) == SB_ERR_NOT_FOUND);
  CHECK(reply.data == NULL);
  CHECK(sb_kv_set(c, "c/key", (const uint8_t *)"from-c", 6, &version) == SB_OK);
  CHECK(version == 1);
  CHECK(sb_kv_set(c, "c/key", (const uint8_t *)"from-c-2", 8, NULL) == SB_OK);

  /* kv watch: C's own write, then Rust's change and delete */
  struct inbox watched = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0};
  sb_subscription *watch = NULL;
  CHECK(sb_kv_watch(c, "watched/", 1, on_kv, &watched, &watch) == SB_OK);
  CHECK(sb_kv_watch(c, "watched/", 1, NULL, &watched, &watch) == SB_ERR_NULL);
  CHECK(sb_kv_set(c, "watched/a", (const uint8_t *)"w1", 2, NULL) == SB_OK);
  CHECK(wait_last(&watched, "watched/a=w1@1"));
  CHECK(sb_publish(c, "from-c.change", (const uint8_t *)"a", 1) == SB_OK);
  CHECK(wait_last(&watched, "watched/a deleted@3"));
  CHECK(watched.count == 3); /* w1, Rust's value, the delete */
  CHECK(sb_unsubscribe(watch) == SB_OK);

  /* kv watch on keys that already have a value: the current value comes
   * first, then a delete from C */
  CHECK(sb_kv_set(c, "pre/k", (const uint8_t *)"v1", 2, &version) == SB_OK);
  CHECK(version == 1);
  CHECK(sb_kv_set(c, "pre/k", (const uint8_t *)"v2", 2, &version) == SB_OK);
  CHECK(version == 2);
  struct inbox exact = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0};
  struct inbox prefixed = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {0}, 0};
  sb_subscription *exact_watch = NULL, *prefix_watch = NULL;
  CHECK(sb_kv_watch(c, "pre/k", 0, on_kv, &exact, &exact_watch) == SB_OK);
  CHECK(sb_kv_watch(c, "pre/", 1, on_kv, &prefixed, &prefix_watch) == SB_OK);
  CHECK(wait_last(&exact, "pre/k=v2@2"));
  CHECK(wait_last(&prefixed, "pre/k=v2@2"));
  int32_t existed = -1;
  CHECK(sb_kv_delete(c, "pre/k", &existed) == SB_OK);
  CHECK(existed == 1);
  CHECK(wait_last(&exact, "pre/k deleted@3"));
  CHECK(wait_last(&prefixed, "pre/k deleted@3"));
  CHECK(sb_kv_get(c, "pre/k", &reply, NULL) == SB_ERR_NOT_FOUND);
  CHECK(sb_kv_delete(c, "pre/k", &existed) == SB_OK);
  CHECK(existed == 0);
  CHECK(sb_kv_delete(c, "pre/k", NULL) == SB_OK);
  /* deleting a missing key is no event: the next one is the new value */
  CHECK(sb_kv_set(c, "pre/k", (const uint8_t *)"v3", 2, &version) == SB_OK);
  char expect[64];
  snprintf(expect, sizeof expect, "pre/k=v3@%llu", (unsigned long long)version);
  CHECK(wait_last(&exact, expect));
  CHECK(wait_last(&prefixed, expect));
  pthread_mutex_lock(&exact.lock);
  CHECK(exact.count == 3); /* v2 (current), the delete, v3 */
  pthread_mutex_unlock(&exact.lock);
  pthread_mutex_lock(&prefixed.lock);
  CHECK(prefixed.count == 3);
  pthread_mutex_unlock(&prefixed.lock);
  CHECK(sb_unsubscribe(exact_watch) == SB_OK);
  CHECK(sb_unsubscribe(prefix_watch) == SB_OK);

  /* tell Rust we are done; it checks kv and calls us once more */
  CHECK(sb_publish(c, "from-c.done", (const uint8_t *)"done", 4) == SB_OK);
  CHECK(wait_for(&in, 3));
  CHECK(strcmp(in.last, "checked") == 0);

  CHECK(sb_unsubscribe(sub) == SB_OK);
  CHECK(sb_unsubscribe(sub) == SB_ERR_CLOSED);

  /* close; use after close and double close are errors, not crashes */
  CHECK(sb_close(c) == SB_OK);
  CHECK(sb_publish(c, "from-c.late", (const uint8_t *)"x", 1) == SB_ERR_CLOSED);
  CHECK(sb_request(c, "rust-peer", (const uint8_t *)"x", 1, 100, &reply) == SB_ERR_CLOSED);
  CHECK(sb_kv_get(c, "c/key", &reply, NULL) == SB_ERR_CLOSED);
  CHECK(sb_close(c) == SB_ERR_CLOSED);
  CHECK(strstr(sb_last_error_message(), "closed") != NULL);

  if (failures) {
    fprintf(stderr, "interop: %d check(s) failed\n", failures);
    return 1;
  }
  printf("interop: ok\n");
  return 0;
}
