// CUDA linear blend skinning: the twin of d2a_edge/body/lbs_torch.py (the oracle), fp32.
//
//   kernel 1 (fk_kernel), one block per body b:   j_rest = j_template + j_shapedirs . betas[b]
//       forward kinematics level by level down `parents` (a batch's joints in shared memory),
//       posed joints -> joints[b], skinning transforms A[b, j] = [rot | pos - rot . j_rest] (3x4).
//   kernel 2 (skin_kernel<BT>), one thread per vertex v and a tile of BT bodies:
//       v_shaped = v_template[v] + shapedirs[v] . betas[b]   (shape blend, fused)
//       T = sum_k w[v, k] A[b, idx[v, k]];  verts[b, v] = T[:, :3] . v_shaped + T[:, 3]
//   Each thread reads its vertex's body arrays once and reuses them for the BT bodies of its tile.
#include "cuda_check.h"
#include "lbs_kernels.h"

namespace d2a {
namespace {

constexpr int kSkinThreads = 128;

// out = a . b for row-major 3x3 matrices.
__device__ __forceinline__ void matmul3(const float* a, const float* b, float* out) {
#pragma unroll
  for (int r = 0; r < 3; ++r) {
#pragma unroll
    for (int c = 0; c < 3; ++c) {
      out[r * 3 + c] = a[r * 3 + 0] * b[0 * 3 + c] + a[r * 3 + 1] * b[1 * 3 + c] +
                       a[r * 3 + 2] * b[2 * 3 + c];
    }
  }
}

// beta[bt] = row[bt] for bt < BT from 16-byte-aligned shared memory (LDS.128 when BT % 4 == 0).
template <int BT>
__device__ __forceinline__ void load_row(const float* row, float* beta) {
  if constexpr (BT % 4 == 0) {
#pragma unroll
    for (int q = 0; q < BT / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(row)[q];
      beta[4 * q + 0] = v.x;
      beta[4 * q + 1] = v.y;
      beta[4 * q + 2] = v.z;
      beta[4 * q + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) beta[bt] = row[bt];
  }
}

// blockDim.x >= J threads, thread j owns joint j. Mirrors lbs_torch.forward_kinematics.
__global__ void fk_kernel(DeviceBody body, const float* __restrict__ rotmats,
                          const float* __restrict__ betas, const float* __restrict__ transl,
                          float* __restrict__ joints_out, float* __restrict__ transforms) {
  __shared__ float s_rot[kMaxJoints][9];  // accumulated rotation of joint j (world)
  __shared__ float s_pos[kMaxJoints][3];  // posed position of joint j
  __shared__ float s_rest[kMaxJoints][3];  // rest joint j of this body's shape
  const int J = body.num_joints, S = body.num_betas;
  const int b = blockIdx.x, j = threadIdx.x;
  const bool active = j < J;
  float rj[9];  // rotmats[b, j]
  if (active) {
    const float* R = rotmats + (static_cast<size_t>(b) * J + j) * 9;
#pragma unroll
    for (int i = 0; i < 9; ++i) rj[i] = R[i];
    const float* beta = betas + static_cast<size_t>(b) * S;
    for (int c = 0; c < 3; ++c) {  // j_rest = j_template + j_shapedirs . beta
      const float* dirs = body.j_shapedirs + (j * 3 + c) * S;
      float blend = 0.f;
      for (int s = 0; s < S; ++s) blend += dirs[s] * beta[s];
      s_rest[j][c] = body.j_template[j * 3 + c] + blend;
    }
    if (j == 0) {  // root: rot = rotmats[b, 0], pos = transl[b]
#pragma unroll
      for (int i = 0; i < 9; ++i) s_rot[0][i] = rj[i];
      for (int c = 0; c < 3; ++c) s_pos[0][c] = transl[b * 3 + c];
    }
  }
  __syncthreads();
  const int my_depth = active ? body.depth[j] : -1;
  for (int level = 1; level <= body.max_depth; ++level) {  // parents are final before children
    if (my_depth == level) {
      const int p = body.parents[j];
      matmul3(s_rot[p], rj, s_rot[j]);  // rot[j] = rot[p] . rotmats[b, j]
      float off[3];                     // offset = j_rest[j] - j_rest[p]
      for (int c = 0; c < 3; ++c) off[c] = s_rest[j][c] - s_rest[p][c];
      for (int r = 0; r < 3; ++r) {  // pos[j] = pos[p] + rot[p] . offset
        s_pos[j][r] = s_pos[p][r] + (s_rot[p][r * 3 + 0] * off[0] +
                                     s_rot[p][r * 3 + 1] * off[1] + s_rot[p][r * 3 + 2] * off[2]);
      }
    }
    __syncthreads();
  }
  if (!active) return;
  float* A = transforms + (static_cast<size_t>(b) * J + j) * 12;  // (3, 4) row-major
  float* out = joints_out + (static_cast<size_t>(b) * J + j) * 3;
  for (int r = 0; r < 3; ++r) {  // t = pos - rot . j_rest
    const float* row = s_rot[j] + r * 3;
    const float t = s_pos[j][r] - (row[0] * s_rest[j][0] + row[1] * s_rest[j][1] +
                                   row[2] * s_rest[j][2]);
    A[r * 4 + 0] = row[0];
    A[r * 4 + 1] = row[1];
    A[r * 4 + 2] = row[2];
    A[r * 4 + 3] = t;
    out[r] = s_pos[j][r];
  }
}

// Shared memory: A tile (BT, J, 12) floats, then the betas tile transposed (S, BT).
template <int BT>
__global__ void __launch_bounds__(kSkinThreads, BT >= 8 ? 6 : 8)  // <= 85 / 64 registers
    skin_kernel(DeviceBody body, const float* __restrict__ betas,
                const float* __restrict__ transforms, int batch, float* __restrict__ verts) {
  extern __shared__ float4 smem4[];
  const int V = body.num_vertices, J = body.num_joints, S = body.num_betas;
  const int b0 = blockIdx.y * BT;
  const int nb = min(BT, batch - b0);
  float* s_A = reinterpret_cast<float*>(smem4);
  float* s_beta = s_A + BT * J * 12;
  for (int i = threadIdx.x; i < nb * J * 12; i += blockDim.x) {
    s_A[i] = transforms[static_cast<size_t>(b0) * J * 12 + i];
  }
  for (int i = threadIdx.x; i < S * BT; i += blockDim.x) {  // s_beta[s, bt] = betas[b0 + bt, s]
    const int s = i / BT, bt = i % BT;
    s_beta[i] = bt < nb ? betas[static_cast<size_t>(b0 + bt) * S + s] : 0.f;
  }
  __syncthreads();
  const int v = blockIdx.x * blockDim.x + threadIdx.x;
  if (v >= V) return;

  float blend[BT][3];  // shapedirs[v] . betas[b0 + bt]
#pragma unroll
  for (int bt = 0; bt < BT; ++bt) blend[bt][0] = blend[bt][1] = blend[bt][2] = 0.f;
  for (int s = 0; s < S; ++s) {
    const float* dirs = body.shapedirs_t + static_cast<size_t>(s) * 3 * V + v;  // (3, V) slice
    const float dx = dirs[0], dy = dirs[V], dz = dirs[2 * V];
    float beta[BT];  // betas[b0 + bt, s]
    load_row<BT>(s_beta + s * BT, beta);
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) {
      blend[bt][0] += dx * beta[bt];
      blend[bt][1] += dy * beta[bt];
      blend[bt][2] += dz * beta[bt];
    }
  }
  const float tx = body.v_template_t[v], ty = body.v_template_t[V + v],
              tz = body.v_template_t[2 * V + v];
  const uint2 packed = reinterpret_cast<const uint2*>(body.skin_indices)[v];  // 8 x uint8
  const float4 w_lo = reinterpret_cast<const float4*>(body.skin_weights)[2 * v];
  const float4 w_hi = reinterpret_cast<const float4*>(body.skin_weights)[2 * v + 1];
  const float w[kMaxInfluences] = {w_lo.x, w_lo.y, w_lo.z, w_lo.w, w_hi.x, w_hi.y, w_hi.z, w_hi.w};

#pragma unroll
  for (int bt = 0; bt < BT; ++bt) {
    if (bt >= nb) break;
    const float x = tx + blend[bt][0], y = ty + blend[bt][1], z = tz + blend[bt][2];
    float T[12] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int k = 0; k < kMaxInfluences; ++k) {
      if (w[k] == 0.f) continue;  // padding (and true zeros) add nothing
      const unsigned word = k < 4 ? packed.x : packed.y;
      const int bone = (word >> (8 * (k & 3))) & 0xff;
      const float4* a = reinterpret_cast<const float4*>(s_A + (bt * J + bone) * 12);
      const float4 r0 = a[0], r1 = a[1], r2 = a[2];  // rows of A[b, bone] (3, 4)
      T[0] += w[k] * r0.x; T[1] += w[k] * r0.y; T[2] += w[k] * r0.z; T[3] += w[k] * r0.w;
      T[4] += w[k] * r1.x; T[5] += w[k] * r1.y; T[6] += w[k] * r1.z; T[7] += w[k] * r1.w;
      T[8] += w[k] * r2.x; T[9] += w[k] * r2.y; T[10] += w[k] * r2.z; T[11] += w[k] * r2.w;
    }
    float* out = verts + (static_cast<size_t>(b0 + bt) * V + v) * 3;
    out[0] = T[0] * x + T[1] * y + T[2] * z + T[3];
    out[1] = T[4] * x + T[5] * y + T[6] * z + T[7];
    out[2] = T[8] * x + T[9] * y + T[10] * z + T[11];
  }
}

template <int BT>
void launch_skin(const DeviceBody& body, const float* betas, const float* transforms, int batch,
                 float* verts, cudaStream_t stream) {
  const dim3 grid((body.num_vertices + kSkinThreads - 1) / kSkinThreads, (batch + BT - 1) / BT);
  const size_t smem = sizeof(float) * BT * (body.num_joints * 12 + body.num_betas);
  skin_kernel<BT><<<grid, kSkinThreads, smem, stream>>>(body, betas, transforms, batch, verts);
  D2A_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

void launch_lbs(const DeviceBody& body, const float* rotmats, const float* betas,
                const float* transl, float* verts, float* joints, float* transforms, int batch,
                cudaStream_t stream) {
  if (batch <= 0) return;
  const int fk_threads = body.num_joints <= 32 ? 32 : kMaxJoints;
  fk_kernel<<<batch, fk_threads, 0, stream>>>(body, rotmats, betas, transl, joints, transforms);
  D2A_CUDA_CHECK(cudaGetLastError());
  if (batch >= 8) {
    launch_skin<8>(body, betas, transforms, batch, verts, stream);
  } else if (batch >= 4) {
    launch_skin<4>(body, betas, transforms, batch, verts, stream);
  } else {
    launch_skin<1>(body, betas, transforms, batch, verts, stream);
  }
}

}  // namespace d2a
