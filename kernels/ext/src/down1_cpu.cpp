// Row kernels of the fused first layer. Each input row is split once into phase planes
// [s][c_in][Wo + k/s - 1] (plane[ph][c][m] = x[s*m + ph - pad][c], zero outside the image), so
// tap (kx, c) of every output column j reads plane[kx % s][c][j + kx / s]: contiguous in j,
// and every inner loop is a vectorizable pass over an output row.
//
// Precision: the k * k * c_in products of an output are summed in float one input row at a
// time (k * c_in of them) and the row sums in double, then rounded once. A single float chain
// over all taps erred ~3x more than a BLAS gemm, and every ulp moves the ReLU decisions that
// lie within rounding of zero downstream, each of which shifts the coarse layers' gradients
// (docs/exactness.md).
#include "common.h"
#include "down1_rows.h"

namespace gigamlx {
namespace {

constexpr int kRowsPerChunk = 8;   // output rows per chunk
constexpr int kChunksPerClaim = 4;  // consecutive chunks a thread claims at a time

bool row_inside(const Down1Args& a, int i) { return i >= a.keep[0] && i < a.keep[2]; }

// acc[co][j] += sum over (ky, kx, c) of weight * x: the pre-activations of output row (n, i),
// float within a kernel row (in `row`, c_out * Wo floats), double across kernel rows.
void conv_row(const Down1Args& a, PlaneRing& ring, int n, int i, std::vector<float>& row,
              double* acc) {
  const Down1Dims& d = a.d;
  const int Wo = d.out_w(), M = d.plane();
  row.resize(static_cast<size_t>(d.c_out) * Wo);
  for (int ky = 0; ky < d.k; ++ky) {
    const int y = d.s * i + ky - d.p;
    if (y < 0 || y >= d.h) continue;  // the zero padding adds nothing
    const float* planes = ring.get(a.x, n, y);
    std::fill(row.begin(), row.end(), 0.0f);
    for (int kx = 0; kx < d.k; ++kx)
      for (int c = 0; c < d.c_in; ++c) {
        const float* src = planes + ((kx % d.s) * d.c_in + c) * M + kx / d.s;
        const float* wp = a.weight + (ky * d.k + kx) * d.c_in + c;
        for (int co = 0; co < d.c_out; ++co) {
          const float wv = wp[co * static_cast<long>(d.k) * d.k * d.c_in];
          float* dst = row.data() + co * Wo;
#pragma omp simd
          for (int j = 0; j < Wo; ++j) dst[j] += wv * src[j];
        }
      }
    for (size_t m = 0; m < row.size(); ++m) acc[m] += row[m];
  }
}

// GigaUNet's down1 (two outputs), kGroup output rows at a time: each input row feeds up to k/s
// of them, so one load of x serves both outputs of every row it reaches (up to 8 FMAs), and
// the 2 x kGroup x 2 vectors of sums of a 32-column block stay in registers.
constexpr int kGroup = 4, kGroupVecs = 2, kGroupBlock = kGroupVecs * kLanes;

struct GroupRows {
  const float* row;  // phase planes of one input row
  const float* w;    // (w0, w1) per tap for kernel row ky = q - s * r of output row r (r_lo)
  int r_lo, r_hi;    // output rows of the group it reaches
  long w_step;       // from output row r to r + 1: the kernel row moves back by s
};

// The float sums of one input row's taps for output rows R_LO..R_HI, added to the double
// totals `acc` ([row][co][column]).
template <int R_LO, int R_HI>
void group_taps(const GroupRows& g, const int* offset, int taps, int j0,
                double (&acc)[kGroup][2][kGroupBlock]) {
  Vec sums[kGroup][2][kGroupVecs] = {};  // local: stays in registers
  for (int t = 0; t < taps; ++t) {
    const float* src = g.row + offset[t] + j0;
    Vec x[kGroupVecs];
    for (int v = 0; v < kGroupVecs; ++v) x[v] = load(src + v * kLanes);
#pragma GCC unroll 4
    for (int r = R_LO; r <= R_HI; ++r) {
      const float* w = g.w + (r - R_LO) * g.w_step + 2 * t;
      for (int v = 0; v < kGroupVecs; ++v) {
        sums[r][0][v] += w[0] * x[v];
        sums[r][1][v] += w[1] * x[v];
      }
    }
  }
  for (int r = R_LO; r <= R_HI; ++r)
    for (int co = 0; co < 2; ++co)
      for (int v = 0; v < kGroupVecs; ++v)
        for (int l = 0; l < kLanes; ++l) acc[r][co][v * kLanes + l] += sums[r][co][v][l];
}

using GroupFn = void (*)(const GroupRows&, const int*, int, int,
                         double (&)[kGroup][2][kGroupBlock]);

// group_taps<r_lo, r_hi> for 0 <= r_lo <= r_hi < kGroup.
GroupFn group_dispatch(int r_lo, int r_hi) {
  static const GroupFn table[kGroup][kGroup] = {
      {&group_taps<0, 0>, &group_taps<0, 1>, &group_taps<0, 2>, &group_taps<0, 3>},
      {nullptr, &group_taps<1, 1>, &group_taps<1, 2>, &group_taps<1, 3>},
      {nullptr, nullptr, &group_taps<2, 2>, &group_taps<2, 3>},
      {nullptr, nullptr, nullptr, &group_taps<3, 3>}};
  return table[r_lo][r_hi];
}

// acc[r][co][j] += pre-activation sums of output rows i0 + r (r < kGroup) of image n.
void conv_group_2(const Down1Args& a, PlaneRing& ring, int n, int i0, std::vector<float>& wpair,
                  double* acc) {
  const Down1Dims& d = a.d;
  const int Wo = d.out_w(), M = d.plane(), taps = d.k * d.c_in, per_out = d.k * taps;
  int offset[256];
  for (int kx = 0; kx < d.k; ++kx)
    for (int c = 0; c < d.c_in; ++c)
      offset[kx * d.c_in + c] = ((kx % d.s) * d.c_in + c) * M + kx / d.s;
  wpair.resize(2 * static_cast<size_t>(per_out));  // [ky][tap][co]
  for (int ky = 0; ky < d.k; ++ky)
    for (int t = 0; t < taps; ++t)
      for (int co = 0; co < 2; ++co)
        wpair[2 * (ky * taps + t) + co] = a.weight[co * per_out + ky * taps + t];
  std::vector<GroupRows> rows;
  for (int q = 0; q < d.k + d.s * (kGroup - 1); ++q) {
    const int y = d.s * i0 + q - d.p;
    if (y < 0 || y >= d.h) continue;  // the zero padding adds nothing
    const int r_lo = std::max(0, (q - d.k + d.s) / d.s), r_hi = std::min(kGroup - 1, q / d.s);
    const int ky = q - d.s * r_lo;  // kernel row for output row r_lo
    rows.push_back({ring.get(a.x, n, y), &wpair[2 * ky * taps], r_lo, r_hi,
                    -2L * d.s * taps});
  }
  for (int j0 = 0; j0 < Wo; j0 += kGroupBlock) {
    double sums[kGroup][2][kGroupBlock] = {};
    for (const GroupRows& g : rows) group_dispatch(g.r_lo, g.r_hi)(g, offset, taps, j0, sums);
    const int n_j = std::min(kGroupBlock, Wo - j0);
    for (int r = 0; r < kGroup; ++r)
      for (int co = 0; co < 2; ++co) {
        double* dst = acc + (static_cast<size_t>(r) * 2 + co) * Wo + j0;
        for (int j = 0; j < n_j; ++j) dst[j] += sums[r][co][j];
      }
  }
}

}  // namespace

// Rows [i0, i0 + count) of image n: bias + sums rounded once, ReLU, zero outside keep,
// channels-last.
void write_rows(const Down1Args& a, const float* bias, const double* acc, int n, int i0,
                int count, float* out) {
  const Down1Dims& d = a.d;
  const int Ho = d.out_h(), Wo = d.out_w();
  const int x_lo = std::max(0, a.keep[1]), x_hi = std::min(Wo, a.keep[3]);
  for (int r = 0; r < count; ++r) {
    float* out_row = out + (static_cast<long>(n) * Ho + i0 + r) * Wo * d.c_out;
    std::fill(out_row, out_row + Wo * d.c_out, 0.0f);
    if (!row_inside(a, i0 + r)) continue;
    for (int j = x_lo; j < x_hi; ++j)
      for (int co = 0; co < d.c_out; ++co)
        out_row[j * d.c_out + co] = std::max(
            static_cast<float>(bias[co] + acc[(r * d.c_out + co) * Wo + j]), 0.0f);
  }
}

void down1_forward(const Down1Args& a, const float* bias, float* out) {
  const Down1Dims& d = a.d;
  const int Ho = d.out_h(), Wo = d.out_w(), total = d.n * Ho;
  const bool grouped = d.c_out == 2 && d.k * d.c_in <= 256;  // offset[] holds 256 taps
  const int group = grouped ? kGroup : 1;
  struct Scratch {
    PlaneRing ring;
    std::vector<double> acc;
    std::vector<float> wpair, row;
  };
  auto make = [&] {
    const size_t sums = static_cast<size_t>(group) * d.c_out * Wo;
    return Scratch{PlaneRing(d, d.k + d.s * (group - 1)), std::vector<double>(sums), {}, {}};
  };
  parallel_chunks(total, kRowsPerChunk, make, [&](Scratch& st, int begin, int end, int) {
    for (int r = begin; r < end;) {
      const int n = r / Ho, i0 = r % Ho, count = std::min({group, end - r, Ho - i0});
      std::fill(st.acc.begin(), st.acc.end(), 0.0);
      const bool any = i0 < a.keep[2] && i0 + count > a.keep[0];  // a row inside keep
      if (any && grouped) {
        conv_group_2(a, st.ring, n, i0, st.wpair, st.acc.data());
      } else if (any) {
        conv_row(a, st.ring, n, i0, st.row, st.acc.data());
      }
      write_rows(a, bias, st.acc.data(), n, i0, count, out);
      r += count;
    }
  }, kChunksPerClaim);
}

}  // namespace gigamlx
