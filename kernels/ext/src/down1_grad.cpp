// Backward of the fused first layer: weight and bias gradients only (x is data), parallel
// over output rows with per-worker sums: float along a row, double across rows and workers.
#include "common.h"
#include "down1_rows.h"

namespace gigamlx {
namespace {

float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

// Row stride of the cotangent buffer: whole blocks, so block loops may read past Wo.
int g_stride(const Down1Dims& d) { return (d.out_w() + kBlock - 1) / kBlock * kBlock; }

struct Worker {
  explicit Worker(const Down1Dims& d)
      : ring(d), g(static_cast<size_t>(d.c_out) * g_stride(d), 0.0f),
        weight(static_cast<size_t>(d.c_out) * d.k * d.k * d.c_in), bias(d.c_out) {}
  PlaneRing ring;
  // [c_out][g_stride]: cotangent of the pre-activations, one output row; zero past Wo
  std::vector<float> g;
  std::vector<double> weight, bias;
};

// g[co][j] = d_out where out > 0 (ReLU and zeroing mask); false when the row is all zero.
bool masked_row(const Down1Dims& d, const float* out_row, const float* d_row, float* g) {
  const int Wo = d.out_w(), gs = g_stride(d);
  bool any = false;
  for (int co = 0; co < d.c_out; ++co)
    for (int j = 0; j < Wo; ++j) {
      const int k = j * d.c_out + co;
      g[co * gs + j] = out_row[k] > 0.0f ? d_row[k] : 0.0f;
      any = any || out_row[k] > 0.0f;
    }
  return any;
}

// Two outputs: weight sums of one input row's k * c_in taps, kGroup taps at a time with their
// sums in registers, so each load of the cotangent serves kGroup taps and each load of x both
// outputs. Float along the row, added to the double totals dw[co * w_step + tap].
constexpr int kGroup = 8;

void weight_row_2(const Down1Dims& d, const float* planes, const float* g, double* dw,
                  long w_step) {
  const int M = d.plane(), gs = g_stride(d), taps = d.k * d.c_in;
  for (int t0 = 0; t0 < taps; t0 += kGroup) {
    const int n_t = std::min(kGroup, taps - t0);
    const float* src[kGroup];
    for (int t = 0; t < kGroup; ++t) {
      const int tap = t0 + std::min(t, n_t - 1), kx = tap / d.c_in, c = tap % d.c_in;
      src[t] = planes + ((kx % d.s) * d.c_in + c) * M + kx / d.s;
    }
    Vec a0[kGroup] = {}, a1[kGroup] = {};
    for (int j = 0; j < gs; j += kLanes) {
      const Vec g0 = load(g + j), g1 = load(g + gs + j);
#pragma GCC unroll 8
      for (int t = 0; t < kGroup; ++t) {
        const Vec x = load(src[t] + j);
        a0[t] += g0 * x;
        a1[t] += g1 * x;
      }
    }
    for (int t = 0; t < n_t; ++t) {
      float s0 = 0.0f, s1 = 0.0f;
      for (int l = 0; l < kLanes; ++l) {
        s0 += a0[t][l];
        s1 += a1[t][l];
      }
      dw[t0 + t] += s0;
      dw[w_step + t0 + t] += s1;
    }
  }
}

void backward_row(const Down1Args& a, int n, int i, Worker& wk) {
  const Down1Dims& d = a.d;
  const int Wo = d.out_w(), M = d.plane(), gs = g_stride(d);
  const long w_step = static_cast<long>(d.k) * d.k * d.c_in;
  for (int co = 0; co < d.c_out; ++co) {
    const float* g = wk.g.data() + co * gs;
    float bias = 0.0f;
#pragma omp simd reduction(+ : bias)
    for (int j = 0; j < Wo; ++j) bias += g[j];
    wk.bias[co] += bias;
  }
  for (int ky = 0; ky < d.k; ++ky) {
    const int y = d.s * i + ky - d.p;
    if (y < 0 || y >= d.h) continue;
    const float* planes = wk.ring.get(a.x, n, y);
    double* dw = wk.weight.data() + ky * d.k * d.c_in;
    if (d.c_out == 2) {
      weight_row_2(d, planes, wk.g.data(), dw, w_step);
      continue;
    }
    for (int kx = 0; kx < d.k; ++kx)
      for (int c = 0; c < d.c_in; ++c) {
        const float* src = planes + ((kx % d.s) * d.c_in + c) * M + kx / d.s;
        for (int co = 0; co < d.c_out; ++co)
          dw[co * w_step + kx * d.c_in + c] += dot(wk.g.data() + co * gs, src, Wo);
      }
  }
}

}  // namespace

void down1_backward(const Down1Args& a, const float* out, const float* d_out,
                    std::vector<double>& d_weight, std::vector<double>& d_bias) {
  const Down1Dims& d = a.d;
  const int Ho = d.out_h(), Wo = d.out_w(), total = d.n * Ho;
  constexpr int kRowsPerChunk = 8, kChunksPerClaim = 4;  // a claim's chunks share input rows
  // per chunk: d weight then d bias, summed in chunk order below
  std::vector<std::vector<double>> parts((total + kRowsPerChunk - 1) / kRowsPerChunk);
  auto make = [&] { return Worker(d); };
  parallel_chunks(total, kRowsPerChunk, make, [&](Worker& wk, int begin, int end, int chunk) {
    std::fill(wk.weight.begin(), wk.weight.end(), 0.0);
    std::fill(wk.bias.begin(), wk.bias.end(), 0.0);
    for (int r = begin; r < end; ++r) {
      const long offset = static_cast<long>(r) * Wo * d.c_out;
      if (masked_row(d, out + offset, d_out + offset, wk.g.data())) {
        backward_row(a, r / Ho, r % Ho, wk);
      }
    }
    parts[chunk] = wk.weight;
    parts[chunk].insert(parts[chunk].end(), wk.bias.begin(), wk.bias.end());
  }, kChunksPerClaim);
  const std::vector<double> total_sums = sum_chunks(parts);
  const size_t n_weight = static_cast<size_t>(d.c_out) * d.k * d.k * d.c_in;
  d_weight.assign(total_sums.begin(), total_sums.begin() + n_weight);
  d_bias.assign(total_sums.begin() + n_weight, total_sums.end());
}

}  // namespace gigamlx
