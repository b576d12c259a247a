/* hello.c: a C program as a switchboard client.
 *
 * Build (from the repository root):
 *   cargo build -p switchboard-c
 *   cc -o hello examples/c/hello.c -I crates/switchboard-c/include \
 *      target/debug/libswitchboard.a -lpthread -ldl -lm
 * Run against a hub (`switchboard hub`): ./hello            (discovery)
 *                                   or: ./hello HOST:PORT TOKEN
 */
#include <stdio.h>

#include "switchboard.h"

int main(int argc, char **argv) {
  sb_options options = {
      .client_id = "hello-c",
      .addr = argc > 1 ? argv[1] : NULL,  /* NULL: find the hub by discovery */
      .token = argc > 2 ? argv[2] : NULL, /* NULL: the per-user secret */
  };
  sb_client *client = NULL;
  if (sb_connect(&options, &client) != SB_OK) {
    fprintf(stderr, "connect: %s\n", sb_last_error_message());
    return 1;
  }

  const char greeting[] = "hello from C";
  sb_error err = sb_kv_set(client, "hello/greeting", (const uint8_t *)greeting,
                           sizeof greeting - 1, NULL);
  sb_bytes value = {0}; /* filled by the library, freed with sb_bytes_free */
  if (err == SB_OK) err = sb_kv_get(client, "hello/greeting", &value, NULL);
  if (err == SB_OK) {
    printf("greeting = %.*s\n", (int)value.len, (const char *)value.data);
    err = sb_publish(client, "hello.world", value.data, value.len);
  }
  if (err != SB_OK) fprintf(stderr, "error %d: %s\n", err, sb_last_error_message());
  sb_bytes_free(&value);
  sb_close(client);
  return err == SB_OK ? 0 : 1;
}
