// Shared helpers of the fused kernels: row-parallel loops, CPU-stream scheduling, input checks.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"

namespace gigamlx {

namespace mx = mlx::core;

// Threads used by one kernel call: all cores (rows are independent), at least one.
inline int worker_count(int work_items) {
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::max(1, std::min(work_items, std::max(1, cores)));
}

// Run f(state, begin, end, chunk) over [0, n) in chunks of `chunk` rows that the threads
// (this one included) claim `claim` consecutive chunks at a time, each thread with its own
// state = make(). A thread slowed down by another process or by the prefetch thread then takes
// fewer chunks instead of holding the others up at the join (a static split leaves a core
// idle); consecutive chunks in one claim let a thread reuse what its state cached (input rows
// shared by neighbouring output rows). Results must depend only on the chunk index, never on
// which thread ran it (sums: one slot per chunk).
template <class Make, class F>
void parallel_chunks(int n, int chunk, Make&& make, F&& f, int claim = 1) {
  const int chunks = (n + chunk - 1) / chunk, claims = (chunks + claim - 1) / claim;
  std::atomic<int> next{0};
  auto run = [&]() {
    auto state = make();
    for (int c0 = next.fetch_add(claim); c0 < chunks; c0 = next.fetch_add(claim)) {
      for (int c = c0; c < std::min(chunks, c0 + claim); ++c) {
        f(state, c * chunk, std::min(n, (c + 1) * chunk), c);
      }
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < worker_count(claims); ++t) pool.emplace_back(run);
  run();
  for (auto& th : pool) th.join();
}

// dst[0, bytes) = src[0, bytes), in chunks over the cores.
inline void copy_bytes(const uint8_t* src, uint8_t* dst, size_t bytes) {
  constexpr size_t kChunk = size_t{1} << 22;
  const int chunks = static_cast<int>((bytes + kChunk - 1) / kChunk);
  parallel_chunks(chunks, 1, [] { return 0; }, [&](int, int begin, int, int) {
    const size_t at = static_cast<size_t>(begin) * kChunk;
    std::memcpy(dst + at, src + at, std::min(kChunk, bytes - at));
  });
}

// Element-wise sum of the per-chunk vectors, in chunk order (so independent of timing).
inline std::vector<double> sum_chunks(const std::vector<std::vector<double>>& parts) {
  std::vector<double> total(parts.empty() ? 0 : parts[0].size(), 0.0);
  for (const auto& part : parts)
    for (size_t k = 0; k < part.size(); ++k) total[k] += part[k];
  return total;
}

// The CPU stream: the kernels have no GPU implementation, so they always run there.
inline mx::Stream cpu_stream() {
  return mx::default_stream(mx::Device(mx::Device::cpu));
}

// float32 and row-contiguous (a no-copy Contiguous op when the input already is).
inline mx::array as_dense(const mx::array& a, const mx::Stream& s) {
  if (a.dtype() != mx::float32) {
    throw std::invalid_argument("gigamlx_fused: inputs must be float32");
  }
  return mx::contiguous(a, false, s);
}

inline void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("gigamlx_fused: " + what);
}

// The network input's standardisation (x - mean) / std per channel (gigamlx/core/normalise.py),
// zero outside `keep` (window rows and cols [y0, y1) x [x0, x1) inside the padded image): the
// zero padding a whole-image pass gives the standardised input. Off: x is read as it is.
struct InputNorm {
  bool on = false;
  std::array<float, 3> mean{0.0f, 0.0f, 0.0f};
  std::array<float, 3> std{1.0f, 1.0f, 1.0f};
  std::array<int, 4> keep{0, 0, 0, 0};
  bool operator==(const InputNorm&) const = default;
  bool row_inside(int y) const { return !on || (y >= keep[0] && y < keep[2]); }
  // the columns [lo, hi) of [0, w) that are read; the others stay zero
  int col_lo() const { return on ? std::max(0, keep[1]) : 0; }
  int col_hi(int w) const { return on ? std::min(w, keep[3]) : w; }
};

// Standardisation from Python's lists: off when `mean` is empty.
inline InputNorm input_norm(const std::vector<float>& mean, const std::vector<float>& std,
                            const std::array<int, 4>& keep) {
  if (mean.empty()) return InputNorm{};
  require(mean.size() == 3 && std.size() == 3, "mean and std need 3 values (R, G, B)");
  return InputNorm{true, {mean[0], mean[1], mean[2]}, {std[0], std[1], std[2]}, keep};
}

// a / d as the product with r = 1 / d corrected once by its residual (two FMAs): nearly always
// the correctly rounded quotient, and used only where every value was checked to give it.
inline float divided(float a, float d, float r) {
  const float q = a * r;
  return std::fma(std::fma(-q, d, a), r, q);
}

// `divided` is cheaper than a division only where FMA is an instruction (a library call
// otherwise, which also keeps the loops scalar).
#if defined(__FMA__) || defined(__aarch64__)
constexpr bool kFmaInstruction = true;
#else
constexpr bool kFmaInstruction = false;
#endif
constexpr float kReciprocal255 = 1.0f / 255.0f;

// The network input x: float32 in [0, 1], or uint8 read as value / 255.0f (bit for bit what
// the pure-MLX path computes with astype(float32) / 255), which spares a tile two full-size
// float copies of its window; then standardised as the pure-MLX path does, (x - mean) / std.
struct Image {
  const void* data = nullptr;
  bool u8 = false;
  int channels = 3;
  InputNorm norm{};
  // uint8 input: the float each byte value becomes, per channel ([c * 256 + value]), by the
  // same float operations as gather's (value / 255, then standardised when on)
  std::shared_ptr<const std::vector<float>> values;
  // uint8 input: gather's two divisions done by `divided` (vector divisions are slow), which
  // gives every entry of `values` bit for bit (all 256 bytes of each channel checked, image_of)
  bool by_products = false;
  std::array<float, 3> r_std{1.0f, 1.0f, 1.0f};  // 1 / norm.std
  // out[m] = x[offset + m * step] for m in [0, n), one channel (step is a multiple of the
  // channel count); GigaUNet's steps (3, 12) are constants
  void gather(long offset, long step, int n, float* out) const {
    if (step == 3) gather_as<3>(offset, step, n, out);
    else if (step == 12) gather_as<12>(offset, step, n, out);
    else gather_as<0>(offset, step, n, out);
    if (norm.on) {
      const int c = static_cast<int>(offset % channels);
      const float mean = norm.mean[c], sd = norm.std[c], r = r_std[c];
      if (by_products) {
        for (int m = 0; m < n; ++m) out[m] = divided(out[m] - mean, sd, r);
      } else {
        for (int m = 0; m < n; ++m) out[m] = (out[m] - mean) / sd;
      }
    }
  }

  // out[m] = the float of byte src[m * kStride] of channel c, by gather's arithmetic as
  // corrected products: only where by_products
  template <int kStride>
  void bytes_by_products(const uint8_t* src, int c, int n, float* out) const {
    const float mean = norm.on ? norm.mean[c] : 0.0f, sd = norm.std[c], r = r_std[c];
    for (int m = 0; m < n; ++m) {
      const float x = divided(static_cast<float>(src[m * kStride]), 255.0f, kReciprocal255);
      out[m] = norm.on ? divided(x - mean, sd, r) : x;
    }
  }

  // gather of all channels of n pixels from `offset` (a pixel's first channel): channel c to
  // out + c * out_stride. uint8 RGB with the products splits each channel's bytes off first
  // and converts them in vectors (a stride-3 gather keeps the conversion scalar); the same
  // arithmetic as gather's, so the same bits
  void gather_channels(long offset, int n, float* out, long out_stride) const {
    if (!(u8 && by_products && channels == 3)) {
      for (int c = 0; c < channels; ++c) gather(offset + c, channels, n, out + c * out_stride);
      return;
    }
    thread_local std::vector<uint8_t> lines;
    lines.resize(3 * static_cast<size_t>(n));
    const auto* src = static_cast<const uint8_t*>(data) + offset;
    uint8_t* red = lines.data();
    uint8_t* green = red + n;
    uint8_t* blue = green + n;
    for (int m = 0; m < n; ++m) {
      red[m] = src[3 * m], green[m] = src[3 * m + 1], blue[m] = src[3 * m + 2];
    }
    for (int c = 0; c < 3; ++c) bytes_by_products<1>(red + c * n, c, n, out + c * out_stride);
  }

  // gather's values looked up by byte instead of computed by divisions: for strides the
  // compiler cannot vectorise (down1's phase planes, 12 bytes apart, where the products are
  // not used), the scalar loads cost the same either way and the divisions are saved
  void gather_looked_up(long offset, long step, int n, float* out) const {
    if (!u8) return gather(offset, step, n, out);
    const auto* src = static_cast<const uint8_t*>(data) + offset;
    const float* value = values->data() + (offset % channels) * 256;
    for (int m = 0; m < n; ++m) out[m] = value[src[m * step]];
  }

 private:
  template <int kStep>
  void gather_as(long offset, long step, int n, float* out) const {
    const long stride = kStep ? kStep : step;
    if (u8 && by_products) {
      const auto* src = static_cast<const uint8_t*>(data) + offset;
      for (int m = 0; m < n; ++m) {
        out[m] = divided(static_cast<float>(src[m * stride]), 255.0f, kReciprocal255);
      }
    } else if (u8) {
      const auto* src = static_cast<const uint8_t*>(data) + offset;
      for (int m = 0; m < n; ++m) out[m] = static_cast<float>(src[m * stride]) / 255.0f;
    } else {
      const auto* src = static_cast<const float*>(data) + offset;
      for (int m = 0; m < n; ++m) out[m] = src[m * stride];
    }
  }
};

// Image::values: value / 255.0f for each byte value of each channel, then (x - mean) / std
// when standardised.
inline std::shared_ptr<const std::vector<float>> byte_values(int channels, const InputNorm& norm) {
  auto table = std::make_shared<std::vector<float>>(static_cast<size_t>(channels) * 256);
  for (int c = 0; c < channels; ++c)
    for (int v = 0; v < 256; ++v) {
      float x = static_cast<float>(v) / 255.0f;
      if (norm.on) x = (x - norm.mean[c]) / norm.std[c];
      (*table)[c * 256 + v] = x;
    }
  return table;
}

// Whether gather's arithmetic by `divided` gives every entry of `values` bit for bit: the
// input has only 256 values per channel, so checking them all decides it for this image.
inline bool products_give(const Image& x) {
  if (!kFmaInstruction || !x.u8) return false;
  const auto same = [](float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; };
  for (int c = 0; c < x.channels; ++c)
    for (int v = 0; v < 256; ++v) {
      float got = divided(static_cast<float>(v), 255.0f, kReciprocal255);
      if (x.norm.on) got = divided(got - x.norm.mean[c], x.norm.std[c], x.r_std[c]);
      if (!same(got, (*x.values)[c * 256 + v])) return false;
    }
  return true;
}

inline Image image_of(const mx::array& x, const InputNorm& norm = {}) {
  require(!norm.on || x.shape(3) == 3, "a standardised input must have 3 channels");
  const bool u8 = x.dtype() == mx::uint8;
  const int channels = static_cast<int>(x.shape(3));
  Image image{u8 ? static_cast<const void*>(x.data<uint8_t>())
                  : static_cast<const void*>(x.data<float>()),
              u8, channels, norm, u8 ? byte_values(channels, norm) : nullptr};
  for (int c = 0; c < 3; ++c) image.r_std[c] = 1.0f / norm.std[c];
  image.by_products = products_give(image);
  return image;
}

// The input image: uint8 (0..255) or float32, row-contiguous.
inline mx::array as_dense_image(const mx::array& x, const mx::Stream& s) {
  if (x.dtype() != mx::float32 && x.dtype() != mx::uint8) {
    throw std::invalid_argument("gigamlx_fused: the image x must be uint8 or float32");
  }
  return mx::contiguous(x, false, s);
}

// Allocate an output and hand its float pointer back.
inline float* allocate(mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  return out.data<float>();
}

}  // namespace gigamlx
