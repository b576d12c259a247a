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

static void bad_input(const char *addr, const char *token) {
  sb_client *c = NULL;
  CHECK(sb_connect(NULL, &c) == SB_ERR_NULL);
  sb_options o = {.client_id = "c-bad", .addr = addr, .token = token};
  CHECK(sb_connect(&o, NULL) == SB_ERR_NULL);
  o.client_id = NULL;
  CHECK(sb_connect(&o, &c) == SB_ERR_NULL);
  CHECK(strstr(sb_last_error_message(), "client_id") != NULL);
  o.client_id = "bad-\xff\xfe";
  CHECK(sb_connect(&o, &c) == SB_ERR_UTF8);
  CHECK(strstr(sb_last_error_message(), "UTF-8") != NULL);
  o.client_id = "c-bad";
  o.token = "not the token";
  CHECK(sb_connect(&o, &c) == SB_ERR_AUTH_FAILED);
  CHECK(c == NULL);
  CHECK(sb_close(NULL) == SB_ERR_NULL);
  CHECK(sb_close((sb_client *)(uintptr_t)0x7fff1234) == SB_ERR_CLOSED);
  CHECK(sb_publish(NULL, "t", NULL, 0) == SB_ERR_NULL);
  CHECK(sb_unsubscribe(NULL) == SB_ERR_NULL);
  sb_bytes_free(NULL);
  sb_bytes empty = {0};
  sb_bytes_free(&empty);
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

  /* bad arguments on a live client */
  CHECK(sb_publish(c, NULL, NULL, 0) == SB_ERR_NULL);
  CHECK(sb_publish(c, "x", NULL, 3) == SB_ERR_NULL);
  CHECK(sb_publish(c, "bad.\xff", (const uint8_t *)"x", 1) == SB_ERR_UTF8);
  CHECK(sb_publish(c, "bad..topic", (const uint8_t *)"x", 1) == SB_ERR_INVALID_ARGUMENT);
  CHECK(sb_request(c, "rust-peer", NULL, 0, 0, NULL) == SB_ERR_NULL);

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

  /* a payload over the hub's frame limit (16 MiB) */
  size_t big_len = 16 * 1024 * 1024 + 1;
  uint8_t *big = calloc(big_len, 1);
  CHECK(big != NULL);
  if (big) {
    CHECK(sb_publish(c, "from-c.big", big, big_len) == SB_ERR_INVALID_ARGUMENT);
    CHECK(strstr(sb_last_error_message(), "exceeds") != NULL);
    CHECK(sb_send(c, "rust-peer", big, big_len) == SB_ERR_INVALID_ARGUMENT);
    free(big);
  }

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
