// vramswap from C++: the caching allocator and the swap engine, with RAII handles.
//
//   alloc_and_engine_cpp WEIGHTS.safetensors
//
// Same file and backend rules as alloc_and_engine.c.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "vramswap.h"

namespace {

// Turns a failed status into an exception carrying the library's message.
void check(vramswap_status st, const char *what) {
  if (st != VRAMSWAP_OK) {
    throw std::runtime_error(std::string(what) + " -> " + vramswap_status_name(st) + ": " +
                             vramswap_last_error_message());
  }
}

struct ContextDeleter {
  void operator()(vramswap_context *c) const { vramswap_context_destroy(c); }
};
struct GuardDeleter {
  void operator()(vramswap_guard *g) const { vramswap_guard_release(g); }
};
using Context = std::unique_ptr<vramswap_context, ContextDeleter>;
using Guard = std::unique_ptr<vramswap_guard, GuardDeleter>;

// A device block returned to the allocator when it goes out of scope.
class Block {
 public:
  Block(vramswap_context *ctx, std::size_t size) : ctx_(ctx) {
    check(vramswap_malloc(ctx, size, nullptr, &ptr_), "vramswap_malloc");
  }
  ~Block() {
    if (ptr_ != nullptr) vramswap_free(ctx_, ptr_);
  }
  Block(const Block &) = delete;
  Block &operator=(const Block &) = delete;
  void *get() const { return ptr_; }

 private:
  vramswap_context *ctx_;
  void *ptr_ = nullptr;
};

template <typename F>
std::string json(vramswap_context *ctx, F fn) {
  std::size_t needed = 0;
  vramswap_status st = fn(ctx, nullptr, 0, &needed);
  std::vector<char> buf;
  while (st == VRAMSWAP_BUFFER_TOO_SMALL) {
    buf.resize(needed + 64);
    st = fn(ctx, buf.data(), buf.size(), &needed);
  }
  check(st, "json");
  return std::string(buf.data());
}

}  // namespace

int main(int argc, char **argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s WEIGHTS.safetensors\n", argv[0]);
    return 2;
  }
  try {
    vramswap_context *raw = nullptr;
    check(vramswap_context_create(VRAMSWAP_BACKEND_AUTO, 0, std::uint64_t(256) << 20, &raw),
          "vramswap_context_create");
    Context ctx(raw);
    std::printf("device: %s\n", json(ctx.get(), vramswap_device_json).c_str());

    {
      Block a(ctx.get(), 1 << 20);
      Block b(ctx.get(), 300);
      std::vector<std::uint8_t> data(300, 0xab), back(300);
      check(vramswap_copy_to_device(ctx.get(), b.get(), data.data(), data.size(), nullptr),
            "copy_to_device");
      check(vramswap_copy_to_host(ctx.get(), back.data(), b.get(), back.size(), nullptr),
            "copy_to_host");
      if (back != data) throw std::runtime_error("device round trip corrupted the bytes");
      std::printf("c++ blocks: %p %p\n", a.get(), b.get());
    }
    std::printf("c++ allocator stats: %s\n", json(ctx.get(), vramswap_stats_json).c_str());

    check(vramswap_engine_register(ctx.get(), "tiny", argv[1]), "register");
    {
      vramswap_guard *g = nullptr;
      check(vramswap_engine_acquire(ctx.get(), "tiny", &g), "acquire");
      Guard guard(g);
      void *w = nullptr;
      std::size_t bytes = 0;
      check(vramswap_guard_tensor_ptr(guard.get(), "w", &w, &bytes), "tensor_ptr");
      std::vector<std::uint8_t> host(bytes);
      check(vramswap_copy_to_host(ctx.get(), host.data(), w, bytes, nullptr), "copy_to_host");
      for (std::size_t i = 0; i < host.size(); ++i) {
        if (host[i] != static_cast<std::uint8_t>(i * 3)) throw std::runtime_error("tensor w differs");
      }
      std::printf("c++ tensor w: %zu bytes ok\n", bytes);
    }
    check(vramswap_engine_offload(ctx.get(), "tiny"), "offload");
    std::printf("c++ engine status: %s\n", json(ctx.get(), vramswap_engine_status_json).c_str());
  } catch (const std::exception &e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  std::printf("c++ done\n");
  return 0;
}
