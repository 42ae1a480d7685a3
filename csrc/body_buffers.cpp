// BodyBuffers: validation, device layout and upload of a body asset; the per-call entry point.
#include "body_buffers.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
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

HostBody select_vertices(const HostBody& h, const std::vector<int64_t>& index) {
  require(!index.empty(), "vertex_index is empty; pass at least one vertex (or None for all)");
  const size_t S = h.num_betas, K = h.num_influences;
  HostBody out = h;
  out.num_vertices = static_cast<int>(index.size());
  out.v_template.resize(index.size() * 3);
  out.shapedirs.resize(index.size() * 3 * S);
  out.skin_indices.resize(index.size() * K);
  out.skin_weights.resize(index.size() * K);
  for (size_t i = 0; i < index.size(); ++i) {
    const int64_t v = index[i];
    require(v >= 0 && v < h.num_vertices,
            "vertex_index must be in [0, " + std::to_string(h.num_vertices) + "), got " +
                std::to_string(v) + " at position " + std::to_string(i));
    std::copy_n(h.v_template.begin() + v * 3, 3, out.v_template.begin() + i * 3);
    std::copy_n(h.shapedirs.begin() + v * 3 * S, 3 * S, out.shapedirs.begin() + i * 3 * S);
    std::copy_n(h.skin_indices.begin() + v * K, K, out.skin_indices.begin() + i * K);
    std::copy_n(h.skin_weights.begin() + v * K, K, out.skin_weights.begin() + i * K);
  }
  return out;
}

DeviceLayout device_layout(const HostBody& h) {
  const size_t V = h.num_vertices, S = h.num_betas, K = h.num_influences;
  DeviceLayout d;
  d.v_template_t.resize(3 * V);
  d.shapedirs_t.resize(S * 3 * V);
  d.skin_indices.assign(V * kMaxInfluences, 0);  // padding: bone 0, weight 0
  d.skin_weights.assign(V * kMaxInfluences, 0.f);
  for (size_t v = 0; v < V; ++v) {
    for (size_t c = 0; c < 3; ++c) {
      d.v_template_t[c * V + v] = h.v_template[v * 3 + c];  // (V, 3) -> (3, V)
      for (size_t s = 0; s < S; ++s) {
        d.shapedirs_t[(s * 3 + c) * V + v] = h.shapedirs[(v * 3 + c) * S + s];
      }
    }
    for (size_t k = 0; k < K; ++k) {  // (V, K) -> (V, 8)
      d.skin_indices[v * kMaxInfluences + k] = static_cast<uint8_t>(h.skin_indices[v * K + k]);
      d.skin_weights[v * kMaxInfluences + k] = h.skin_weights[v * K + k];
    }
  }
  d.parents.assign(h.parents.begin(), h.parents.end());
  d.depth = joint_depths(h.parents);
  d.max_depth = h.num_joints > 1 ? *std::max_element(d.depth.begin(), d.depth.end()) : 0;
  return d;
}

DeviceBody DeviceLayout::view(const HostBody& h) const {
  DeviceBody b;
  b.v_template_t = v_template_t.data();
  b.shapedirs_t = shapedirs_t.data();
  b.j_template = h.j_template.data();
  b.j_shapedirs = h.j_shapedirs.data();
  b.parents = parents.data();
  b.depth = depth.data();
  b.skin_indices = skin_indices.data();
  b.skin_weights = skin_weights.data();
  b.num_vertices = h.num_vertices;
  b.num_joints = h.num_joints;
  b.num_betas = h.num_betas;
  b.max_depth = max_depth;
  return b;
}

BodyBuffers::BodyBuffers(const HostBody& h, int max_batch, int device) : max_batch_(max_batch) {
  validate_host_body(h, max_batch);
  if (device < 0) D2A_CUDA_CHECK(cudaGetDevice(&device));
  device_ = device;
  const DeviceGuard guard(device_);
  int major = 0;
  D2A_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device_));
  D2A_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device_));
  tensor_cores_ = major >= 8;
  const DeviceLayout d = device_layout(h);
  view_ = d.view(h);  // the sizes and max_depth; each pointer becomes its device copy below
  const auto up = [this](const auto* data, size_t count) {
    arrays_.push_back(upload(data, count * sizeof(*data)));
    return arrays_.back().template as<std::remove_const_t<std::remove_pointer_t<decltype(data)>>>();
  };
  view_.v_template_t = up(d.v_template_t.data(), d.v_template_t.size());
  view_.shapedirs_t = up(d.shapedirs_t.data(), d.shapedirs_t.size());
  view_.j_template = up(h.j_template.data(), h.j_template.size());
  view_.j_shapedirs = up(h.j_shapedirs.data(), h.j_shapedirs.size());
  view_.parents = up(d.parents.data(), d.parents.size());
  view_.depth = up(d.depth.data(), d.depth.size());
  view_.skin_indices = up(d.skin_indices.data(), d.skin_indices.size());
  view_.skin_weights = up(d.skin_weights.data(), d.skin_weights.size());
  const size_t scratch = sizeof(float) * static_cast<size_t>(max_batch) * h.num_joints * 12;
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
                      uintptr_t joints, int batch, uintptr_t stream, const std::string& skin,
                      int tiles_per_block, int warps) const {
  if (closed_) throw std::runtime_error("BodyBuffers is closed; create a new one");
  require(batch >= 0 && batch <= max_batch_, range_text("batch", batch, 0, max_batch_) +
                                                 " (max_batch of these BodyBuffers)");
  require(skin == "auto" || skin == "simt" || skin == "tc",
          "skin must be 'auto', 'simt' or 'tc', got '" + skin + "'");
  require(tiles_per_block >= 0 && tiles_per_block <= (1 << 15),
          range_text("tiles_per_block", tiles_per_block, 0, 1 << 15));
  const int max_warps = tc_max_warps(view_.num_betas);
  require(warps == 0 || warps == 2 || warps == 4 || warps == 8 || (warps == 16 && max_warps == 16),
          "warps must be 0 (default), 2, 4, 8" + std::string(max_warps == 16 ? " or 16" : "") +
              " for this body, got " + std::to_string(warps));
  LaunchConfig config;
  config.num_sms = num_sms_;
  config.tiles_per_block = tiles_per_block;
  config.tc_warps = warps;
  if (skin == "tc") {  // "auto" stays on the CUDA cores until tc is measured on a GPU
    require(tensor_cores_, "skin='tc' needs TF32 tensor cores (compute capability 8.0 or newer) "
                           "on device " + std::to_string(device_) + "; use skin='simt'");
    require(view_.num_betas <= kTcMaxBetas,
            "skin='tc' handles at most " + std::to_string(kTcMaxBetas) + " betas, this body has " +
                std::to_string(view_.num_betas) + "; use skin='simt'");
    // Its shared memory must fit the 48 KiB a kernel gets without opting in (16 warps and
    // about 60 joints would not).
    const size_t smem = tc_shared_bytes(view_.num_joints, view_.num_betas, warps);
    require(smem <= 48 * 1024, "skin='tc' with " + std::to_string(warps) + " warps needs " +
                                   std::to_string(smem) + " bytes of shared memory for " +
                                   std::to_string(view_.num_joints) +
                                   " joints, over 48 KiB; use fewer warps");
    config.skin = SkinVariant::kTensorCore;
  }
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
             reinterpret_cast<cudaStream_t>(stream), config);
}

double peak_memory_bandwidth(int device) {
  int clock_khz = 0, bus_bits = 0;
  D2A_CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, device));
  D2A_CUDA_CHECK(cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device));
  return 2.0 * clock_khz * 1e3 * bus_bits / 8.0;
}

}  // namespace d2a
