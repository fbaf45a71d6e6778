/*
 * Misuse of the vramswap C API, each case answered with a status (never a crash):
 * NULL pointers, a double free, a pointer that was never allocated, a stream the context did
 * not create, zero, negative and overflowing sizes, too-small JSON buffers, unknown names and
 * kinds, and the PyTorch entry points' silent failures. Run with VRAMSWAP_BACKEND=sim. Prints one line per failed
 * expectation and exits 1 if any failed.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "vramswap.h"

static int checks = 0, failures = 0;

#define EXPECT(call, want)                                                              \
  do {                                                                                  \
    vramswap_status got_ = (call);                                                      \
    checks++;                                                                           \
    if (got_ != (want)) {                                                               \
      failures++;                                                                       \
      printf("FAIL %s:%d: %s returned %s, expected %s (%s)\n", __FILE__, __LINE__,      \
             #call, vramswap_status_name((int)got_), vramswap_status_name((int)(want)), \
             vramswap_last_error_message());                                            \
    }                                                                                   \
  } while (0)

#define EXPECT_TRUE(cond)                                                               \
  do {                                                                                  \
    checks++;                                                                           \
    if (!(cond)) {                                                                      \
      failures++;                                                                       \
      printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);                            \
    }                                                                                   \
  } while (0)

int main(void) {
  vramswap_context *ctx = NULL;
  vramswap_guard *guard = (vramswap_guard *)NULL;
  void *p = NULL, *q = NULL, *stream = NULL;
  void *never = (void *)(uintptr_t)0xdead0000u;
  char small[4] = {'x', 'x', 'x', 'x'};
  size_t needed = 0;
  uint64_t bytes = 0;

  /* Creating a context. */
  EXPECT(vramswap_context_create(VRAMSWAP_BACKEND_SIM, 0, 0, NULL), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_context_create((vramswap_backend_kind)42, 0, 0, &ctx),
         VRAMSWAP_INVALID_ARGUMENT);
  EXPECT_TRUE(ctx == NULL);
  EXPECT(vramswap_context_create(VRAMSWAP_BACKEND_SIM, -1, 0, &ctx), VRAMSWAP_INVALID_ARGUMENT);
  EXPECT(vramswap_context_create_with_config(VRAMSWAP_BACKEND_SIM, 0, 0, "limit_mb:lots", NULL,
                                             &ctx),
         VRAMSWAP_INVALID_ARGUMENT);
  EXPECT_TRUE(strstr(vramswap_last_error_message(), "lots") != NULL);
  EXPECT(vramswap_context_create_with_config(VRAMSWAP_BACKEND_SIM, 0, (uint64_t)64 << 20,
                                             "limit_mb:8", "", &ctx),
         VRAMSWAP_OK);
  if (ctx == NULL) {
    printf("FAIL: no context: %s\n", vramswap_last_error_message());
    return 1;
  }

  /* NULL handles and out-parameters. */
  EXPECT(vramswap_malloc(NULL, 16, NULL, &p), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_malloc(ctx, 16, NULL, NULL), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_free(NULL, never), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_free(ctx, NULL), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_record_stream(ctx, NULL, NULL), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_empty_cache(NULL), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_stats_json(NULL, small, sizeof small, &needed), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_engine_register(ctx, NULL, "x.safetensors"), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_engine_register(ctx, "x", NULL), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_engine_acquire(ctx, "x", NULL), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_engine_acquire(NULL, "x", &guard), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_engine_offload(ctx, NULL), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_engine_status_json(NULL, NULL, 0, NULL), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_guard_base(NULL, &p), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_guard_bytes(NULL, &bytes), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_guard_tensor_ptr(NULL, "w", &p, NULL), VRAMSWAP_NULL_POINTER);
  EXPECT_TRUE(strstr(vramswap_last_error_message(), "guard") != NULL);
  EXPECT(vramswap_guard_release(NULL), VRAMSWAP_OK);
  EXPECT(vramswap_context_destroy(NULL), VRAMSWAP_OK);

  /* Sizes: zero, "negative" (a negative ssize_t cast to size_t), overflowing, too large. */
  p = never;
  EXPECT(vramswap_malloc(ctx, 0, NULL, &p), VRAMSWAP_INVALID_ARGUMENT);
  EXPECT_TRUE(p == NULL);
  EXPECT(vramswap_malloc(ctx, (size_t)(ssize_t)-1, NULL, &p), VRAMSWAP_INVALID_ARGUMENT);
  EXPECT(vramswap_malloc(ctx, SIZE_MAX - 100, NULL, &p), VRAMSWAP_INVALID_ARGUMENT);
  EXPECT(vramswap_malloc(ctx, (size_t)1 << 40, NULL, &p), VRAMSWAP_OUT_OF_MEMORY);
  EXPECT_TRUE(strstr(vramswap_last_error_message(), "limit") != NULL);
  /* As cuMemcpy: a copy of 0 bytes succeeds and touches nothing. */
  EXPECT(vramswap_copy_to_host(ctx, small, never, 0, NULL), VRAMSWAP_OK);

  /* Double free, and pointers this context never handed out. */
  EXPECT(vramswap_malloc(ctx, 1000, NULL, &p), VRAMSWAP_OK);
  EXPECT(vramswap_free(ctx, p), VRAMSWAP_OK);
  EXPECT(vramswap_free(ctx, p), VRAMSWAP_INVALID_STATE);
  EXPECT_TRUE(strstr(vramswap_last_error_message(), "double free") != NULL);
  EXPECT(vramswap_free(ctx, never), VRAMSWAP_NOT_FOUND);
  EXPECT(vramswap_record_stream(ctx, never, NULL), VRAMSWAP_NOT_FOUND);
  EXPECT(vramswap_malloc(ctx, 1000, NULL, &q), VRAMSWAP_OK);
  EXPECT(vramswap_free(ctx, (char *)q + 8), VRAMSWAP_NOT_FOUND); /* inside a block */
  EXPECT(vramswap_free(ctx, (char *)q + 1024), VRAMSWAP_NOT_FOUND); /* the free rest */
  EXPECT(vramswap_free(ctx, q), VRAMSWAP_OK);

  /* Streams this context did not create (the engine's own, on sim), or destroyed already. */
  EXPECT(vramswap_stream_destroy(ctx, (void *)1), VRAMSWAP_NOT_FOUND);
  EXPECT(vramswap_malloc(ctx, 16, (void *)2, &p), VRAMSWAP_NOT_FOUND);
  EXPECT(vramswap_stream_create(ctx, &stream), VRAMSWAP_OK);
  EXPECT(vramswap_stream_destroy(ctx, stream), VRAMSWAP_OK);
  EXPECT(vramswap_stream_destroy(ctx, stream), VRAMSWAP_NOT_FOUND);

  /* Too-small JSON buffers: a status, the size needed, and the buffer untouched. */
  EXPECT(vramswap_stats_json(ctx, small, sizeof small, &needed), VRAMSWAP_BUFFER_TOO_SMALL);
  EXPECT_TRUE(needed > sizeof small);
  EXPECT_TRUE(memcmp(small, "xxxx", 4) == 0);
  EXPECT(vramswap_stats_json(ctx, NULL, 100, &needed), VRAMSWAP_NULL_POINTER);
  EXPECT(vramswap_engine_status_json(ctx, small, sizeof small, NULL), VRAMSWAP_BUFFER_TOO_SMALL);
  EXPECT(vramswap_device_json(ctx, NULL, 0, &needed), VRAMSWAP_BUFFER_TOO_SMALL);

  /* The engine: unknown names, a missing file. */
  EXPECT(vramswap_engine_acquire(ctx, "ghost", &guard), VRAMSWAP_NOT_FOUND);
  EXPECT_TRUE(guard == NULL);
  EXPECT(vramswap_engine_offload(ctx, "ghost"), VRAMSWAP_NOT_FOUND);
  EXPECT(vramswap_engine_register(ctx, "gone", "/nonexistent/vramswap.safetensors"), VRAMSWAP_IO);
  EXPECT(vramswap_engine_register(ctx, "bad\xff", "/nonexistent"), VRAMSWAP_INVALID_UTF8);

  /* Status names. */
  EXPECT_TRUE(strcmp(vramswap_status_name(VRAMSWAP_NOT_FOUND), "VRAMSWAP_NOT_FOUND") == 0);
  EXPECT_TRUE(strcmp(vramswap_status_name(1000), "VRAMSWAP_UNKNOWN_STATUS") == 0);

  /* PyTorch entry points: they cannot return a status, so NULL or nothing, with a message. */
  EXPECT_TRUE(vramswap_torch_malloc(-8, 0, NULL) == NULL);
  EXPECT_TRUE(strstr(vramswap_last_error_message(), "negative") != NULL);
  EXPECT_TRUE(vramswap_torch_malloc(0, 0, NULL) == NULL);
  vramswap_torch_free(NULL, 0, 0, NULL);
  vramswap_torch_free(never, 8, 0, NULL);
  EXPECT_TRUE(vramswap_last_error_message()[0] != '\0');
  p = vramswap_torch_malloc(512, 0, NULL);
  EXPECT_TRUE(p != NULL);
  vramswap_torch_free(p, 512, 0, NULL);
  EXPECT_TRUE(vramswap_last_error_message()[0] == '\0');
  vramswap_torch_free(p, 512, 0, NULL);
  EXPECT_TRUE(strstr(vramswap_last_error_message(), "double free") != NULL);

  EXPECT(vramswap_context_destroy(ctx), VRAMSWAP_OK);
  /* Handles are checked: a second destroy is a status, not a crash. */
  EXPECT(vramswap_context_destroy(ctx), VRAMSWAP_INVALID_STATE);
  printf("misuse: %d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
