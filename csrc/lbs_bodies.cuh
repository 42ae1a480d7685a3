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
constexpr int kSkinThreads = 256; // simt skin: one vertex per thread

// Shared floats of one fk block: per body (JT, 9) rotations, (JT, 3) positions, (JT, 3) rest.
constexpr int fk_smem_floats() { return kFkThreads * 15; }

// Shared floats of one tc skin block: transforms of 8 bodies (8, J, 12), their betas (8, 8 KT)
// and one staging tile per warp (8 bodies, 16 vertices x 3).
constexpr int tc_smem_floats(int J, int KT, int warps) {
  return 8 * J * 12 + 8 * 8 * KT + warps * 8 * 48;
}

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

// One vertex skinned for NQ bodies: out[q] = sum_k w[k] A_q[bone_k] . (p[q], 1) (p, out: NQ x 3
// floats, local arrays, kept in registers when inlined with constant indices), with A_q =
// A + q * stride the transforms (J, 3, 4) of body q (16-byte aligned) and bone k in byte k of
// `bones`. The influence loop is outside the body loop, so a weight's test and its bone are
// decoded once for the NQ bodies. Zero weights are skipped: padding, and true zeros add nothing
// (unless A holds inf/NaN). Per influence and body: three 16-byte loads and 12 FMAs (the
// point transformed by A_q, then weighted), the same sum as the oracle's
// (sum_k w_k A_k) . (p, 1) up to fp32 rounding.
template <int NQ>
D2A_HD void skin_vertex(const float* A, int stride, const float* w, uint2 bones, const float* p,
                        float* out) {
D2A_UNROLL
  for (int i = 0; i < NQ * 3; ++i) out[i] = 0.f;
D2A_UNROLL
  for (int k = 0; k < kMaxInfluences; ++k) {
    const float wk = w[k];
    if (wk == 0.f) continue;
    const unsigned word = k < 4 ? bones.x : bones.y;
    const float* Ak = A + ((word >> (8 * (k & 3))) & 0xff) * 12;
D2A_UNROLL
    for (int q = 0; q < NQ; ++q) {
      const float4* a = reinterpret_cast<const float4*>(Ak + q * stride);
      const float4 r0 = a[0], r1 = a[1], r2 = a[2];  // rows of A_q[bone] (3, 4)
      const float x = p[3 * q], y = p[3 * q + 1], z = p[3 * q + 2];
      // translation first, so that each row is three FMAs (and one more for the weight)
      out[3 * q + 0] += wk * (r0.w + r0.x * x + r0.y * y + r0.z * z);
      out[3 * q + 1] += wk * (r1.w + r1.x * x + r1.y * y + r1.z * z);
      out[3 * q + 2] += wk * (r2.w + r2.x * x + r2.y * y + r2.z * z);
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
            s_pos[q * 3 + r] +
            (rp[r * 3 + 0] * off[0] + rp[r * 3 + 1] * off[1] + rp[r * 3 + 2] * off[2]);
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

// Bodies per simt tile for a batch of B (B >= 8: 8, >= 4: 4, else 1).
constexpr int simt_tile(int batch) { return batch >= 8 ? 8 : (batch >= 4 ? 4 : 1); }

// Shared floats of one simt skin block.
constexpr int simt_smem_floats(int BT, int J, int S) { return BT * (J * 12 + S); }

// beta[bt] = row[bt] for bt < BT from 16-byte-aligned shared memory (LDS.128 when BT % 4 == 0).
template <int BT>
D2A_HD void load_row(const float* row, float* beta) {
  if constexpr (BT % 4 == 0) {
D2A_UNROLL
    for (int q = 0; q < BT / 4; ++q) {
      const float4 v = reinterpret_cast<const float4*>(row)[q];
      beta[4 * q + 0] = v.x;
      beta[4 * q + 1] = v.y;
      beta[4 * q + 2] = v.z;
      beta[4 * q + 3] = v.w;
    }
  } else {
D2A_UNROLL
    for (int bt = 0; bt < BT; ++bt) beta[bt] = row[bt];
  }
}

// Copies the nb bodies' transforms (nb, J, 12) starting at body b0 into shared memory, 16 bytes
// per thread and step, `threads` threads (b0 * J * 12 floats is a multiple of 4: aligned).
#pragma nv_exec_check_disable
template <class P>
D2A_HD void copy_transforms(const P& p, float* s_A, const float* transforms, int b0, int nb,
                            int J, int threads) {
  const float4* src =
      reinterpret_cast<const float4*>(transforms + static_cast<size_t>(b0) * J * 12);
  for (int i = p.thread(); i < nb * J * 3; i += threads) reinterpret_cast<float4*>(s_A)[i] = src[i];
}

// A vertex's skinning data: its 8 bones (a byte each) and 8 weights (two 16-byte loads).
struct VertexSkin {
  uint2 bones;
  float w[kMaxInfluences];
};

D2A_HD VertexSkin vertex_skin(const DeviceBody& body, int v) {
  VertexSkin out;
  out.bones = reinterpret_cast<const uint2*>(body.skin_indices)[v];
  const float4 lo = reinterpret_cast<const float4*>(body.skin_weights)[2 * v];
  const float4 hi = reinterpret_cast<const float4*>(body.skin_weights)[2 * v + 1];
  const float w[kMaxInfluences] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
  memcpy(out.w, w, sizeof(w));
  return out;
}

// Skinning on CUDA cores (SkinVariant::kSimt), one thread per vertex v (kSkinThreads per block)
// and a tile of BT bodies (blockIdx.y): the vertex's body data are read once and reused for the
// BT bodies. Shared memory: the tile's transforms (BT, J, 12), then its betas transposed (S, BT).
#pragma nv_exec_check_disable
template <int BT, class P>
D2A_HD void skin_simt_body(P& p, const DeviceBody& body, const float* __restrict__ betas,
                           const float* __restrict__ transforms, int batch,
                           float* __restrict__ verts) {
  const int V = body.num_vertices, J = body.num_joints, S = body.num_betas;
  const int b0 = p.block_y() * BT;
  const int nb = imin(BT, batch - b0);
  float* s_A = p.smem();
  float* s_beta = s_A + BT * J * 12;
  copy_transforms(p, s_A, transforms, b0, nb, J, kSkinThreads);
  for (int i = p.thread(); i < S * BT; i += kSkinThreads) {  // s_beta[s, bt] = betas[b0 + bt, s]
    const int s = i / BT, bt = i % BT;
    s_beta[i] = bt < nb ? betas[static_cast<size_t>(b0 + bt) * S + s] : 0.f;
  }
  p.sync_block();
  const int v = p.block_x() * kSkinThreads + p.thread();
  if (v >= V) return;

  float blend[BT][3];  // v_template[v] + shapedirs[v] . betas[b0 + bt]
  const float tx = body.v_template_t[v], ty = body.v_template_t[V + v],
              tz = body.v_template_t[2 * V + v];
D2A_UNROLL
  for (int bt = 0; bt < BT; ++bt) blend[bt][0] = tx, blend[bt][1] = ty, blend[bt][2] = tz;
  for (int s = 0; s < S; ++s) {
    const float* dirs = body.shapedirs_t + static_cast<size_t>(s) * 3 * V + v;  // (3, V) slice
    const float dx = dirs[0], dy = dirs[V], dz = dirs[2 * V];
    float beta[BT];  // betas[b0 + bt, s]
    load_row<BT>(s_beta + s * BT, beta);
D2A_UNROLL
    for (int bt = 0; bt < BT; ++bt) {
      blend[bt][0] += dx * beta[bt];
      blend[bt][1] += dy * beta[bt];
      blend[bt][2] += dz * beta[bt];
    }
  }
  const VertexSkin vs = vertex_skin(body, v);
D2A_UNROLL
  for (int bt = 0; bt < BT; ++bt) {  // one body at a time: 8 bodies' outputs at once would spill
    if (bt >= nb) break;
    float o[3];  // a local array: accumulating in `verts` itself would store at every influence
    skin_vertex<1>(s_A + bt * J * 12, 0, vs.w, vs.bones, blend[bt], o);
    float* dst = verts + (static_cast<size_t>(b0 + bt) * V + v) * 3;
    dst[0] = o[0];
    dst[1] = o[1];
    dst[2] = o[2];
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

// shapedirs fragments (A of the mma) of the 16 vertices from v0, rows = vertices, cols = betas,
// per coordinate and k-step, split in TF32 hi + lo: a[i] = A[g + 8 (i & 1)][t + 4 (i >> 1)].
#pragma nv_exec_check_disable
template <int KT, class P>
D2A_HD void tc_shapedirs_fragments(const P& p, const DeviceBody& body, int v0,
                                   uint32_t (&a_hi)[3][KT][4], uint32_t (&a_lo)[3][KT][4]) {
  const int V = body.num_vertices, S = body.num_betas, g = p.lane() >> 2, t = p.lane() & 3;
D2A_UNROLL
  for (int c = 0; c < 3; ++c) {
D2A_UNROLL
    for (int kt = 0; kt < KT; ++kt) {
D2A_UNROLL
      for (int i = 0; i < 4; ++i) {
        const int v = v0 + g + 8 * (i & 1), s = kt * 8 + t + (i >> 1) * 4;
        const float x =
            v < V && s < S ? body.shapedirs_t[(static_cast<size_t>(s) * 3 + c) * V + v] : 0.f;
        split_tf32(p, x, a_hi[c][kt][i], a_lo[c][kt][i]);
      }
    }
  }
}

// The shape blend of the warp's 16 vertices and the tile's 8 bodies, per coordinate c:
// acc[c][i] = D_c[g + 8 (i >> 1)][2t + (i & 1)], D_c = shapedirs_c . betas^T, 3xTF32.
#pragma nv_exec_check_disable
template <int KT, class P>
D2A_HD void tc_shape_blend(P& p, const float* s_beta, const uint32_t (&a_hi)[3][KT][4],
                           const uint32_t (&a_lo)[3][KT][4], float (&acc)[3][4]) {
  const int g = p.lane() >> 2, t = p.lane() & 3;
D2A_UNROLL
  for (int c = 0; c < 3; ++c) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.f;
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
}

// Skinning with the shape blend on tensor cores. A block = `warps` warps = 16 x warps vertices
// (blockDim.x = 32 x warps), and a run of 8-body tiles (blockIdx.y * tiles_per_block ...). Every
// block copies each of its tiles' transforms into shared memory, so more warps per block means
// less of that traffic (Anny at batch 256: 66 MB from L2 with 4 warps, 33 MB with 8).
// Per warp, 16 vertices and per tile:
//   1. the shape blend D (16 vertices x 8 bodies, per coordinate) = shapedirs_c (16 x S) .
//      betas^T (S x 8), KT k-steps of m16n8k8 in 3xTF32; shapedirs' fragments are split once
//      and stay in registers for all of the block's tiles, betas come from shared memory;
//   2. the accumulators go through a per-warp shared stage (8 bodies x 16 vertices x 3) to a
//      layout where lane = vertex (lane % 16) and bodies lane / 16 + 2q, q < 4: the lanes of a
//      half-warp then read one body's transforms at neighbouring vertices' bones (few distinct
//      shared-memory addresses per load), and a lane decodes its vertex's weights once;
//   3. skin_vertex<4>: v_shaped = v_template + D, verts = sum_k w_k A[body, bone_k] . v_shaped.
#pragma nv_exec_check_disable
template <int KT, class P>
D2A_HD void skin_tc_body(P& p, const DeviceBody& body, const float* __restrict__ betas,
                         const float* __restrict__ transforms, int batch, int tiles_per_block,
                         int warps, float* __restrict__ verts) {
  const int V = body.num_vertices, J = body.num_joints, S = body.num_betas;
  const int lane = p.lane(), g = lane >> 2, t = lane & 3;
  float* s_A = p.smem();                                   // (8, J, 12)
  float* s_beta = s_A + 8 * J * 12;                        // (8, 8 KT), zero beyond S
  float* stage = s_beta + 8 * 8 * KT + p.warp() * 8 * 48;  // (8, 16, 3) of this warp
  const int v0 = (p.block_x() * warps + p.warp()) * 16;

  uint32_t a_hi[3][KT][4], a_lo[3][KT][4];
  tc_shapedirs_fragments<KT>(p, body, v0, a_hi, a_lo);
  // Step 2's lane: vertex lv (clamped: rows past V compute garbage, never stored), bodies hb + 2q.
  const int lv = lane & 15, hb = lane >> 4, v = v0 + lv < V ? v0 + lv : V - 1;
  const bool store = v0 + lv < V;
  float tmpl[3];
D2A_UNROLL
  for (int c = 0; c < 3; ++c) tmpl[c] = body.v_template_t[c * V + v];
  const VertexSkin vs = vertex_skin(body, v);

  const int num_tiles = (batch + 7) / 8;
  const int tile_end = imin(num_tiles, (p.block_y() + 1) * tiles_per_block);
  for (int tile = p.block_y() * tiles_per_block; tile < tile_end; ++tile) {
    const int b0 = tile * 8, nb = imin(8, batch - b0);
    p.sync_block();  // the previous tile's readers of s_A / s_beta are done
    copy_transforms(p, s_A, transforms, b0, nb, J, warps * 32);
    for (int i = p.thread(); i < 8 * 8 * KT; i += warps * 32) {
      const int n = i / (8 * KT), s = i % (8 * KT);
      s_beta[i] = n < nb && s < S ? betas[static_cast<size_t>(b0 + n) * S + s] : 0.f;
    }
    p.sync_block();

    float acc[3][4];
    tc_shape_blend<KT>(p, s_beta, a_hi, a_lo, acc);
D2A_UNROLL
    for (int i = 0; i < 4; ++i) {
      float* o = stage + (2 * t + (i & 1)) * 48 + (g + 8 * (i >> 1)) * 3;
D2A_UNROLL
      for (int c = 0; c < 3; ++c) o[c] = acc[c][i];
    }
    p.sync_warp();
    float pts[4][3], out[4][3];
D2A_UNROLL
    for (int q = 0; q < 4; ++q) {
D2A_UNROLL
      for (int c = 0; c < 3; ++c) pts[q][c] = tmpl[c] + stage[(hb + 2 * q) * 48 + lv * 3 + c];
    }
    p.sync_warp();  // the stage is rewritten by the next tile
    // s_A of bodies >= nb is stale: computed, never stored
    skin_vertex<4>(s_A + hb * J * 12, 2 * J * 12, vs.w, vs.bones, &pts[0][0], &out[0][0]);
    if (store) {
D2A_UNROLL
      for (int q = 0; q < 4; ++q) {
        const int n = hb + 2 * q;
        if (n >= nb) break;
        float* o = verts + (static_cast<size_t>(b0 + n) * V + v) * 3;
        o[0] = out[q][0];
        o[1] = out[q][1];
        o[2] = out[q][2];
      }
    }
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
