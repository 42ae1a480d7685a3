// Launchers of the two LBS kernels (lbs_kernels.cu). Same semantics as the torch oracle
// d2a_edge.body.lbs_torch.lbs without posedirs. All pointers are device pointers, fp32/int32,
// C-contiguous; batch-major inputs/outputs use the shapes noted below.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace d2a {

constexpr int kMaxJoints = 64;      // FK keeps a batch's joints in shared memory
constexpr int kMaxInfluences = 8;   // skinning bones per vertex (padding: index 0, weight 0)
constexpr int kMaxBetas = 512;      // bounds the skinning kernel's shared memory

// Body arrays in the device layout that BodyBuffers uploads (V vertices, J joints, S betas).
struct DeviceBody {
  const float* v_template_t = nullptr;    // (3, V)      v_template transposed (coalesced reads)
  const float* shapedirs_t = nullptr;     // (S, 3, V)   shapedirs (V, 3, S) transposed
  const float* j_template = nullptr;      // (J, 3)
  const float* j_shapedirs = nullptr;     // (J, 3, S)
  const int* parents = nullptr;           // (J,)        parents[0] = -1, parents[j] < j
  const int* depth = nullptr;             // (J,)        depth[0] = 0, depth[j] = depth[parent] + 1
  const uint8_t* skin_indices = nullptr;  // (V, 8)      bone per influence (< J <= 64 fits a byte)
  const float* skin_weights = nullptr;    // (V, 8)
  int num_vertices = 0;
  int num_joints = 0;
  int num_betas = 0;
  int max_depth = 0;
};

// How the skinning launch runs (the forward kinematics launch is the same for both).
//   kSimt: CUDA cores only, any GPU (skin_kernel<BT>).
//   kTensorCore: the shape blend as a 3xTF32 mma.sync GEMM (shapedirs x betas) on tensor
//     cores, skinning on CUDA cores; compute capability >= 8.0 and S <= kTcMaxBetas.
enum class SkinVariant { kSimt, kTensorCore };
constexpr int kTcMaxBetas = 32;
constexpr int kTcDefaultWarps = 8;  // kTensorCore: warps per block when LaunchConfig says 0
constexpr int kTcMaxWarps = 16;
// kTensorCore's register budget: up to 16 warps a block for S <= 16 (128 registers a thread),
// 8 beyond (about 170-230 registers); the kernel's __launch_bounds__ follows it.
constexpr int tc_max_warps(int num_betas) {
  return num_betas <= 16 ? kTcMaxWarps : kTcMaxWarps / 2;
}

// kTensorCore's shared memory per block (bytes) for a body of J joints and S betas at `warps`
// warps a block (0 = kTcDefaultWarps); BodyBuffers::lbs keeps it within 48 KiB.
size_t tc_shared_bytes(int num_joints, int num_betas, int warps);

struct LaunchConfig {
  SkinVariant skin = SkinVariant::kSimt;
  int num_sms = 0;          // the device's multiprocessors (kTensorCore sizes its grid with it)
  int tiles_per_block = 0;  // kTensorCore: 8-body tiles per block; 0 = from num_sms
  int tc_warps = 0;         // kTensorCore: warps per block, 2/4/8/16 (<= 8 for S > 16); 0 = 8
};

// Posed vertices and joints for a batch of B bodies, enqueued on `stream` (nothing synchronizes).
//   rotmats (B, J, 3, 3), betas (B, S), transl (B, 3)   inputs, root joint placed at transl
//   verts (B, V, 3), joints (B, J, 3)                    outputs
//   transforms (>= B, J, 3, 4)                           scratch: skinning transforms
// Throws std::runtime_error (via D2A_CUDA_CHECK) if a launch fails.
void launch_lbs(const DeviceBody& body, const float* rotmats, const float* betas,
                const float* transl, float* verts, float* joints, float* transforms, int batch,
                cudaStream_t stream, const LaunchConfig& config = {});

}  // namespace d2a
