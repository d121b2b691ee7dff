// Shared helpers of the fused kernels: row-parallel loops, CPU-stream scheduling, input checks.
#pragma once

#include <algorithm>
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

// Run f(begin, end, worker) on contiguous chunks of [0, n); worker 0 runs on this thread.
template <class F>
void parallel_rows(int n, int workers, F&& f) {
  std::vector<std::thread> pool;
  for (int t = 1; t < workers; ++t) {
    pool.emplace_back(f, t * n / workers, (t + 1) * n / workers, t);
  }
  f(0, n / workers, 0);
  for (auto& th : pool) th.join();
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

// Allocate an output and hand its float pointer back.
inline float* allocate(mx::array& out) {
  out.set_data(mx::allocator::malloc(out.nbytes()));
  return out.data<float>();
}

}  // namespace gigamlx
