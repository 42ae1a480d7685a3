// CUDA linear blend skinning: the twin of d2a_edge/body/lbs_torch.py (the oracle), fp32.
//
//   kernel 1 (fk_kernel<JT>, body in lbs_bodies.cuh), a warp (J <= 32) or two per body b:
//       j_rest = j_template + j_shapedirs . betas[b], forward kinematics level by level down
//       `parents`, posed joints -> joints[b], skinning transforms A[b, j] (3x4) -> scratch.
//   kernel 2, SkinVariant::kTensorCore (skin_tc_kernel<KT>, body in lbs_bodies.cuh): the shape
//       blend on tensor cores (3xTF32), skinning on CUDA cores.
//   kernel 2, SkinVariant::kSimt (skin_kernel<BT>), a thread per vertex v, a tile of BT bodies:
//       v_shaped = v_template[v] + shapedirs[v] . betas[b]   (shape blend, fused)
//       verts[b, v] = sum_k w[v, k] A[b, idx[v, k]] . (v_shaped, 1)   (skin_vertex, per body)
//   Each thread reads its vertex's body arrays once and reuses them for the BT bodies of its tile.
#include "cuda_check.h"
#include "lbs_bodies.cuh"
#include "lbs_kernels.h"

namespace d2a {
namespace {

template <int BT>
__global__ void __launch_bounds__(kSkinThreads, BT >= 8 ? 3 : 4)  // <= 85 / 64 registers
    skin_kernel(DeviceBody body, const float* __restrict__ betas,
                const float* __restrict__ transforms, int batch, float* __restrict__ verts) {
  DevicePolicy p;
  skin_simt_body<BT>(p, body, betas, transforms, batch, verts);
}

template <int JT>
__global__ void __launch_bounds__(kFkThreads)
    fk_kernel(DeviceBody body, const float* __restrict__ rotmats, const float* __restrict__ betas,
              const float* __restrict__ transl, int batch, float* __restrict__ joints,
              float* __restrict__ transforms) {
  DevicePolicy p;
  fk_body<JT>(p, body, rotmats, betas, transl, batch, joints, transforms);
}

// Up to tc_max_warps(8 KT) warps a block (BodyBuffers::lbs checks): for KT <= 2 that caps the
// registers at 128 (16 warps per SM).
template <int KT>
__global__ void __launch_bounds__(tc_max_warps(8 * KT) * 32)
    skin_tc_kernel(DeviceBody body, const float* __restrict__ betas,
                   const float* __restrict__ transforms, int batch, int tiles_per_block,
                   int warps, float* __restrict__ verts) {
#if __CUDA_ARCH__ >= 800
  DevicePolicy p;
  skin_tc_body<KT>(p, body, betas, transforms, batch, tiles_per_block, warps, verts);
#endif
}

// 8-body tiles per block: enough blocks for two waves of the blocks that fit at once (16 warps
// per multiprocessor at 128 registers), and as many tiles per block as that allows, since each
// block splits its vertices' shapedirs into TF32 fragments once for all of its tiles.
int tc_tiles_per_block(int blocks_x, int tiles, int num_sms, int warps) {
  const long long per_sm = warps < 16 ? 16 / warps : 1;
  const long long target = 2 * per_sm * (num_sms > 0 ? num_sms : 1);
  const long long per = (static_cast<long long>(blocks_x) * tiles + target - 1) / target;
  return static_cast<int>(per < 1 ? 1 : (per > tiles ? tiles : per));
}

template <int KT>
void launch_skin_tc(const DeviceBody& body, const float* betas, const float* transforms,
                    int batch, float* verts, cudaStream_t stream, const LaunchConfig& config) {
  const int warps = config.tc_warps > 0 ? config.tc_warps : kTcDefaultWarps;
  const int blocks_x = (body.num_vertices + warps * 16 - 1) / (warps * 16);
  const int tiles = (batch + 7) / 8;
  const int per = config.tiles_per_block > 0
                      ? config.tiles_per_block
                      : tc_tiles_per_block(blocks_x, tiles, config.num_sms, warps);
  const dim3 grid(blocks_x, (tiles + per - 1) / per);
  const size_t smem = sizeof(float) * tc_smem_floats(body.num_joints, KT, warps);
  skin_tc_kernel<KT><<<grid, warps * 32, smem, stream>>>(body, betas, transforms, batch, per,
                                                         warps, verts);
  D2A_CUDA_CHECK(cudaGetLastError());
}

template <int BT>
void launch_skin(const DeviceBody& body, const float* betas, const float* transforms, int batch,
                 float* verts, cudaStream_t stream) {
  const dim3 grid((body.num_vertices + kSkinThreads - 1) / kSkinThreads, (batch + BT - 1) / BT);
  const size_t smem = sizeof(float) * simt_smem_floats(BT, body.num_joints, body.num_betas);
  skin_kernel<BT><<<grid, kSkinThreads, smem, stream>>>(body, betas, transforms, batch, verts);
  D2A_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

size_t tc_shared_bytes(int num_joints, int num_betas, int warps) {
  return sizeof(float) * tc_smem_floats(num_joints, (num_betas + 7) / 8,
                                        warps > 0 ? warps : kTcDefaultWarps);
}

void launch_lbs(const DeviceBody& body, const float* rotmats, const float* betas,
                const float* transl, float* verts, float* joints, float* transforms, int batch,
                cudaStream_t stream, const LaunchConfig& config) {
  if (batch <= 0) return;
  const size_t fk_smem = sizeof(float) * fk_smem_floats();
  if (body.num_joints <= 32) {
    fk_kernel<32><<<(batch + 3) / 4, kFkThreads, fk_smem, stream>>>(body, rotmats, betas, transl,
                                                                    batch, joints, transforms);
  } else {
    fk_kernel<64><<<(batch + 1) / 2, kFkThreads, fk_smem, stream>>>(body, rotmats, betas, transl,
                                                                    batch, joints, transforms);
  }
  D2A_CUDA_CHECK(cudaGetLastError());
  if (config.skin == SkinVariant::kTensorCore) {
    switch ((body.num_betas + 7) / 8) {  // BodyBuffers::lbs checked S <= kTcMaxBetas
      case 1: launch_skin_tc<1>(body, betas, transforms, batch, verts, stream, config); break;
      case 2: launch_skin_tc<2>(body, betas, transforms, batch, verts, stream, config); break;
      case 3: launch_skin_tc<3>(body, betas, transforms, batch, verts, stream, config); break;
      default: launch_skin_tc<4>(body, betas, transforms, batch, verts, stream, config); break;
    }
  } else if (simt_tile(batch) == 8) {
    launch_skin<8>(body, betas, transforms, batch, verts, stream);
  } else if (simt_tile(batch) == 4) {
    launch_skin<4>(body, betas, transforms, batch, verts, stream);
  } else {
    launch_skin<1>(body, betas, transforms, batch, verts, stream);
  }
}

}  // namespace d2a
