// The middle's layers as row loops over vectors of kLanes floats. Convs: a kernel row's
// k * c taps of one output are contiguous in a zero-padded copy of the input row, so each
// output is a few vector products; conv-transposes (kernel == stride): an input pixel's
// s x s block is s rows of s * c_out contiguous outputs, each row a few vector FMAs.
// Weight and bias gradients: float along a row, double across rows, summed in row order (the
// same bits on any number of threads).
#include "middle_cpu.h"

#include <type_traits>

#include "vec.h"

namespace gigamlx {
namespace {

int vectors_for(int floats) { return (floats + kLanes - 1) / kLanes; }

// f(std::integral_constant<int, V>) with V = vecs for the common 1 and 2 (loops over a
// compile-time count unroll into registers), else V = 0: the loops read the count at run time.
template <class F>
void with_vecs(int vecs, F&& f) {
  if (vecs == 1) f(std::integral_constant<int, 1>{});
  else if (vecs == 2) f(std::integral_constant<int, 2>{});
  else f(std::integral_constant<int, 0>{});
}

// The sum of a vector's lanes as a tree of halves (a chain of kLanes adds waits on each one).
using Half = float __attribute__((vector_size(sizeof(Vec) / 2)));
using Quarter = float __attribute__((vector_size(sizeof(Vec) / 4)));

float tree_sum(const Vec& v) {
  Half lo, hi;
  std::memcpy(&lo, &v, sizeof(Half));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(Half), sizeof(Half));
  const Half h = lo + hi;
  Quarter a, b;
  std::memcpy(&a, &h, sizeof(Quarter));
  std::memcpy(&b, reinterpret_cast<const char*>(&h) + sizeof(Quarter), sizeof(Quarter));
  const Quarter q = a + b;
  return (q[0] + q[2]) + (q[1] + q[3]);
}

// Outputs whose vectors overlap (neighbours' kernel rows share inputs) are visited in
// `passes` rounds of every passes-th one, so a vector is never read right after a store that
// overlaps it (the load would wait for the store to drain instead of forwarding from it).
int overlap_passes(int vecs, int step_floats) {
  return std::max(1, (vecs * kLanes + step_floats - 1) / step_floats);
}

bool rows_kept(const Keep& keep, int y) { return y >= keep[0] && y < keep[2]; }

constexpr int kMaxTapVecs = 8;  // k * c up to 128 taps per kernel row
constexpr int kMaxTapRows = 8;  // k / s: output rows whose kernel covers one input row

// A conv's weight (c_out, k, k, c) as each kernel row's k * c taps in whole vectors, zero
// past the taps: tap[(co * k + a) * vecs + v].
struct ConvTaps {
  int k, c, vecs;
  std::vector<Vec> tap;
  ConvTaps(const float* w, int c_out, int k_, int c_)
      : k(k_), c(c_), vecs(vectors_for(k_ * c_)),
        tap(static_cast<size_t>(c_out) * k_ * vectors_for(k_ * c_), Vec{}) {
    const int row = k * c;
    for (int co = 0; co < c_out; ++co)
      for (int a = 0; a < k; ++a)
        for (int e = 0; e < row; ++e)
          tap[(co * k + a) * vecs + e / kLanes][e % kLanes] = w[(co * k + a) * row + e];
  }
  const Vec* of(int co, int a) const { return tap.data() + (co * k + a) * vecs; }
};

// Floats of one zero-padded input row: the `span` columns from -pad that the outputs read,
// and one vector more so that a kernel row's last vector may read past them.
size_t padded_row_floats(int span, int c) { return static_cast<size_t>(span) * c + kLanes; }

// dst = row y of x (batch b) over columns [-pad, span - pad), zero outside x (or for y outside).
void fill_row(const Act& x, int b, int y, int pad, int span, float* dst) {
  const size_t floats = padded_row_floats(span, x.c);
  std::fill(dst, dst + floats, 0.0f);
  if (y < 0 || y >= x.h) return;
  const int lo = std::max(0, pad), hi = std::min(span, x.w + pad);  // padded cols inside x
  if (x.pixel == x.c) {
    if (hi > lo) std::memcpy(dst + lo * x.c, x.at(b, y, lo - pad), sizeof(float) * (hi - lo) * x.c);
    return;
  }
  for (int j = lo; j < hi; ++j)
    std::memcpy(dst + j * x.c, x.at(b, y, j - pad), sizeof(float) * x.c);
}

// Row Y of the cotangent dy where y > 0 (the ReLU and zeroing mask), dense: g[X * c + co].
void masked_row(const Act& y, const Act& dy, int b, int Y, float* g) {
  const float *yv = y.at(b, Y, 0), *dv = dy.at(b, Y, 0);
  if (y.pixel == y.c && dy.pixel == y.c) {
    for (int e = 0; e < y.w * y.c; ++e) g[e] = yv[e] > 0.0f ? dv[e] : 0.0f;
    return;
  }
  for (int X = 0; X < y.w; ++X)
    for (int co = 0; co < y.c; ++co)
      g[X * y.c + co] = yv[X * y.pixel + co] > 0.0f ? dv[X * dy.pixel + co] : 0.0f;
}

// The masked cotangent of a whole activation, dense (n, h, w, c).
std::vector<float> masked(const Act& y, const Act& dy) {
  std::vector<float> g(static_cast<size_t>(y.n) * y.h * y.w * y.c);
  parallel_chunks(y.n * y.h, 8, [] { return 0; }, [&](int, int r0, int r1, int) {
    for (int r = r0; r < r1; ++r)
      masked_row(y, dy, r / y.h, r % y.h, g.data() + static_cast<size_t>(r) * y.w * y.c);
  });
  return g;
}

// Row Y of y = relu(v) over the columns [lo, hi), 0 elsewhere; v dense: v[X * c + co]. With
// `skip`, channels [y.c, y.pixel) of each pixel are skip's (a join, written in the same pass).
void relu_row(const float* v, int lo, int hi, const Act& y, int b, int Y, const Act* skip) {
  float* out = y.at(b, Y, 0);
  if (y.pixel == y.c) {
    std::fill(out, out + lo * y.c, 0.0f);
    for (int e = lo * y.c; e < hi * y.c; ++e) out[e] = v[e] > 0.0f ? v[e] : 0.0f;
    std::fill(out + std::max(lo, hi) * y.c, out + y.w * y.c, 0.0f);
    return;
  }
  const float* tail = skip == nullptr ? nullptr : skip->at(b, Y, 0);
  for (int X = 0; X < y.w; ++X) {
    for (int co = 0; co < y.c; ++co) {
      const float a = v[X * y.c + co];
      out[X * y.pixel + co] = X >= lo && X < hi && a > 0.0f ? a : 0.0f;
    }
    if (tail != nullptr)
      for (int c = 0; c < skip->c; ++c) out[X * y.pixel + y.c + c] = tail[X * skip->pixel + c];
  }
}

// Each row's double sums, then added in row order into dw and db.
void add_parts(const std::vector<std::vector<double>>& parts, double* dw, size_t w_size,
               double* db) {
  const std::vector<double> total = sum_chunks(parts);
  if (total.empty()) return;
  for (size_t e = 0; e < w_size; ++e) dw[e] += total[e];
  for (size_t e = w_size; e < total.size(); ++e) db[e - w_size] += total[e];
}

}  // namespace

void conv_forward(const Act& x, const float* w, const float* b, int k, int s, int p,
                  const Keep& keep, const Act& y) {
  const ConvTaps taps(w, y.c, k, x.c);
  const int span = (y.w - 1) * s + k;
  const size_t row_floats = padded_row_floats(span, x.c);
  const int x_lo = std::max(0, keep[1]), x_hi = std::min(y.w, keep[3]);
  auto make = [&] { return std::vector<float>(k * row_floats); };
  with_vecs(taps.vecs, [&](auto fixed) {
    const int nv = fixed() ? fixed() : taps.vecs;
    parallel_chunks(y.n * y.h, 1, make, [&](std::vector<float>& rows, int r0, int r1, int) {
      for (int r = r0; r < r1; ++r) {
        const int bn = r / y.h, yo = r % y.h;
        const bool kept = rows_kept(keep, yo) && x_lo < x_hi;
        for (int xo = 0; xo < y.w; ++xo)  // outside the kept box: zero
          if (!kept || xo < x_lo || xo >= x_hi)
            std::fill(y.at(bn, yo, xo), y.at(bn, yo, xo) + y.c, 0.0f);
        if (!kept) continue;
        for (int a = 0; a < k; ++a)
          fill_row(x, bn, yo * s - p + a, p, span, rows.data() + a * row_floats);
        for (int xo = x_lo; xo < x_hi; ++xo) {
          float* out = y.at(bn, yo, xo);
          for (int co = 0; co < y.c; ++co) {
            Vec acc{};
            for (int a = 0; a < k; ++a) {
              const float* seg = rows.data() + a * row_floats + static_cast<size_t>(xo) * s * x.c;
              const Vec* t = taps.of(co, a);
              for (int v = 0; v < nv; ++v) acc += load(seg + v * kLanes) * t[v];
            }
            const float sum = tree_sum(acc) + b[co];
            out[co] = sum > 0.0f ? sum : 0.0f;
          }
        }
      }
    });
  });
}

void conv_backward(const Act& x, const float* w, int k, int s, int p, const Act& y,
                   const Act& dy, const Act& dx, double* dw, double* db, const Act* add) {
  const ConvTaps taps(w, y.c, k, x.c);
  require(taps.vecs <= kMaxTapVecs && k / s <= kMaxTapRows,
          "a conv kernel too large for the middle");
  with_vecs(taps.vecs, [&](auto fixed) {
    const int nv = fixed() ? fixed() : taps.vecs;
    const int span = (y.w - 1) * s + k, row = k * x.c;
    const size_t row_floats = padded_row_floats(span, x.c);
    const std::vector<float> g = masked(y, dy);
    auto g_row = [&](int bn, int yo) {
      return g.data() + (static_cast<size_t>(bn) * y.h + yo) * y.w * y.c;
    };

    // weight and bias: one part per output row
    const size_t w_size = static_cast<size_t>(y.c) * k * row;
    std::vector<std::vector<double>> parts(y.n * y.h);
    struct Rows {
      std::vector<float> input;
      std::vector<Vec> acc;
      std::vector<float> bias;
    };
    auto make = [&] {
      return Rows{std::vector<float>(k * row_floats), std::vector<Vec>(taps.tap.size()),
                  std::vector<float>(y.c)};
    };
    parallel_chunks(y.n * y.h, 1, make, [&](Rows& t, int r0, int r1, int chunk) {
      for (int r = r0; r < r1; ++r) {
        const int bn = r / y.h, yo = r % y.h;
        const float* gr = g_row(bn, yo);
        std::vector<double>& part = parts[chunk];
        part.assign(w_size + y.c, 0.0);  // a row with no gradient adds zeros
        if (std::all_of(gr, gr + y.w * y.c, [](float v) { return v == 0.0f; })) continue;
        for (int a = 0; a < k; ++a)
          fill_row(x, bn, yo * s - p + a, p, span, t.input.data() + a * row_floats);
        std::fill(t.acc.begin(), t.acc.end(), Vec{});
        std::vector<float>& bias = t.bias;
        std::fill(bias.begin(), bias.end(), 0.0f);
        for (int xo = 0; xo < y.w; ++xo)
          for (int co = 0; co < y.c; ++co) {
            const float gv = gr[xo * y.c + co];
            if (gv == 0.0f) continue;
            bias[co] += gv;
            const Vec gs = splat(gv);
            for (int a = 0; a < k; ++a) {
              const float* seg =
                  t.input.data() + a * row_floats + static_cast<size_t>(xo) * s * x.c;
              Vec* acc = t.acc.data() + (co * k + a) * nv;
              for (int v = 0; v < nv; ++v) acc[v] += gs * load(seg + v * kLanes);
            }
          }
        for (int co = 0; co < y.c; ++co) {
          for (int a = 0; a < k; ++a)
            for (int e = 0; e < row; ++e)
              part[(co * k + a) * row + e] = t.acc[(co * k + a) * nv + e / kLanes][e % kLanes];
          part[w_size + co] = bias[co];
        }
      }
    });
    add_parts(parts, dw, w_size, db);

    if (dx.data == nullptr) return;
    // the input's gradient: one input row at a time, from the output rows whose kernel covers it
    parallel_chunks(x.n * x.h, 1, [&] { return std::vector<float>(row_floats); },
                    [&](std::vector<float>& acc, int r0, int r1, int) {
      for (int r = r0; r < r1; ++r) {
        const int bn = r / x.h, yi = r % x.h;
        std::fill(acc.begin(), acc.end(), 0.0f);
        int rows_a[kMaxTapRows], n_rows = 0;  // kernel rows of output rows covering yi
        for (int a = 0; a < k; ++a) {
          const int t = yi + p - a;
          if (t >= 0 && t % s == 0 && t / s < y.h) rows_a[n_rows++] = a;
        }
        const int passes = overlap_passes(nv, s * x.c);
        for (int first = 0; first < passes; ++first)
          for (int xo = first; xo < y.w; xo += passes) {
            Vec sum[kMaxTapVecs] = {};
            for (int i = 0; i < n_rows; ++i) {
              const int a = rows_a[i];
              const float* gr = g_row(bn, (yi + p - a) / s) + xo * y.c;
              for (int co = 0; co < y.c; ++co) {
                const Vec gs = splat(gr[co]);
                const Vec* tap = taps.of(co, a);
                for (int v = 0; v < nv; ++v) sum[v] += gs * tap[v];
              }
            }
            float* seg = acc.data() + static_cast<size_t>(xo) * s * x.c;
            for (int v = 0; v < nv; ++v) store(seg + v * kLanes, load(seg + v * kLanes) + sum[v]);
          }
        for (int xi = 0; xi < x.w; ++xi) {  // columns past the last window get no gradient
          const int j = xi + p;
          float* d = dx.at(bn, yi, xi);
          for (int c = 0; c < x.c; ++c) d[c] = j < span ? acc[j * x.c + c] : 0.0f;
          if (add != nullptr)
            for (int c = 0; c < x.c; ++c) d[c] += add->at(bn, yi, xi)[c];
        }
      }
    });
  });
}

namespace {

// A conv-transpose's weight (c_out, s, s, c_in) as rows of the s x s block: for block row ky
// and input channel ci, the s * c_out outputs (kx, co) in whole vectors:
// tap[(ky * c_in + ci) * vecs + v], lane (kx * c_out + co) % kLanes.
struct BlockTaps {
  int c_in, c_out, s, vecs;
  std::vector<Vec> tap;
  BlockTaps(const float* w, int c_out_, int s_, int c_in_)
      : c_in(c_in_), c_out(c_out_), s(s_), vecs(vectors_for(s_ * c_out_)),
        tap(static_cast<size_t>(s_) * c_in_ * vectors_for(s_ * c_out_), Vec{}) {
    for (int co = 0; co < c_out; ++co)
      for (int ky = 0; ky < s; ++ky)
        for (int kx = 0; kx < s; ++kx)
          for (int ci = 0; ci < c_in; ++ci) {
            const int lane = kx * c_out + co;
            tap[(ky * c_in + ci) * vecs + lane / kLanes][lane % kLanes] =
                w[((co * s + ky) * s + kx) * c_in + ci];
          }
  }
  const Vec* of(int ky, int ci) const { return tap.data() + (ky * c_in + ci) * vecs; }
  // w's index of lane `lane` of block row ky, input channel ci
  size_t weight_index(int ky, int ci, int lane) const {
    const int kx = lane / c_out, co = lane % c_out;
    return ((static_cast<size_t>(co) * s + ky) * s + kx) * c_in + ci;
  }
};

constexpr int kMaxBlockVecs = 4;  // s * c_out up to 64 outputs per block row

}  // namespace

void conv_transpose_forward(const Act& x, const float* w, const float* b, int s,
                            const Keep& keep, const Act& y, const Act* skip) {
  require(skip == nullptr || (y.pixel == y.c + skip->c && skip->h == y.h && skip->w == y.w),
          "a skip written beside a conv-transpose's output must fill its pixels");
  const BlockTaps taps(w, y.c, s, x.c);
  require(taps.vecs <= kMaxBlockVecs, "conv-transpose block rows of more than 64 outputs");
  with_vecs(taps.vecs, [&](auto fixed) {
    const int nv = fixed() ? fixed() : taps.vecs;
    const int lanes = s * y.c;
    Vec bias[kMaxBlockVecs] = {};
    for (int lane = 0; lane < lanes; ++lane) bias[lane / kLanes][lane % kLanes] = b[lane % y.c];
    const int x_lo = std::max(0, keep[1]), x_hi = std::min(y.w, keep[3]);
    // one output row, dense: s * c_out floats per input column, one block's vectors spare
    const size_t row_floats = static_cast<size_t>(x.w) * lanes + kMaxBlockVecs * kLanes;
    auto make = [&] { return std::vector<float>(row_floats); };
    parallel_chunks(y.n * y.h, 4, make, [&](std::vector<float>& row, int r0, int r1, int) {
      for (int r = r0; r < r1; ++r) {
        const int bn = r / y.h, Y = r % y.h, yi = Y / s, ky = Y % s;
        const bool kept = rows_kept(keep, Y) && x_lo < x_hi;
        if (kept)
          for (int xi = 0; xi < x.w; ++xi) {  // a block's spare lanes are overwritten by the next
            Vec acc[kMaxBlockVecs] = {};
            const float* in = x.at(bn, yi, xi);
            for (int ci = 0; ci < x.c; ++ci) {
              const Vec xs = splat(in[ci]);
              const Vec* tap = taps.of(ky, ci);
              for (int v = 0; v < nv; ++v) acc[v] += xs * tap[v];
            }
            float* dst = row.data() + static_cast<size_t>(xi) * lanes;
            for (int v = 0; v < nv; ++v) store(dst + v * kLanes, acc[v] + bias[v]);
          }
        relu_row(row.data(), kept ? x_lo : 0, kept ? x_hi : 0, y, bn, Y, skip);
      }
    });
  });
}

void conv_transpose_backward(const Act& x, const float* w, int s, const Act& y, const Act& dy,
                             const Act& dx, double* dw, double* db) {
  const BlockTaps taps(w, y.c, s, x.c);
  require(taps.vecs <= kMaxBlockVecs, "conv-transpose block rows of more than 64 outputs");
  with_vecs(taps.vecs, [&](auto fixed) {
    const int nv = fixed() ? fixed() : taps.vecs;
    const int lanes = s * y.c, in_vecs = vectors_for(x.c);
    require(in_vecs <= kMaxBlockVecs, "conv-transposes of more than 64 input channels");
    // for the input's gradient, the weight the other way round: for block row ky and output
    // lane, the c_in weights in whole vectors: by_input[(ky * lanes + lane) * in_vecs + v]
    std::vector<Vec> by_input(static_cast<size_t>(s) * lanes * in_vecs, Vec{});
    for (int ky = 0; ky < s; ++ky)
      for (int lane = 0; lane < lanes; ++lane)
        for (int ci = 0; ci < x.c; ++ci)
          by_input[(ky * lanes + lane) * in_vecs + ci / kLanes][ci % kLanes] =
              w[taps.weight_index(ky, ci, lane)];
    const size_t w_size = static_cast<size_t>(y.c) * s * s * x.c;
    // the cotangent of one block row: s * c_out floats per input column, one block spare
    const size_t g_floats = static_cast<size_t>(x.w) * lanes + kMaxBlockVecs * kLanes;
    struct Rows {
      std::vector<float> g;     // [ky][xi * lanes + lane], masked
      std::vector<Vec> weight;  // as BlockTaps::tap
      std::vector<Vec> bias;    // [ky * vecs + v]
    };
    auto make = [&] {
      return Rows{std::vector<float>(s * g_floats), std::vector<Vec>(taps.tap.size()),
                  std::vector<Vec>(static_cast<size_t>(s) * nv)};
    };
    std::vector<std::vector<double>> parts(x.n * x.h);
    parallel_chunks(x.n * x.h, 1, make, [&](Rows& t, int r0, int r1, int chunk) {
      for (int r = r0; r < r1; ++r) {
        const int bn = r / x.h, yi = r % x.h;
        for (int ky = 0; ky < s; ++ky)  // the block rows are the output rows, in order
          masked_row(y, dy, bn, yi * s + ky, t.g.data() + ky * g_floats);
        std::vector<double>& part = parts[chunk];
        part.assign(w_size + y.c, 0.0);
        std::fill(t.weight.begin(), t.weight.end(), Vec{});
        std::fill(t.bias.begin(), t.bias.end(), Vec{});
        for (int xi = 0; xi < x.w; ++xi) {
          const float* in = x.at(bn, yi, xi);
          Vec d_in[kMaxBlockVecs] = {};
          for (int ky = 0; ky < s; ++ky) {
            const float* gb = t.g.data() + ky * g_floats + static_cast<size_t>(xi) * lanes;
            Vec g[kMaxBlockVecs];
            for (int v = 0; v < nv; ++v) {
              g[v] = load(gb + v * kLanes);
              t.bias[ky * nv + v] += g[v];
            }
            for (int ci = 0; ci < x.c; ++ci) {
              const Vec xs = splat(in[ci]);
              Vec* acc = t.weight.data() + (ky * x.c + ci) * nv;
              for (int v = 0; v < nv; ++v) acc[v] += xs * g[v];
            }
            for (int lane = 0; lane < lanes; ++lane) {
              const Vec gs = splat(gb[lane]);
              const Vec* wv = by_input.data() + (ky * lanes + lane) * in_vecs;
              for (int v = 0; v < in_vecs; ++v) d_in[v] += gs * wv[v];
            }
          }
          if (dx.data != nullptr)
            for (int ci = 0; ci < x.c; ++ci) dx.at(bn, yi, xi)[ci] = d_in[ci / kLanes][ci % kLanes];
        }
        // lanes past s * c_out read the next column's cotangents: they are never read out
        for (int ky = 0; ky < s; ++ky)
          for (int lane = 0; lane < lanes; ++lane) {
            for (int ci = 0; ci < x.c; ++ci)
              part[taps.weight_index(ky, ci, lane)] =
                  t.weight[(ky * x.c + ci) * nv + lane / kLanes][lane % kLanes];
            part[w_size + lane % y.c] += t.bias[ky * nv + lane / kLanes][lane % kLanes];
          }
      }
    });
    add_parts(parts, dw, w_size, db);
  });
}

}  // namespace gigamlx
