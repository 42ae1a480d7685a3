// BodyBuffers: validation, device layout and upload of a body asset; the per-call entry point.
#include "body_buffers.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "cuda_check.h"

namespace d2a {
namespace {

constexpr int kMaxBatch = 1 << 18;      // skin grid.y = batch / 8 stays under 65535
constexpr int kMaxVertices = 1 << 26;   // 32-bit vertex offsets inside the kernels

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

std::string range_text(const char* name, long long value, long long lo, long long hi) {
  return std::string(name) + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
         "], got " + std::to_string(value);
}

// Makes `device` current for the scope and restores the previous device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    D2A_CUDA_CHECK(cudaGetDevice(&previous_));
    if (device != previous_) D2A_CUDA_CHECK(cudaSetDevice(device));
    switched_ = device != previous_;
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(previous_);  // best effort: destructors must not throw
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
  bool switched_ = false;
};

// Depth of each joint below the root (parents already validated: parents[j] < j).
std::vector<int> joint_depths(const std::vector<int64_t>& parents) {
  std::vector<int> depth(parents.size(), 0);
  for (size_t j = 1; j < parents.size(); ++j) depth[j] = depth[parents[j]] + 1;
  return depth;
}

}  // namespace

void validate_host_body(const HostBody& h, int max_batch) {
  const long long V = h.num_vertices, J = h.num_joints, S = h.num_betas, K = h.num_influences;
  require(V >= 1 && V <= kMaxVertices, range_text("V (vertices)", V, 1, kMaxVertices));
  require(J >= 1 && J <= kMaxJoints, range_text("J (joints)", J, 1, kMaxJoints));
  require(S >= 1 && S <= kMaxBetas, range_text("S (betas)", S, 1, kMaxBetas));
  require(K >= 1 && K <= kMaxInfluences, range_text("K (influences)", K, 1, kMaxInfluences));
  require(max_batch >= 1 && max_batch <= kMaxBatch,
          range_text("max_batch", max_batch, 1, kMaxBatch));
  const auto sized = [](const char* name, size_t got, long long want) {
    require(got == static_cast<size_t>(want), std::string(name) + " has " + std::to_string(got) +
                                                  " elements, expected " + std::to_string(want));
  };
  sized("v_template", h.v_template.size(), V * 3);
  sized("shapedirs", h.shapedirs.size(), V * 3 * S);
  sized("j_template", h.j_template.size(), J * 3);
  sized("j_shapedirs", h.j_shapedirs.size(), J * 3 * S);
  sized("parents", h.parents.size(), J);
  sized("skin_indices", h.skin_indices.size(), V * K);
  sized("skin_weights", h.skin_weights.size(), V * K);
  require(h.parents[0] == -1, "parents[0] must be -1 (root), got " + std::to_string(h.parents[0]));
  for (long long j = 1; j < J; ++j) {
    require(h.parents[j] >= 0 && h.parents[j] < j,
            "parents must be topologically sorted (0 <= parents[j] < j); parents[" +
                std::to_string(j) + "] = " + std::to_string(h.parents[j]));
  }
  for (size_t i = 0; i < h.skin_indices.size(); ++i) {
    require(h.skin_indices[i] >= 0 && h.skin_indices[i] < J,
            "skin_indices must be in [0, " + std::to_string(J) + "), got " +
                std::to_string(h.skin_indices[i]) + " at vertex " + std::to_string(i / K));
  }
}

DeviceArray::DeviceArray(size_t bytes) { D2A_CUDA_CHECK(cudaMalloc(&ptr_, bytes)); }

DeviceArray& DeviceArray::operator=(DeviceArray&& other) noexcept {
  if (this != &other) {
    reset();
    ptr_ = std::exchange(other.ptr_, nullptr);
  }
  return *this;
}

void DeviceArray::reset() noexcept {
  if (ptr_ != nullptr) cudaFree(ptr_);  // error ignored: may run after CUDA teardown
  ptr_ = nullptr;
}

DeviceArray BodyBuffers::upload(const void* data, size_t bytes) {
  DeviceArray array(bytes);
  D2A_CUDA_CHECK(cudaMemcpy(array.as<void>(), data, bytes, cudaMemcpyHostToDevice));
  device_bytes_ += bytes;
  return array;
}

BodyBuffers::BodyBuffers(const HostBody& h, int max_batch, int device) : max_batch_(max_batch) {
  validate_host_body(h, max_batch);
  if (device < 0) D2A_CUDA_CHECK(cudaGetDevice(&device));
  device_ = device;
  const DeviceGuard guard(device_);
  const size_t V = h.num_vertices, J = h.num_joints, S = h.num_betas, K = h.num_influences;
  std::vector<float> vt(3 * V), sd(S * 3 * V), weights(V * kMaxInfluences, 0.f);
  std::vector<uint8_t> bones(V * kMaxInfluences, 0);  // padding: bone 0, weight 0
  for (size_t v = 0; v < V; ++v) {
    for (size_t c = 0; c < 3; ++c) {
      vt[c * V + v] = h.v_template[v * 3 + c];  // (V, 3) -> (3, V)
      for (size_t s = 0; s < S; ++s) sd[(s * 3 + c) * V + v] = h.shapedirs[(v * 3 + c) * S + s];
    }
    for (size_t k = 0; k < K; ++k) {  // (V, K) -> (V, 8)
      bones[v * kMaxInfluences + k] = static_cast<uint8_t>(h.skin_indices[v * K + k]);
      weights[v * kMaxInfluences + k] = h.skin_weights[v * K + k];
    }
  }
  std::vector<int> parents(h.parents.begin(), h.parents.end()), depth = joint_depths(h.parents);
  view_.num_vertices = h.num_vertices;
  view_.num_joints = h.num_joints;
  view_.num_betas = h.num_betas;
  view_.max_depth = J > 1 ? *std::max_element(depth.begin(), depth.end()) : 0;
  arrays_.push_back(upload(vt.data(), vt.size() * sizeof(float)));
  view_.v_template_t = arrays_.back().as<float>();
  arrays_.push_back(upload(sd.data(), sd.size() * sizeof(float)));
  view_.shapedirs_t = arrays_.back().as<float>();
  arrays_.push_back(upload(h.j_template.data(), h.j_template.size() * sizeof(float)));
  view_.j_template = arrays_.back().as<float>();
  arrays_.push_back(upload(h.j_shapedirs.data(), h.j_shapedirs.size() * sizeof(float)));
  view_.j_shapedirs = arrays_.back().as<float>();
  arrays_.push_back(upload(parents.data(), parents.size() * sizeof(int)));
  view_.parents = arrays_.back().as<int>();
  arrays_.push_back(upload(depth.data(), depth.size() * sizeof(int)));
  view_.depth = arrays_.back().as<int>();
  arrays_.push_back(upload(bones.data(), bones.size()));
  view_.skin_indices = arrays_.back().as<uint8_t>();
  arrays_.push_back(upload(weights.data(), weights.size() * sizeof(float)));
  view_.skin_weights = arrays_.back().as<float>();
  const size_t scratch = sizeof(float) * static_cast<size_t>(max_batch) * J * 12;
  arrays_.emplace_back(scratch);
  device_bytes_ += scratch;
  transforms_ = arrays_.back().as<float>();
}

void BodyBuffers::close() noexcept {
  arrays_.clear();
  DeviceBody dims;  // keep the sizes for introspection, drop the freed pointers
  dims.num_vertices = view_.num_vertices;
  dims.num_joints = view_.num_joints;
  dims.num_betas = view_.num_betas;
  view_ = dims;
  transforms_ = nullptr;
  closed_ = true;
}

void BodyBuffers::check_pointer(uintptr_t ptr, const char* name) const {
  require(ptr != 0, std::string(name) + " is a null pointer");
  require(ptr % alignof(float) == 0,
          std::string(name) + " must be 4-byte aligned (fp32), got address " + std::to_string(ptr));
  cudaPointerAttributes attr{};
  D2A_CUDA_CHECK(cudaPointerGetAttributes(&attr, reinterpret_cast<const void*>(ptr)));
  const bool on_device =
      attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
  require(on_device, std::string(name) + " is not device memory (host pointer? CPU tensor?); "
                                         "pass a CUDA device pointer");
  require(attr.device == device_, std::string(name) + " lives on CUDA device " +
                                      std::to_string(attr.device) + " but these BodyBuffers are "
                                      "on device " + std::to_string(device_));
}

void BodyBuffers::lbs(uintptr_t rotmats, uintptr_t betas, uintptr_t transl, uintptr_t verts,
                      uintptr_t joints, int batch, uintptr_t stream) const {
  if (closed_) throw std::runtime_error("BodyBuffers is closed; create a new one");
  require(batch >= 0 && batch <= max_batch_, range_text("batch", batch, 0, max_batch_) +
                                                 " (max_batch of these BodyBuffers)");
  if (batch == 0) return;
  const DeviceGuard guard(device_);
  check_pointer(rotmats, "rotmats");
  check_pointer(betas, "betas");
  check_pointer(transl, "transl");
  check_pointer(verts, "verts");
  check_pointer(joints, "joints");
  launch_lbs(view_, reinterpret_cast<const float*>(rotmats), reinterpret_cast<const float*>(betas),
             reinterpret_cast<const float*>(transl), reinterpret_cast<float*>(verts),
             reinterpret_cast<float*>(joints), transforms_, batch,
             reinterpret_cast<cudaStream_t>(stream));
}

double peak_memory_bandwidth(int device) {
  int clock_khz = 0, bus_bits = 0;
  D2A_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device));
  D2A_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  return 2.0 * clock_khz * 1e3 * bus_bits / 8.0;
}

}  // namespace d2a
