/*
 * vramswap from C99: the caching allocator and the swap engine.
 *
 *   alloc_and_engine WEIGHTS.safetensors
 *
 * The file must hold an F32 tensor "w" of shape [4, 8] whose byte i is (i * 3) & 0xff (the test
 * suite writes one). The backend is VRAMSWAP_BACKEND_AUTO: CUDA where a GPU answers, the
 * simulated device otherwise; VRAMSWAP_BACKEND=sim forces the simulator.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vramswap.h"

/* Prints the failed call, its status and the library's message, and exits. */
#define CHECK(call)                                                                     \
  do {                                                                                  \
    vramswap_status st_ = (call);                                                       \
    if (st_ != VRAMSWAP_OK) {                                                           \
      fprintf(stderr, "%s:%d: %s -> %s: %s\n", __FILE__, __LINE__, #call,              \
              vramswap_status_name((int)st_), vramswap_last_error_message());           \
      exit(1);                                                                          \
    }                                                                                   \
  } while (0)

typedef vramswap_status (*json_fn)(vramswap_context *, char *, size_t, size_t *);

/* Returns a malloc'd JSON string from one of the *_json calls (asking again if it grew). */
static char *get_json(vramswap_context *ctx, json_fn fn) {
  size_t needed = 0;
  vramswap_status st = fn(ctx, NULL, 0, &needed);
  while (st == VRAMSWAP_BUFFER_TOO_SMALL) {
    char *buf = (char *)malloc(needed + 64);
    if (buf == NULL) exit(1);
    st = fn(ctx, buf, needed + 64, &needed);
    if (st == VRAMSWAP_OK) return buf;
    free(buf);
  }
  CHECK(st);
  return NULL;
}

int main(int argc, char **argv) {
  vramswap_context *ctx = NULL;
  void *block = NULL;
  void *stream = NULL;
  unsigned char pattern[4096], back[4096];
  vramswap_guard *guard = NULL;
  void *base = NULL, *w = NULL;
  size_t w_bytes = 0, needed = 0, i;
  uint64_t set_bytes = 0;
  unsigned char host_w[128];
  char *json;

  if (argc != 2) {
    fprintf(stderr, "usage: %s WEIGHTS.safetensors\n", argv[0]);
    return 2;
  }
  printf("vramswap %s\n", vramswap_version());
  CHECK(vramswap_context_create(VRAMSWAP_BACKEND_AUTO, 0, (uint64_t)256 << 20, &ctx));
  json = get_json(ctx, vramswap_device_json);
  printf("device: %s\n", json);
  free(json);

  /* The allocator: a block on a stream of our own, filled and read back. */
  CHECK(vramswap_stream_create(ctx, &stream));
  CHECK(vramswap_malloc(ctx, sizeof pattern, stream, &block));
  for (i = 0; i < sizeof pattern; i++) pattern[i] = (unsigned char)(i * 7);
  CHECK(vramswap_copy_to_device(ctx, block, pattern, sizeof pattern, stream));
  CHECK(vramswap_copy_to_host(ctx, back, block, sizeof back, stream));
  if (memcmp(pattern, back, sizeof back) != 0) {
    fprintf(stderr, "device round trip corrupted the bytes\n");
    return 1;
  }
  CHECK(vramswap_record_stream(ctx, block, NULL));
  CHECK(vramswap_free(ctx, block));
  CHECK(vramswap_stream_destroy(ctx, stream));
  printf("malloc/copy/free ok: %zu bytes\n", sizeof pattern);
  json = get_json(ctx, vramswap_stats_json);
  printf("allocator stats: %s\n", json);
  free(json);

  /* The engine: register a weights file, acquire it, read a tensor, offload it. */
  CHECK(vramswap_engine_register(ctx, "tiny", argv[1]));
  CHECK(vramswap_engine_acquire(ctx, "tiny", &guard));
  CHECK(vramswap_guard_base(guard, &base));
  CHECK(vramswap_guard_bytes(guard, &set_bytes));
  CHECK(vramswap_guard_tensor_ptr(guard, "w", &w, &w_bytes));
  printf("set tiny: %llu bytes at %p; tensor w: %zu bytes at offset %zu\n",
         (unsigned long long)set_bytes, base, w_bytes,
         (size_t)((char *)w - (char *)base));
  if (w_bytes != sizeof host_w) {
    fprintf(stderr, "tensor w has %zu bytes, expected %zu\n", w_bytes, sizeof host_w);
    return 1;
  }
  /* Device pointers are not host pointers: copy the tensor out through its address. */
  CHECK(vramswap_copy_to_host(ctx, host_w, w, w_bytes, NULL));
  for (i = 0; i < sizeof host_w; i++) {
    if (host_w[i] != (unsigned char)(i * 3)) {
      fprintf(stderr, "tensor w byte %zu is %u, expected %u\n", i, host_w[i],
              (unsigned)(unsigned char)(i * 3));
      return 1;
    }
  }
  CHECK(vramswap_guard_read_tensor(guard, "w", host_w, sizeof host_w, &needed));
  printf("tensor w contents ok\n");
  vramswap_guard_release(guard);
  CHECK(vramswap_engine_offload(ctx, "tiny"));
  json = get_json(ctx, vramswap_engine_status_json);
  printf("engine status: %s\n", json);
  free(json);

  vramswap_context_destroy(ctx);
  printf("done\n");
  return 0;
}
