// CPU emulation of the LBS kernel bodies in lbs_bodies.cuh (fk_body, skin_simt_body,
// skin_tc_body): every CUDA
// thread of a block is a std::thread, __syncthreads / __syncwarp are barriers, mma.sync trades
// fragments through the warp's scratch with PTX's m16n8k8 TF32 layout, cvt.rna.tf32 is rounded
// in software. The kernels' own source runs here, so their indexing, tails, synchronisation and
// 3xTF32 numerics are checked on a machine without a GPU (tests/test_cuda_kernel.py builds this
// with nvcc and compares with the torch oracle). What it cannot check: timing, the real
// tensor-core accumulation order, and launch limits (registers, shared memory).
//
//   emulate_lbs DIR simt|tc TILES_PER_BLOCK WARPS   (the last two: tc only)
// reads DIR/dims.txt ("V J S K B") and DIR/<name>.bin (little-endian, C order): v_template,
// shapedirs, j_template, j_shapedirs, skin_weights, rotmats, betas, transl (float32), parents,
// skin_indices (int64), and, if DIR/vertex_index.bin exists (int64, N given as a sixth number in
// dims.txt), skins only those vertices (select_vertices); writes DIR/verts.bin (B, V or N, 3) and
// DIR/joints.bin (B, J, 3), float32.
#include <array>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "body_buffers.h"
#include "lbs_bodies.cuh"

namespace {

class Barrier {  // reusable: the n-th arrival releases the others
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_, arrived_ = 0;
  long long generation_ = 0;
};

struct HostBlock {
  HostBlock(int threads, size_t smem_floats)
      : block(threads), smem((smem_floats + 3) / 4), frag(threads) {
    for (int w = 0; w < threads / 32; ++w) warps.push_back(std::make_unique<Barrier>(32));
    std::memset(smem.data(), 0xff, smem.size() * sizeof(float4));  // NaN: stale reads show
  }
  Barrier block;
  std::vector<std::unique_ptr<Barrier>> warps;
  std::vector<float4> smem;
  std::vector<std::array<uint32_t, 6>> frag;  // per thread: a[0..3], b[0..1] of an mma
};

float as_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

struct HostPolicy {
  HostBlock* blk;
  int tid, bx, by;
  int thread() const { return tid; }
  int lane() const { return tid & 31; }
  int warp() const { return tid >> 5; }
  int block_x() const { return bx; }
  int block_y() const { return by; }
  void sync_block() const { blk->block.wait(); }
  void sync_warp() const { blk->warps[tid >> 5]->wait(); }
  float* smem() const { return reinterpret_cast<float*>(blk->smem.data()); }
  uint32_t tf32(float x) const {  // cvt.rna.tf32.f32 for finite x: nearest, ties away from 0
    uint32_t u;
    std::memcpy(&u, &x, sizeof(u));
    return (u + 0x1000u) & 0xffffe000u;
  }
  void mma(float* d, const uint32_t* a, const uint32_t* b) const {
    blk->frag[tid] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    sync_warp();
    const int base = tid & ~31, g = lane() >> 2, t = lane() & 3;
    const auto A = [&](int m, int k) {  // the hardware reads the top 19 bits (truncation)
      return as_float(blk->frag[base + (m % 8) * 4 + k % 4][(m >= 8) + 2 * (k >= 4)] & 0xffffe000u);
    };
    const auto B = [&](int k, int n) {
      return as_float(blk->frag[base + n * 4 + k % 4][4 + (k >= 4)] & 0xffffe000u);
    };
    const int out[4][2] = {{g, 2 * t}, {g, 2 * t + 1}, {g + 8, 2 * t}, {g + 8, 2 * t + 1}};
    for (int i = 0; i < 4; ++i) {
      float sum = d[i];
      for (int k = 0; k < 8; ++k) sum += A(out[i][0], k) * B(k, out[i][1]);
      d[i] = sum;
    }
    sync_warp();  // the scratch is rewritten by the next mma
  }
};

// Runs body(policy) for every thread of every block of a (grid_x, grid_y) grid, a block at a time.
template <class Body>
void run_grid(int grid_x, int grid_y, int threads, size_t smem_floats, const Body& body) {
  for (int by = 0; by < grid_y; ++by) {
    for (int bx = 0; bx < grid_x; ++bx) {
      HostBlock blk(threads, smem_floats);
      std::vector<std::thread> pool;
      for (int tid = 0; tid < threads; ++tid) {
        pool.emplace_back([&, tid] {
          HostPolicy p{&blk, tid, bx, by};
          body(p);
        });
      }
      for (auto& th : pool) th.join();
    }
  }
}

template <typename T>
std::vector<T> read_array(const std::string& path, size_t count) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  std::vector<T> v(count);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(count * sizeof(T)));
  if (f.gcount() != static_cast<std::streamsize>(count * sizeof(T))) {
    throw std::runtime_error(path + " is shorter than " + std::to_string(count) + " values");
  }
  return v;
}

void write_array(const std::string& path, const std::vector<float>& v) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  if (!f) throw std::runtime_error("cannot write " + path);
}

template <int BT>
void skin_simt(const d2a::DeviceBody& body, const float* betas, const float* transforms,
               int batch, float* verts) {
  run_grid((body.num_vertices + d2a::kSkinThreads - 1) / d2a::kSkinThreads, (batch + BT - 1) / BT,
           d2a::kSkinThreads, d2a::simt_smem_floats(BT, body.num_joints, body.num_betas),
           [&](HostPolicy& p) {
             d2a::skin_simt_body<BT>(p, body, betas, transforms, batch, verts);
           });
}

template <int KT>
void skin(const d2a::DeviceBody& body, const float* betas, const float* transforms, int batch,
          int per, int warps, float* verts) {
  const int grid_x = (body.num_vertices + warps * 16 - 1) / (warps * 16);
  const int tiles = (batch + 7) / 8;
  run_grid(grid_x, (tiles + per - 1) / per, warps * 32,
           d2a::tc_smem_floats(body.num_joints, KT, warps), [&](HostPolicy& p) {
             d2a::skin_tc_body<KT>(p, body, betas, transforms, batch, per, warps, verts);
           });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s DIR simt|tc TILES_PER_BLOCK WARPS\n", argv[0]);
    return 2;
  }
  try {
    const std::string dir = std::string(argv[1]) + "/", variant = argv[2];
    const int per = std::stoi(argv[3]), warps = std::stoi(argv[4]);
    if (variant != "simt" && variant != "tc") throw std::runtime_error("variant: simt or tc");
    int V = 0, J = 0, S = 0, K = 0, B = 0;
    std::ifstream dims(dir + "dims.txt");
    if (!(dims >> V >> J >> S >> K >> B)) throw std::runtime_error("bad dims.txt");
    int N = 0;  // optional: the number of selected vertices
    dims >> N;
    if (variant == "tc" && (S > d2a::kTcMaxBetas || per < 1 || warps < 1 ||
                            warps > d2a::kTcMaxWarps)) {
      throw std::runtime_error("tc needs S <= 32, TILES_PER_BLOCK >= 1, 1 <= WARPS <= 16");
    }
    d2a::HostBody h;
    h.num_vertices = V;
    h.num_joints = J;
    h.num_betas = S;
    h.num_influences = K;
    const size_t v = V, j = J, s = S, k = K, b = B;
    h.v_template = read_array<float>(dir + "v_template.bin", v * 3);
    h.shapedirs = read_array<float>(dir + "shapedirs.bin", v * 3 * s);
    h.j_template = read_array<float>(dir + "j_template.bin", j * 3);
    h.j_shapedirs = read_array<float>(dir + "j_shapedirs.bin", j * 3 * s);
    h.parents = read_array<int64_t>(dir + "parents.bin", j);
    h.skin_indices = read_array<int64_t>(dir + "skin_indices.bin", v * k);
    h.skin_weights = read_array<float>(dir + "skin_weights.bin", v * k);
    const auto rotmats = read_array<float>(dir + "rotmats.bin", b * j * 9);
    const auto betas = read_array<float>(dir + "betas.bin", b * s);
    const auto transl = read_array<float>(dir + "transl.bin", b * 3);
    d2a::validate_host_body(h, B);
    if (N > 0) h = d2a::select_vertices(h, read_array<int64_t>(dir + "vertex_index.bin", N));
    const d2a::DeviceLayout layout = d2a::device_layout(h);
    const d2a::DeviceBody body = layout.view(h);

    const size_t nv = h.num_vertices;
    std::vector<float> joints(b * j * 3), transforms(b * j * 12), verts(b * nv * 3, NAN);
    const auto fk = [&](auto jt) {
      constexpr int JT = decltype(jt)::value;
      constexpr int kBodies = d2a::kFkThreads / JT;
      run_grid((B + kBodies - 1) / kBodies, 1, d2a::kFkThreads, d2a::fk_smem_floats(),
               [&](HostPolicy& p) {
                 d2a::fk_body<JT>(p, body, rotmats.data(), betas.data(), transl.data(), B,
                                  joints.data(), transforms.data());
               });
    };
    if (J <= 32) {
      fk(std::integral_constant<int, 32>{});
    } else {
      fk(std::integral_constant<int, 64>{});
    }
    if (variant == "simt") {
      const int bt = d2a::simt_tile(B);
      if (bt == 8) skin_simt<8>(body, betas.data(), transforms.data(), B, verts.data());
      if (bt == 4) skin_simt<4>(body, betas.data(), transforms.data(), B, verts.data());
      if (bt == 1) skin_simt<1>(body, betas.data(), transforms.data(), B, verts.data());
    } else switch ((S + 7) / 8) {
      case 1: skin<1>(body, betas.data(), transforms.data(), B, per, warps, verts.data()); break;
      case 2: skin<2>(body, betas.data(), transforms.data(), B, per, warps, verts.data()); break;
      case 3: skin<3>(body, betas.data(), transforms.data(), B, per, warps, verts.data()); break;
      default: skin<4>(body, betas.data(), transforms.data(), B, per, warps, verts.data()); break;
    }
    write_array(dir + "verts.bin", verts);
    write_array(dir + "joints.bin", joints);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "emulate_lbs: %s\n", e.what());
    return 1;
  }
  return 0;
}
