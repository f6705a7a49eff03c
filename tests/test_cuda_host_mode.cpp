// The host execution mode's own machinery (cuda/host_mode/): the PTX fragment tables against entries worked
// out by hand from the PTX ISA's figures, the emulated mma and ldmatrix against plain matrix arithmetic, and
// the scheduler's barriers, warp collectives, cp.async ordering and failure reports, each through a small
// kernel. The kernels themselves run under the scenario list in test_cuda_host (tests/gpu driver).
#include <catch2/catch_test_macros.hpp>

#include <cstring>
#include <vector>

#include "host_mode/device.hpp"
#include "host_mode/ptx_fragments.hpp"

namespace ptx = redknot::cuda::host::ptx;
using redknot::cuda::host::Launch;

namespace {

bool same(ptx::Elem a, int row, int col) { return a.row == row && a.col == col; }

std::uint16_t bf16(float x) { return redknot::BFloat16::from_float(x); }
std::uint32_t pack(float lo, float hi) {
  return static_cast<std::uint32_t>(bf16(lo)) | static_cast<std::uint32_t>(bf16(hi)) << 16;
}

}  // namespace

TEST_CASE("PTX fragment tables: entries worked out by hand", "[cuda_host]") {
  // Lane 5: groupID 1, threadID_in_group 1.
  CHECK(same(ptx::mma_a(5, 0, 0), 1, 2));
  CHECK(same(ptx::mma_a(5, 0, 1), 1, 3));
  CHECK(same(ptx::mma_a(5, 1, 0), 9, 2));
  CHECK(same(ptx::mma_a(5, 2, 1), 1, 11));
  CHECK(same(ptx::mma_a(5, 3, 0), 9, 10));
  CHECK(same(ptx::mma_b(5, 0, 0), 2, 1));
  CHECK(same(ptx::mma_b(5, 1, 1), 11, 1));
  CHECK(same(ptx::mma_c(5, 1), 1, 3));
  CHECK(same(ptx::mma_c(5, 2), 9, 2));
  // Lane 30: groupID 7, threadID_in_group 2.
  CHECK(same(ptx::mma_a(30, 3, 1), 15, 13));
  CHECK(same(ptx::mma_b(30, 1, 0), 12, 7));
  CHECK(same(ptx::mma_c(30, 3), 15, 5));
  CHECK(same(ptx::ldmatrix(30, 1, false), 7, 5));
  CHECK(same(ptx::ldmatrix(30, 1, true), 5, 7));
  // Every element of A, B and C is held by exactly one (lane, register, half).
  int a[16][16] = {}, b[16][8] = {}, c[16][8] = {};
  for (int l = 0; l < 32; ++l) {
    for (int r = 0; r < 4; ++r)
      for (int h = 0; h < 2; ++h) {
        const auto e = ptx::mma_a(l, r, h);
        ++a[e.row][e.col];
      }
    for (int r = 0; r < 2; ++r)
      for (int h = 0; h < 2; ++h) {
        const auto e = ptx::mma_b(l, r, h);
        ++b[e.row][e.col];
      }
    for (int i = 0; i < 4; ++i) {
      const auto e = ptx::mma_c(l, i);
      ++c[e.row][e.col];
    }
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) CHECK(a[i][j] == 1);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) CHECK((b[i][j] == 1 && c[i][j] == 1));
}

TEST_CASE("emulated mma.m16n8k16 and ldmatrix equal plain matrix arithmetic", "[cuda_host]") {
  // Small integers: exact in bf16 and in fp32 sums.
  float A[16][16], B[16][8], C[16][8];
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k) A[i][k] = static_cast<float>((i * 3 + k * 5) % 7 - 3);
  for (int k = 0; k < 16; ++k)
    for (int j = 0; j < 8; ++j) B[k][j] = static_cast<float>((k * 2 + j * 7) % 5 - 2);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) C[i][j] = static_cast<float>(i - j);
  ptx::MmaOperands ops[32];
  for (int l = 0; l < 32; ++l) {
    for (int r = 0; r < 4; ++r) {
      const auto e0 = ptx::mma_a(l, r, 0), e1 = ptx::mma_a(l, r, 1);
      ops[l].a[r] = pack(A[e0.row][e0.col], A[e1.row][e1.col]);
    }
    for (int r = 0; r < 2; ++r) {
      const auto e0 = ptx::mma_b(l, r, 0), e1 = ptx::mma_b(l, r, 1);
      ops[l].b[r] = pack(B[e0.row][e0.col], B[e1.row][e1.col]);
    }
  }
  for (int l = 0; l < 32; ++l) {
    float d[4];
    for (int i = 0; i < 4; ++i) d[i] = C[ptx::mma_c(l, i).row][ptx::mma_c(l, i).col];
    ptx::mma_16816(ops, l, true, d);
    for (int i = 0; i < 4; ++i) {
      const auto e = ptx::mma_c(l, i);
      float want = C[e.row][e.col];
      for (int k = 0; k < 16; ++k) want += A[e.row][k] * B[k][e.col];
      CHECK(d[i] == want);
    }
  }
  // ldmatrix x4: four 8x8 matrices M_i[r][c] = 100 i + 8 r + c in rows of a 16-bit buffer.
  std::uint16_t buf[4][8][8];
  const void* rows[32];
  for (int i = 0; i < 4; ++i)
    for (int r = 0; r < 8; ++r) {
      for (int c = 0; c < 8; ++c) buf[i][r][c] = static_cast<std::uint16_t>(100 * i + 8 * r + c);
      rows[8 * i + r] = buf[i][r];
    }
  for (int l = 0; l < 32; ++l)
    for (const bool trans : {false, true}) {
      std::uint32_t reg[4];
      ptx::ldmatrix_x4(rows, l, trans, reg);
      for (int i = 0; i < 4; ++i) {
        const int r = l / 4, c = 2 * (l % 4);
        const std::uint32_t want = trans ? buf[i][c][r] | static_cast<std::uint32_t>(buf[i][c + 1][r]) << 16
                                         : buf[i][r][c] | static_cast<std::uint32_t>(buf[i][r][c + 1]) << 16;
        CHECK(reg[i] == want);
      }
    }
}

namespace {

// Each thread writes its id to shared memory; after the barrier every thread sums all of them.
void barrier_kernel(int* out) {
  __shared__ int s[128];
  const int t = static_cast<int>(threadIdx.x);
  s[t] = t;
  __syncthreads();
  int sum = 0;
  for (int i = 0; i < 128; ++i) sum += s[i];
  out[blockIdx.x * 128 + t] = sum;
}

// The same without the barrier: in one of the two thread orders a thread reads before others wrote.
void racy_kernel(int* out) {
  __shared__ int s[128];
  const int t = static_cast<int>(threadIdx.x);
  s[t] = t + static_cast<int>(blockIdx.x) * 1000;
  int sum = 0;
  for (int i = 0; i < 128; ++i) sum += s[i];
  out[blockIdx.x * 128 + t] = sum;
}

void warp_kernel(int* out) {
  const int t = static_cast<int>(threadIdx.x);
  int v = t;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const unsigned odd = __ballot_sync(0xffffffffu, t % 2);
  out[t] = v + static_cast<int>(odd == 0xaaaaaaaau) + 10000 * __shfl_up_sync(0xffffffffu, t, 1);
}

// Half of each warp waits at a barrier, the other half at a shuffle: neither can complete.
void divergent_kernel(int* out) {
  if (threadIdx.x % 32 < 16)
    __syncthreads();
  else
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

// cp.async data is only there after the wait that covers it.
void cp_async_kernel(int* out, const int* src) {
  alignas(16) __shared__ int s[4];
  if (threadIdx.x == 0) {
    s[0] = -1;
    redknot::cuda::host::cp_async(s, src, 16);
    redknot::cuda::host::cp_async_commit();
    out[0] = s[0];  // before the wait: the old value
    redknot::cuda::host::cp_async_wait(0);
    out[1] = s[0];
  }
}

}  // namespace

TEST_CASE("host-mode scheduler: barriers, races, warp collectives, cp.async, deadlocks", "[cuda_host]") {
  std::vector<int> out(2 * 128, 0);
  Launch(2, 128, 0, nullptr).of(barrier_kernel)(out.data());
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int x : out) CHECK(x == 127 * 128 / 2);

  Launch(2, 128, 0, nullptr).of(racy_kernel)(out.data());
  bool some_wrong = false;
  for (int b = 0; b < 2; ++b)
    for (int t = 0; t < 128; ++t) some_wrong |= out[b * 128 + t] != 127 * 128 / 2 + 128 * 1000 * b;
  CHECK(some_wrong);

  std::vector<int> w(32);
  Launch(1, 32, 0, nullptr).of(warp_kernel)(w.data());
  REQUIRE(cudaGetLastError() == cudaSuccess);
  for (int t = 0; t < 32; ++t) CHECK(w[t] == 31 * 32 / 2 + 1 + 10000 * (t == 0 ? 0 : t - 1));

  Launch(1, 128, 0, nullptr).of(divergent_kernel)(out.data());
  CHECK(cudaGetLastError() == cudaErrorLaunchFailure);

  // CTAs take the four schedules in turn: copies at their wait (stale before it) and at issue.
  const int src[4] = {7, 8, 9, 10};
  int stale = 0, early = 0;
  for (int i = 0; i < 4; ++i) {
    std::vector<int> c(2);
    Launch(1, 32, 0, nullptr).of(cp_async_kernel)(c.data(), src);
    stale += c[0] == -1;
    early += c[0] == 7;
    CHECK(c[1] == 7);
  }
  CHECK(stale == 2);
  CHECK(early == 2);
}
