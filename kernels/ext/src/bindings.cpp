// Python bindings of the fused kernels (module gigamlx_fused), in MLX's nanobind domain so
// mlx.core.array converts both ways.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/vector.h>

#include "down1.h"
#include "head.h"
#include "loss.h"
#include "middle.h"
#include "window.h"

namespace nb = nanobind;
using namespace nb::literals;

NB_MODULE(gigamlx_fused, m) {
  m.doc() = "Fused full-resolution tail of GigaUNet for MLX on the CPU (forward and vjp).";
  // 0.2: x may be uint8 (read as value / 255); 0.3: x may be standardised (mean, std, x_keep);
  // 0.4: turn_window (numpy in, numpy out: the training windows' turn and colour table);
  // 0.5: turn_window's row and column gains (the uneven-illumination augmentation)
  // 0.7: uint8_array (numpy to MLX in one parallel copy); tile_loss takes uint8 targets
  // 0.7.1: quarter turns in tall narrow blocks, a mask 8 x 8 pixels at a time (same bytes)
  // 0.7.2: down1 reads its input rows through a table of the 256 byte values and reuses them
  // across a thread's consecutive chunks (same bits)
  // 0.7.3: the standardisation's divisions as corrected products where all 256 byte values
  // were checked to give the same bits
  // 0.7.4: the head's forward computes two output rows per pass over their feature rows
  // 0.7.5: down1 fills its phase planes from each channel's bytes with the corrected products
  // 0.7.6: the head's feature rows split the input's channels once per row and convert them in
  // vectors
  // 0.7.7: tile_loss on head_logits's unevaluated logits computes them row by row inside the
  // loss, forward and backward (head_loss.h), never writing them out (same bits)
  // 0.8: middle (down2 ... up2 and the skip joins as one op, forward and backward)
  m.attr("__version__") = "0.8.0";
  m.def(
      "head_logits",
      [](const gigamlx::mx::array& h2, const gigamlx::mx::array& x,
         const gigamlx::mx::array& w_up, const gigamlx::mx::array& b_up,
         const gigamlx::mx::array& w_head, const gigamlx::mx::array& b_head,
         std::array<int, 4> keep, std::vector<float> mean, std::vector<float> std,
         std::array<int, 4> x_keep) {
        return gigamlx::head_logits(h2, x, w_up, b_up, w_head, b_head, keep,
                                    gigamlx::input_norm(mean, std, x_keep));
      },
      "h2"_a, "x"_a, "w_up"_a, "b_up"_a, "w_head"_a, "b_head"_a, "keep"_a,
      "mean"_a = std::vector<float>{}, "std"_a = std::vector<float>{},
      "x_keep"_a = std::array<int, 4>{0, 0, 0, 0},
      "Logits (N, H, W, 1) of up-sample + ReLU + zero outside keep (y0, x0, y1, x1) + "
      "concat x (standardised by mean and std and zero outside x_keep when given) + 3x3 head "
      "conv.");
  m.def(
      "tile_loss",
      [](const gigamlx::mx::array& z, const gigamlx::mx::array& g, int cy, int cx, float a,
         float b, float c) {
        auto out = gigamlx::tile_loss(z, g, gigamlx::LossParams{cy, cx, a, b, c});
        return nb::make_tuple(out[0], out[1]);
      },
      "z"_a, "g"_a, "cy"_a, "cx"_a, "a"_a, "b"_a, "c"_a,
      "(value, rows (6, h)) of the surrogate loss and per-row statistics on a crop of z.");
  m.def(
      "down1",
      [](const gigamlx::mx::array& x, const gigamlx::mx::array& weight,
         const gigamlx::mx::array& bias, int stride, int pad, std::array<int, 4> keep,
         std::vector<float> mean, std::vector<float> std, std::array<int, 4> x_keep) {
        return gigamlx::down1(
            x, weight, bias,
            gigamlx::Down1Params{stride, pad, keep, gigamlx::input_norm(mean, std, x_keep)});
      },
      "x"_a, "weight"_a, "bias"_a, "stride"_a, "pad"_a, "keep"_a,
      "mean"_a = std::vector<float>{}, "std"_a = std::vector<float>{},
      "x_keep"_a = std::array<int, 4>{0, 0, 0, 0},
      "relu(conv(x) + bias) zeroed outside keep (y0, x0, y1, x1) at the output's resolution, x "
      "standardised by mean and std and zero outside x_keep when given; differentiable in "
      "weight and bias only.");
  m.def(
      "middle",
      [](const gigamlx::mx::array& h1, const std::vector<gigamlx::mx::array>& params,
         std::array<int, 2> down2, std::array<int, 2> down3,
         std::array<std::array<int, 4>, 4> keep) {
        std::vector<gigamlx::mx::array> in{h1};
        in.insert(in.end(), params.begin(), params.end());
        return gigamlx::middle(in, gigamlx::MiddleParams{down2, down3, keep});
      },
      "h1"_a, "params"_a, "down2"_a, "down3"_a, "keep"_a,
      "[up2's output, h1] along channels: the layers between down1 and up1, each conv + bias + "
      "ReLU zeroed outside its keep box (y0, x0, y1, x1) at its own resolution (down2, down3, "
      "up3, up2). params: the weights and biases of down2, down3, up3 and up2 in that order; "
      "down2 and down3: (stride, pad). Differentiable in h1 and every parameter.");
  m.def(
      "uint8_array",
      [](nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu> src) {
        gigamlx::mx::Shape shape;
        for (size_t axis = 0; axis < src.ndim(); ++axis)
          shape.push_back(static_cast<int32_t>(src.shape(axis)));
        const size_t bytes = src.size();
        if (bytes == 0) return gigamlx::mx::zeros(shape, gigamlx::mx::uint8);
        auto data = gigamlx::mx::allocator::malloc(bytes);
        auto* dst = static_cast<uint8_t*>(data.buffer().raw_ptr());
        {
          nb::gil_scoped_release unlocked;  // the prefetch thread reads meanwhile
          gigamlx::copy_bytes(src.data(), dst, bytes);
        }
        return gigamlx::mx::array(std::move(data), shape, gigamlx::mx::uint8);
      },
      "src"_a,
      "An evaluated uint8 mx.array holding a copy of the C-contiguous uint8 array src: one "
      "memcpy split over the cores, without the GIL (mx.array's own conversion copies "
      "element by element on one thread).");
  m.def(
      "turn_window",
      [](nb::ndarray<const uint8_t, nb::ndim<3>, nb::device::cpu> src,
         std::optional<nb::ndarray<const uint32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>>
             table,
         bool flip, int rot90, nb::ndarray<uint8_t, nb::ndim<3>, nb::c_contig, nb::device::cpu> out,
         std::optional<nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>>
             gain_y,
         std::optional<nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>>
             gain_x) {
        const bool quarter = gigamlx::quarter_turns(rot90) % 2 == 1;
        const int64_t rows = src.shape(0), cols = src.shape(1), channels = src.shape(2);
        const int64_t out_rows = quarter ? cols : rows, out_cols = quarter ? rows : cols;
        if (static_cast<int64_t>(out.shape(0)) != out_rows ||
            static_cast<int64_t>(out.shape(1)) != out_cols ||
            static_cast<int64_t>(out.shape(2)) != channels)
          throw std::invalid_argument("turn_window: out has the wrong shape for this turn");
        if (channels != 1 && channels != 3)
          throw std::invalid_argument("turn_window: 1 or 3 channels");
        if (table && (channels != 3 || table->shape(0) != (size_t{1} << 24)))
          throw std::invalid_argument("turn_window: a colour table needs 3 channels, 2^24 entries");
        if (gain_y.has_value() != gain_x.has_value())
          throw std::invalid_argument("turn_window: give both gains or neither");
        if (gain_y && (channels != 3 || static_cast<int64_t>(gain_y->shape(0)) != out_rows ||
                       static_cast<int64_t>(gain_x->shape(0)) != out_cols))
          throw std::invalid_argument("turn_window: gains need 3 channels, out rows and cols");
        gigamlx::PixelView view{src.data(),      rows,           cols,          channels,
                                src.stride(0),   src.stride(1),  src.stride(2)};
        const uint32_t* colours = table ? table->data() : nullptr;
        const gigamlx::Gains gains{gain_y ? gain_y->data() : nullptr,
                                   gain_x ? gain_x->data() : nullptr};
        nb::gil_scoped_release unlocked;  // the compute thread runs meanwhile
        gigamlx::turn_window(view, colours, gain_y ? &gains : nullptr, flip, rot90, out.data());
      },
      "src"_a, "table"_a.none(), "flip"_a, "rot90"_a, "out"_a, "gain_y"_a.none() = nb::none(),
      "gain_x"_a.none() = nb::none(),
      "out = np.rot90(src[:, ::-1] if flip else src, rot90) for (h, w, 1 or 3) uint8 src of any "
      "strides, each RGB looked up in table (2^24 uint32: bytes R, G, B, 0 of the new colour "
      "at R << 16 | G << 8 | B) when one is given, then scaled by gain_y[i] * gain_x[j] "
      "(float32 out rows / cols), rounded half to even and clamped, when given; one pass, "
      "without the GIL.");
}
