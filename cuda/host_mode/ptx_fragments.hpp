// Host execution mode: the register fragments of ldmatrix and mma.sync.m16n8k16 as the PTX ISA defines them
// (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" for .f16/.bf16 A and B and .f32
// C/D, and the ldmatrix instruction's fragment figure).
// With groupID = lane >> 2 and threadID_in_group = lane % 4:
//   A (16x16, .row): register r holds two elements; r = 0: row g, cols 2t, 2t+1; r = 1: row g + 8, same cols;
//                    r = 2: row g, cols 2t + 8, 2t + 9; r = 3: row g + 8, cols 2t + 8, 2t + 9.
//   B (16x8, .col):  r = 0: rows (k) 2t, 2t+1 of col (n) g; r = 1: rows 2t + 8, 2t + 9 of col g.
//   C, D (16x8 f32): element i = 0, 1: row g, cols 2t, 2t+1; i = 2, 3: row g + 8, cols 2t, 2t+1.
//   ldmatrix .m8n8 .b16: threads 8i..8i+7 give the row addresses of matrix i; register i of lane l holds row
//                    l / 4, cols 2 (l % 4), 2 (l % 4) + 1 of matrix i (.trans: the transposed matrix's).
// The lower-numbered element of a pair is in the low 16 bits. Plain functions: tests/test_cuda_host_mode.cpp
// checks them against hand-computed matrices.
#pragma once

#include <cstdint>
#include <cstring>

#include "redknot/dtype.hpp"

namespace redknot::cuda::host::ptx {

struct Elem {
  int row, col;
};

// Element `half` (0: low 16 bits, 1: high) of A register r of `lane`.
inline Elem mma_a(int lane, int r, int half) {
  const int g = lane >> 2, t = lane & 3;
  return {g + ((r & 1) ? 8 : 0), 2 * t + half + ((r & 2) ? 8 : 0)};
}
// Element `half` of B register r (0, 1) of `lane`: row = k, col = n.
inline Elem mma_b(int lane, int r, int half) {
  const int g = lane >> 2, t = lane & 3;
  return {2 * t + half + 8 * r, g};
}
// Accumulator i (0..3) of `lane`.
inline Elem mma_c(int lane, int i) {
  const int g = lane >> 2, t = lane & 3;
  return {g + 8 * (i >> 1), 2 * t + (i & 1)};
}
// ldmatrix: element `half` of register i of `lane` is row/col of matrix i (before .trans).
inline Elem ldmatrix(int lane, int half, bool trans) {
  const int r = lane >> 2, c = 2 * (lane & 3) + half;
  return trans ? Elem{c, r} : Elem{r, c};
}

inline float bits_to_float(std::uint16_t b, bool bf16) {
  return bf16 ? BFloat16::to_float(b) : Half::to_float(b);
}
inline std::uint16_t half_of(std::uint32_t reg, int half) {
  return static_cast<std::uint16_t>(half ? reg >> 16 : reg & 0xffffu);
}

// What each lane deposits for an mma: its A and B registers.
struct MmaOperands {
  std::uint32_t a[4];
  std::uint32_t b[2];
};

// D = A B + C for `lane`, from every lane's operands (all[32]).
inline void mma_16816(const MmaOperands (&all)[32], int lane, bool bf16, float (&d)[4]) {
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l)
    for (int h = 0; h < 2; ++h) {
      for (int r = 0; r < 4; ++r) {
        const Elem e = mma_a(l, r, h);
        A[e.row][e.col] = bits_to_float(half_of(all[l].a[r], h), bf16);
      }
      for (int r = 0; r < 2; ++r) {
        const Elem e = mma_b(l, r, h);
        B[e.row][e.col] = bits_to_float(half_of(all[l].b[r], h), bf16);
      }
    }
  for (int i = 0; i < 4; ++i) {
    const Elem e = mma_c(lane, i);
    float acc = d[i];
    for (int k = 0; k < 16; ++k) acc += A[e.row][k] * B[k][e.col];
    d[i] = acc;
  }
}

// ldmatrix .x4 for `lane` from every lane's row address (rows[32], each 8 16-bit values).
inline void ldmatrix_x4(const void* const (&rows)[32], int lane, bool trans, std::uint32_t (&r)[4]) {
  for (int i = 0; i < 4; ++i) {
    std::uint32_t v = 0;
    for (int h = 0; h < 2; ++h) {
      const Elem e = ldmatrix(lane, h, trans);
      std::uint16_t x;
      std::memcpy(&x, static_cast<const unsigned char*>(rows[8 * i + e.row]) + 2 * e.col, 2);
      v |= static_cast<std::uint32_t>(x) << (16 * h);
    }
    r[i] = v;
  }
}

}  // namespace redknot::cuda::host::ptx
