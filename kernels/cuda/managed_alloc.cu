// CUDA managed-memory allocator and migration hints for the cuda-um backend.
//
// um_malloc / um_free have the signatures torch.cuda.memory.CUDAPluggableAllocator loads, so a
// torch.cuda.MemPool built on them hands out cudaMallocManaged memory: tile inputs written by
// the host with no staging copy, then migrated in bulk by um_prefetch on a side stream instead
// of page fault by page fault. The allocator never hands out more managed memory than the
// limit set by um_set_limit (the GPU's free memory when the backend starts).
#include <cuda_runtime.h>
#include <sys/types.h>

#include <atomic>

namespace {

std::atomic<long long> g_active{0};  // managed bytes handed out and not yet freed
std::atomic<long long> g_peak{0};
std::atomic<long long> g_limit{0};   // 0: no limit

void raise_peak(long long now) {
  long long seen = g_peak.load();
  while (now > seen && !g_peak.compare_exchange_weak(seen, now)) {
  }
}

// Where a prefetch or an advice points: device >= 0 is that GPU, device < 0 the host.
#if CUDART_VERSION >= 12020
cudaMemLocation location_of(int device) {
  cudaMemLocation where{};
  where.type = device < 0 ? cudaMemLocationTypeHost : cudaMemLocationTypeDevice;
  where.id = device < 0 ? 0 : device;
  return where;
}
#endif

}  // namespace

extern "C" {

void* um_malloc(ssize_t size, int device, cudaStream_t stream) {
  (void)stream;  // managed memory is not stream-ordered; cudaMallocManaged is synchronous
  if (size <= 0) return nullptr;
  long long after = g_active.fetch_add(size) + size;
  long long limit = g_limit.load();
  if (limit > 0 && after > limit) {  // returning null makes torch raise its OOM error
    g_active.fetch_sub(size);
    return nullptr;
  }
  int previous = 0;
  cudaGetDevice(&previous);
  if (previous != device) cudaSetDevice(device);
  void* ptr = nullptr;
  if (cudaMallocManaged(&ptr, static_cast<size_t>(size), cudaMemAttachGlobal) != cudaSuccess) {
    g_active.fetch_sub(size);
    ptr = nullptr;
  } else {
    raise_peak(after);
  }
  if (previous != device) cudaSetDevice(previous);
  return ptr;
}

void um_free(void* ptr, ssize_t size, int device, cudaStream_t stream) {
  (void)device;
  (void)stream;
  if (ptr == nullptr) return;
  cudaFree(ptr);  // synchronizes the device: no kernel still reads the block
  g_active.fetch_sub(size);
}

// Migrate [ptr, ptr + bytes) to `device` (< 0: the host) in stream order; returns a cudaError_t.
int um_prefetch(const void* ptr, size_t bytes, int device, cudaStream_t stream) {
#if CUDART_VERSION >= 13000
  return cudaMemPrefetchAsync(ptr, bytes, location_of(device), 0, stream);
#elif CUDART_VERSION >= 12020
  return cudaMemPrefetchAsync_v2(ptr, bytes, location_of(device), 0, stream);
#else
  return cudaMemPrefetchAsync(ptr, bytes, device < 0 ? cudaCpuDeviceId : device, stream);
#endif
}

// cudaMemAdvise with a cudaMemoryAdvise code (1 = SetReadMostly ... 6 = UnsetAccessedBy).
int um_advise(const void* ptr, size_t bytes, int advice, int device) {
  cudaMemoryAdvise code = static_cast<cudaMemoryAdvise>(advice);
#if CUDART_VERSION >= 13000
  return cudaMemAdvise(ptr, bytes, code, location_of(device));
#elif CUDART_VERSION >= 12020
  return cudaMemAdvise_v2(ptr, bytes, code, location_of(device));
#else
  return cudaMemAdvise(ptr, bytes, code, device < 0 ? cudaCpuDeviceId : device);
#endif
}

// 1 if ptr is managed memory, 0 if not, -1 on error (tests check the pool really is managed).
int um_is_managed(const void* ptr) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, ptr) != cudaSuccess) return -1;
  return attributes.type == cudaMemoryTypeManaged ? 1 : 0;
}

// 1 if the host may touch managed memory while kernels run and prefetch works (Pascal+ on
// Linux), 0 if not, minus the cudaError_t on failure (e.g. a driver older than this build's
// CUDA). Staging tile n+1 during tile n's compute relies on it.
int um_concurrent_access(int device) {
  int value = 0;
  cudaError_t code = cudaDeviceGetAttribute(&value, cudaDevAttrConcurrentManagedAccess, device);
  if (code != cudaSuccess) return -static_cast<int>(code);
  return value != 0 ? 1 : 0;
}

long long um_active_bytes() { return g_active.load(); }
long long um_peak_bytes() { return g_peak.load(); }
void um_reset_peak() { g_peak.store(g_active.load()); }
void um_set_limit(long long bytes) { g_limit.store(bytes); }
long long um_limit_bytes() { return g_limit.load(); }

const char* um_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // extern "C"
