// Kernel bodies written once against an execution policy P, so that the same source runs on the
// GPU (DevicePolicy, lbs_kernels.cu) and, thread by thread, on the CPU (the emulation in
// csrc/tests/emulate_lbs.cu, which the CPU test suite builds and checks against the oracle).
//
// P provides: thread() lane() warp() block_x() block_y(), sync_block() sync_warp(), smem()
// (the block's dynamic shared memory, 16-byte aligned), tf32(x) (round to nearest, ties away,
// as cvt.rna.tf32.f32) and mma(d, a, b): d += A . B for one warp-wide m16n8k8 TF32 mma.sync with
// PTX's fragment layout (g = lane / 4, t = lane % 4):
//   a[0] = A[g][t], a[1] = A[g + 8][t], a[2] = A[g][t + 4], a[3] = A[g + 8][t + 4]
//   b[0] = B[t][g], b[1] = B[t + 4][g]
//   d[0] = D[g][2t], d[1] = D[g][2t + 1], d[2] = D[g + 8][2t], d[3] = D[g + 8][2t + 1]
#pragma once

#include <cstdint>
#include <cstring>

#include "lbs_kernels.h"

#ifdef __CUDACC__
#define D2A_HD __host__ __device__ __forceinline__
#else
#define D2A_HD inline
#endif
#ifdef __CUDA_ARCH__  // unrolling hints for the device pass only (g++ warns on them)
#define D2A_UNROLL _Pragma("unroll")
#define D2A_UNROLL_NONE _Pragma("unroll 1")
#else
#define D2A_UNROLL
#define D2A_UNROLL_NONE
#endif

namespace d2a {

constexpr int kFkThreads = 128;   // fk: kFkThreads / JT bodies per block, JT threads each
constexpr int kTcWarps = 4;       // tc skin: warps per block, each owns 16 vertices
constexpr int kTcKTiles = kTcMaxBetas / 8;

// Shared floats of one fk block: per body (JT, 9) rotations, (JT, 3) positions, (JT, 3) rest.
constexpr int fk_smem_floats() { return kFkThreads * 15; }

// Shared floats of one tc skin block: transforms of 8 bodies (8, J, 12), their betas (8, 8 KT)
// and one output staging tile per warp (8 bodies, 16 vertices x 3).
constexpr int tc_smem_floats(int J, int KT) { return 8 * J * 12 + 8 * 8 * KT + kTcWarps * 8 * 48; }

D2A_HD int imin(int a, int b) { return a < b ? a : b; }

// out = a . b for row-major 3x3 matrices.
D2A_HD void matmul3(const float* a, const float* b, float* out) {
D2A_UNROLL
  for (int r = 0; r < 3; ++r) {
D2A_UNROLL
    for (int c = 0; c < 3; ++c) {
      out[r * 3 + c] = a[r * 3 + 0] * b[0 * 3 + c] + a[r * 3 + 1] * b[1 * 3 + c] +
                       a[r * 3 + 2] * b[2 * 3 + c];
    }
  }
}

// The threads of one fk body: a warp (JT = 32) or the block (JT = 64, two warps per body).
#pragma nv_exec_check_disable
template <int JT, class P>
D2A_HD void fk_sync(P& p) {
  if constexpr (JT == 32) {
    p.sync_warp();
  } else {
    p.sync_block();
  }
}

// Forward kinematics, JT (32 or 64 >= J) threads per body, thread j owns joint j. Mirrors
// lbs_torch.forward_kinematics: j_rest = j_template + j_shapedirs . betas[b], then level by
// level down `parents` (a body's joints in shared memory), posed joints -> joints[b], skinning
// transforms A[b, j] = [rot | pos - rot . j_rest] (3x4 row-major) -> transforms[b, j].
// JT = 32: a warp per body, synchronized by sync_warp; JT = 64: two warps, sync_block.
#pragma nv_exec_check_disable
template <int JT, class P>
D2A_HD void fk_body(P& p, const DeviceBody& body, const float* __restrict__ rotmats,
                    const float* __restrict__ betas, const float* __restrict__ transl, int batch,
                    float* __restrict__ joints_out, float* __restrict__ transforms) {
  static_assert(JT == 32 || JT == 64, "JT is a warp or two");
  constexpr int kBodies = kFkThreads / JT;
  const int J = body.num_joints, S = body.num_betas;
  const int slot = p.thread() / JT, j = p.thread() % JT;
  const int b = p.block_x() * kBodies + slot;
  float* s_rot = p.smem() + slot * JT * 15;  // (JT, 9) accumulated rotation (world)
  float* s_pos = s_rot + JT * 9;             // (JT, 3) posed position
  float* s_rest = s_pos + JT * 3;            // (JT, 3) rest joint of this body's shape
  const bool active = j < J && b < batch;
  float rj[9];  // rotmats[b, j]
  if (active) {
    const float* R = rotmats + (static_cast<size_t>(b) * J + j) * 9;
D2A_UNROLL
    for (int i = 0; i < 9; ++i) rj[i] = R[i];
    const float* beta = betas + static_cast<size_t>(b) * S;
    for (int c = 0; c < 3; ++c) {  // j_rest = j_template + j_shapedirs . beta
      const float* dirs = body.j_shapedirs + (j * 3 + c) * S;
      float blend = 0.f;
      for (int s = 0; s < S; ++s) blend += dirs[s] * beta[s];
      s_rest[j * 3 + c] = body.j_template[j * 3 + c] + blend;
    }
    if (j == 0) {  // root: rot = rotmats[b, 0], pos = transl[b]
D2A_UNROLL
      for (int i = 0; i < 9; ++i) s_rot[i] = rj[i];
      for (int c = 0; c < 3; ++c) s_pos[c] = transl[b * 3 + c];
    }
  }
  fk_sync<JT>(p);
  const int my_depth = active ? body.depth[j] : -1;
  for (int level = 1; level <= body.max_depth; ++level) {  // parents are final before children
    if (my_depth == level) {
      const int q = body.parents[j];
      const float* rp = s_rot + q * 9;
      matmul3(rp, rj, s_rot + j * 9);  // rot[j] = rot[q] . rotmats[b, j]
      float off[3];                    // offset = j_rest[j] - j_rest[q]
      for (int c = 0; c < 3; ++c) off[c] = s_rest[j * 3 + c] - s_rest[q * 3 + c];
      for (int r = 0; r < 3; ++r) {  // pos[j] = pos[q] + rot[q] . offset
        s_pos[j * 3 + r] =
            s_pos[q * 3 + r] + (rp[r * 3 + 0] * off[0] + rp[r * 3 + 1] * off[1] + rp[r * 3 + 2] * off[2]);
      }
    }
    fk_sync<JT>(p);
  }
  if (!active) return;
  float* A = transforms + (static_cast<size_t>(b) * J + j) * 12;
  float* out = joints_out + (static_cast<size_t>(b) * J + j) * 3;
  const float* rot = s_rot + j * 9;
  const float* rest = s_rest + j * 3;
  for (int r = 0; r < 3; ++r) {  // t = pos - rot . j_rest
    const float* row = rot + r * 3;
    const float pos = s_pos[j * 3 + r];
    A[r * 4 + 0] = row[0];
    A[r * 4 + 1] = row[1];
    A[r * 4 + 2] = row[2];
    A[r * 4 + 3] = pos - (row[0] * rest[0] + row[1] * rest[1] + row[2] * rest[2]);
    out[r] = pos;
  }
}

// Splits x into hi + lo, both TF32 (3xTF32: a.b ~ ahi.bhi + ahi.blo + alo.bhi, error ~2^-22
// relative instead of TF32's 2^-11, which would move Anny's shape blend by up to 1.2 mm).
#pragma nv_exec_check_disable
template <class P>
D2A_HD void split_tf32(const P& p, float x, uint32_t& hi, uint32_t& lo) {
  hi = p.tf32(x);
  float h;
  memcpy(&h, &hi, sizeof(h));
  lo = p.tf32(x - h);
}

// Skinning with the shape blend on tensor cores. A block = kTcWarps warps = 64 vertices, and a
// run of 8-body tiles (blockIdx.y * tiles_per_block ...). Per warp, 16 vertices:
//   the shape blend D (16 vertices x 8 bodies, per coordinate c) = shapedirs_c (16 x S) .
//   betas^T (S x 8) as KT k-steps of m16n8k8, 3xTF32; shapedirs' fragments are split once and
//   stay in registers for all of the block's tiles, betas' come from shared memory per tile;
//   each lane then skins the 4 (vertex, body) pairs its accumulators hold (vertices g, g + 8;
//   bodies 2t, 2t + 1): v_shaped = v_template + D, T = sum_k w_k A[body, bone_k],
//   verts = T[:, :3] . v_shaped + T[:, 3];
//   the warp stages its 8 x 16 x 3 outputs in shared memory and writes each body's 48
//   consecutive floats with coalesced stores.
#pragma nv_exec_check_disable
template <int KT, class P>
D2A_HD void skin_tc_body(P& p, const DeviceBody& body, const float* __restrict__ betas,
                         const float* __restrict__ transforms, int batch, int tiles_per_block,
                         float* __restrict__ verts) {
  const int V = body.num_vertices, J = body.num_joints, S = body.num_betas;
  const int lane = p.lane(), g = lane >> 2, t = lane & 3;
  float* s_A = p.smem();                           // (8, J, 12)
  float* s_beta = s_A + 8 * J * 12;                // (8, 8 KT), zero beyond S
  float* stage = s_beta + 8 * 8 * KT + p.warp() * 8 * 48;  // (8, 16 x 3) of this warp
  const int v0 = (p.block_x() * kTcWarps + p.warp()) * 16;
  const int rows[2] = {v0 + g, v0 + g + 8};

  uint32_t a_hi[3][KT][4], a_lo[3][KT][4];  // shapedirs fragments, rows = vertices, cols = betas
D2A_UNROLL
  for (int c = 0; c < 3; ++c) {
D2A_UNROLL
    for (int kt = 0; kt < KT; ++kt) {
D2A_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int v = rows[i & 1], s = kt * 8 + t + (i >> 1) * 4;
        const float x =
            v < V && s < S ? body.shapedirs_t[(static_cast<size_t>(s) * 3 + c) * V + v] : 0.f;
        split_tf32(p, x, a_hi[c][kt][i], a_lo[c][kt][i]);
      }
    }
  }
  float tmpl[2][3];
  uint2 bones[2];  // 8 bones per vertex, a byte each; weights are read per use (L1)
  int vrow[2];     // rows[r] clamped: rows past V compute garbage, never stored
D2A_UNROLL
  for (int r = 0; r < 2; ++r) {
    vrow[r] = rows[r] < V ? rows[r] : V - 1;
D2A_UNROLL
    for (int c = 0; c < 3; ++c) tmpl[r][c] = body.v_template_t[c * V + vrow[r]];
    bones[r] = reinterpret_cast<const uint2*>(body.skin_indices)[vrow[r]];
  }

  const int num_tiles = (batch + 7) / 8;
  const int tile_end = imin(num_tiles, (p.block_y() + 1) * tiles_per_block);
  for (int tile = p.block_y() * tiles_per_block; tile < tile_end; ++tile) {
    const int b0 = tile * 8, nb = imin(8, batch - b0);
    p.sync_block();  // the previous tile's readers of s_A / s_beta are done
    const float4* src = reinterpret_cast<const float4*>(transforms + static_cast<size_t>(b0) * J * 12);
    for (int i = p.thread(); i < nb * J * 3; i += kTcWarps * 32) {
      reinterpret_cast<float4*>(s_A)[i] = src[i];
    }
    for (int i = p.thread(); i < 8 * 8 * KT; i += kTcWarps * 32) {
      const int n = i / (8 * KT), s = i % (8 * KT);
      s_beta[i] = n < nb && s < S ? betas[static_cast<size_t>(b0 + n) * S + s] : 0.f;
    }
    p.sync_block();

    float acc[3][4] = {};  // acc[c][i]: blend of (vertex rows[i >> 1], body 2t + (i & 1))
D2A_UNROLL
    for (int kt = 0; kt < KT; ++kt) {
      uint32_t b_hi[2], b_lo[2];  // B[k][n] = betas[b0 + n, k]: b[0] at k = t, b[1] at t + 4
      split_tf32(p, s_beta[g * 8 * KT + kt * 8 + t], b_hi[0], b_lo[0]);
      split_tf32(p, s_beta[g * 8 * KT + kt * 8 + t + 4], b_hi[1], b_lo[1]);
D2A_UNROLL
      for (int c = 0; c < 3; ++c) {
        p.mma(acc[c], a_lo[c][kt], b_hi);  // small terms first
        p.mma(acc[c], a_hi[c][kt], b_lo);
        p.mma(acc[c], a_hi[c][kt], b_hi);
      }
    }

    // v_shaped of the lane's 4 pairs into the stage (each lane reads back only its own
    // entries), so that the skinning below can loop without indexing registers at run time.
D2A_UNROLL
    for (int i = 0; i < 4; ++i) {
      float* o = stage + (2 * t + (i & 1)) * 48 + (g + 8 * (i >> 1)) * 3;
D2A_UNROLL
      for (int c = 0; c < 3; ++c) o[c] = tmpl[i >> 1][c] + acc[c][i];
    }
D2A_UNROLL
    for (int r = 0; r < 2; ++r) {
D2A_UNROLL_NONE
      for (int h = 0; h < 2; ++h) {
        const int n = 2 * t + h;
        const float* A_n = s_A + n * J * 12;  // stale for n >= nb: computed, never stored
        float* o = stage + n * 48 + (g + 8 * r) * 3;
        const float4* wv = reinterpret_cast<const float4*>(body.skin_weights) + 2 * vrow[r];
        const float4 w_lo = wv[0], w_hi = wv[1];
        const float w[kMaxInfluences] = {w_lo.x, w_lo.y, w_lo.z, w_lo.w,
                                         w_hi.x, w_hi.y, w_hi.z, w_hi.w};
        float T[12] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
D2A_UNROLL
        for (int k = 0; k < kMaxInfluences; ++k) {
          if (w[k] == 0.f) continue;  // padding (and true zeros) add nothing
          const unsigned word = k < 4 ? bones[r].x : bones[r].y;
          const int bone = (word >> (8 * (k & 3))) & 0xff;
          const float4* a = reinterpret_cast<const float4*>(A_n + bone * 12);
          const float4 r0 = a[0], r1 = a[1], r2 = a[2];
          const float wk = w[k];
          T[0] += wk * r0.x; T[1] += wk * r0.y; T[2] += wk * r0.z; T[3] += wk * r0.w;
          T[4] += wk * r1.x; T[5] += wk * r1.y; T[6] += wk * r1.z; T[7] += wk * r1.w;
          T[8] += wk * r2.x; T[9] += wk * r2.y; T[10] += wk * r2.z; T[11] += wk * r2.w;
        }
        const float x = o[0], y = o[1], z = o[2];
        o[0] = T[0] * x + T[1] * y + T[2] * z + T[3];
        o[1] = T[4] * x + T[5] * y + T[6] * z + T[7];
        o[2] = T[8] * x + T[9] * y + T[10] * z + T[11];
      }
    }
    p.sync_warp();
    const int nv = imin(16, V - v0);  // this warp's vertices (<= 0: none)
    for (int i = lane; i < 8 * 48; i += 32) {
      const int n = i / 48, e = i % 48;
      if (n < nb && e < 3 * nv) verts[(static_cast<size_t>(b0 + n) * V + v0) * 3 + e] = stage[i];
    }
    p.sync_warp();  // the stage is rewritten by the next tile
  }
}

#ifdef __CUDACC__
// The GPU side of the policy.
struct DevicePolicy {
  __device__ int thread() const { return threadIdx.x; }
  __device__ int lane() const { return threadIdx.x & 31; }
  __device__ int warp() const { return threadIdx.x >> 5; }
  __device__ int block_x() const { return blockIdx.x; }
  __device__ int block_y() const { return blockIdx.y; }
  __device__ void sync_block() const { __syncthreads(); }
  __device__ void sync_warp() const { __syncwarp(); }
  __device__ float* smem() const {
    extern __shared__ float4 d2a_dynamic_smem[];
    return reinterpret_cast<float*>(d2a_dynamic_smem);
  }
  __device__ uint32_t tf32(float x) const {
#if __CUDA_ARCH__ >= 800
    uint32_t u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(x));
    return u;
#else
    __trap();  // the launcher never picks kTensorCore below compute capability 8.0
    return 0;
#endif
  }
  __device__ void mma(float* d, const uint32_t* a, const uint32_t* b) const {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
    __trap();
#endif
  }
};
#endif

}  // namespace d2a
