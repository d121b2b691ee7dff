// Row kernels of the fused first layer. Each input row is split once into phase planes
// [s][c_in][Wo + k/s - 1] (plane[ph][c][m] = x[s*m + ph - pad][c], zero outside the image), so
// tap (kx, c) of every output column j reads plane[kx % s][c][j + kx / s]: contiguous in j,
// and every inner loop is a vectorizable pass over an output row.
#include "common.h"
#include "down1_rows.h"

namespace gigamlx {
namespace {

constexpr int kRowsPerChunk = 8;  // output rows a thread claims at a time

bool row_inside(const Down1Args& a, int i) { return i >= a.keep[0] && i < a.keep[2]; }

// acc[co][j] += sum over (ky, kx, c) of weight * x: the pre-activations of output row (n, i).
void conv_row(const Down1Args& a, PlaneRing& ring, int n, int i, float* acc) {
  const Down1Dims& d = a.d;
  const int Wo = d.out_w(), M = d.plane();
  for (int ky = 0; ky < d.k; ++ky) {
    const int y = d.s * i + ky - d.p;
    if (y < 0 || y >= d.h) continue;  // the zero padding adds nothing
    const float* planes = ring.get(a.x, n, y);
    for (int kx = 0; kx < d.k; ++kx)
      for (int c = 0; c < d.c_in; ++c) {
        const float* src = planes + ((kx % d.s) * d.c_in + c) * M + kx / d.s;
        const float* wp = a.weight + (ky * d.k + kx) * d.c_in + c;
        for (int co = 0; co < d.c_out; ++co) {
          const float wv = wp[co * static_cast<long>(d.k) * d.k * d.c_in];
          float* dst = acc + co * Wo;
#pragma omp simd
          for (int j = 0; j < Wo; ++j) dst[j] += wv * src[j];
        }
      }
  }
}

// GigaUNet's down1 (two outputs): blocks of kBlock output columns whose sums stay in
// registers across all k * k * c_in taps; each load of x feeds both outputs.
// Sums of one block: taps t of row r read rows[r] + offset[t] + j0 with weights w[r][t][2].
void block_sums(const float* const* rows, int n_rows, const int* offset, int n_taps,
                const float* w, int j0, Vec s0[kVecs], Vec s1[kVecs]) {
  Vec a0[kVecs] = {}, a1[kVecs] = {};
  for (int r = 0; r < n_rows; ++r) {
    const float* row = rows[r] + j0;
    const float* wr = w + 2 * r * n_taps;
    for (int t = 0; t < n_taps; ++t) {
      const float* src = row + offset[t];
      const float w0 = wr[2 * t], w1 = wr[2 * t + 1];
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) {
        const Vec x = load(src + v * kLanes);
        a0[v] += w0 * x;
        a1[v] += w1 * x;
      }
    }
  }
  for (int v = 0; v < kVecs; ++v) {
    s0[v] = a0[v];
    s1[v] = a1[v];
  }
}

void conv_row_2(const Down1Args& a, PlaneRing& ring, int n, int i, float* acc) {
  const Down1Dims& d = a.d;
  const int Wo = d.out_w(), M = d.plane(), taps = d.k * d.c_in, per_out = d.k * taps;
  std::vector<int> offset(taps);
  for (int kx = 0; kx < d.k; ++kx)
    for (int c = 0; c < d.c_in; ++c)
      offset[kx * d.c_in + c] = ((kx % d.s) * d.c_in + c) * M + kx / d.s;
  // the rows inside the image and their weights, (w0, w1) interleaved per tap
  std::vector<const float*> rows;
  std::vector<float> w;
  for (int ky = 0; ky < d.k; ++ky) {
    const int y = d.s * i + ky - d.p;
    if (y < 0 || y >= d.h) continue;  // the zero padding adds nothing
    rows.push_back(ring.get(a.x, n, y));
    for (int t = 0; t < taps; ++t) {
      w.push_back(a.weight[ky * taps + t]);
      w.push_back(a.weight[per_out + ky * taps + t]);
    }
  }
  for (int j0 = 0; j0 < Wo; j0 += kBlock) {
    Vec s0[kVecs], s1[kVecs];
    block_sums(rows.data(), static_cast<int>(rows.size()), offset.data(), taps, w.data(), j0,
               s0, s1);
    float f0[kBlock], f1[kBlock];
    std::memcpy(f0, s0, sizeof(f0));
    std::memcpy(f1, s1, sizeof(f1));
    const int n_j = std::min(kBlock, Wo - j0);
    for (int j = 0; j < n_j; ++j) {
      acc[j0 + j] += f0[j];
      acc[Wo + j0 + j] += f1[j];
    }
  }
}

}  // namespace

void down1_forward(const Down1Args& a, const float* bias, float* out) {
  const Down1Dims& d = a.d;
  const int Ho = d.out_h(), Wo = d.out_w(), total = d.n * Ho;
  const int x_lo = std::max(0, a.keep[1]), x_hi = std::min(Wo, a.keep[3]);
  struct Scratch {
    PlaneRing ring;
    std::vector<float> acc;
  };
  auto make = [&] { return Scratch{PlaneRing(d), std::vector<float>(size_t(d.c_out) * Wo)}; };
  parallel_chunks(total, kRowsPerChunk, make, [&](Scratch& st, int begin, int end, int) {
    PlaneRing& ring = st.ring;
    std::vector<float>& acc = st.acc;
    for (int r = begin; r < end; ++r) {
      const int n = r / Ho, i = r % Ho;
      float* out_row = out + static_cast<long>(r) * Wo * d.c_out;
      std::fill(out_row, out_row + Wo * d.c_out, 0.0f);
      if (!row_inside(a, i) || x_lo >= x_hi) continue;
      for (int co = 0; co < d.c_out; ++co)
        std::fill(acc.begin() + co * Wo, acc.begin() + (co + 1) * Wo, bias[co]);
      if (d.c_out == 2) {
        conv_row_2(a, ring, n, i, acc.data());
      } else {
        conv_row(a, ring, n, i, acc.data());
      }
      for (int j = x_lo; j < x_hi; ++j)
        for (int co = 0; co < d.c_out; ++co)
          out_row[j * d.c_out + co] = std::max(acc[co * Wo + j], 0.0f);
    }
  });
}

}  // namespace gigamlx
