// Hand-written CPU kernels for the simple-cell, LSTM and GRU recurrences (XLA FFI custom calls).
//
// simple:     forward   S[0] = h0,   S[t + 1] = f(u_t + S[t] @ W)                 S: [T + 1, B, H]
//             backward  D[T] = 0,    D[t] = (g_t + D[t + 1] @ W^T) * f'(S[t + 1])  D: [T + 1, B, H]
// LSTM, GRU:  see their sections below.
//
// with u_t = U[t] ([T, B, G H]) or u_t = table[idx[t]] (table [V, G H], idx [T, B] int32).
// The backward kernels also return dW_h = S^T D and, for a table, the table's gradient;
// three more build a projected table E W + b, take its gradient, and project only the rows
// of given ids, E[ids] W + b (last section).
// jaxrnn/native.py builds this file, registers the handlers and calls them from
// jaxrnn/fast.py; dh0 = D[0] W^T stays in XLA.
//
// Why by hand: in XLA:CPU every step of the loop is a few small thunks (a [B, H] @ [H, G H]
// dot, a fusion, a dynamic-update-slice) run one after another on one core. Here
//  * batch rows never interact in the recurrence, so rows are split across the threads of
//    XLA's intra-op pool, each thread running all T steps on its rows (no sync per step);
//  * each step is one register-blocked AVX-512 loop: a block of rows x columns of
//    accumulators stays in registers over the whole k loop, and the activation (or the
//    derivative, or the LSTM / GRU cell update) is applied to the registers before the store;
//  * dW_h is accumulated per step while S[t] and D[t] are in cache (XLA's one big
//    [H, T B] @ [T B, G H] product after the loop took 1.3-1.8 ms of a 5 ms step here).
// States do not depend on the number of threads (each row is computed by one thread, in
// the same order); dW_h sums per-thread partials. Built where the CPU has AVX-512, or AVX2 +
// FMA through avx512_on_avx2.h (the same results; native.py checks first).

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include "xla/ffi/api/ffi.h"

#ifndef __AVX512F__
#include "avx512_on_avx2.h"  // the AVX-512 intrinsics below on AVX2 + FMA (after all headers)
#endif

namespace ffi = xla::ffi;

namespace {

enum Activation : int64_t { kTanh = 0, kSigmoid = 1, kRelu = 2, kIdentity = 3 };

// Register blocks are arrays of vectors indexed by constant-bound loops; unrolled fully and
// early, GCC keeps them in registers (without this it stored every accumulator to the stack
// in every iteration of the k loop, ~2-4x slower).
#define JAXRNN_UNROLL _Pragma("GCC unroll 32")

constexpr int64_t kLanes = 16;  // floats per AVX-512 vector
#ifndef JAXRNN_BLOCK_ROWS
#define JAXRNN_BLOCK_ROWS 8
#define JAXRNN_BLOCK_VECS 3
#endif
constexpr int kBlockRows = JAXRNN_BLOCK_ROWS;  // rows of accumulators per register block
constexpr int kBlockVecs = JAXRNN_BLOCK_VECS;  // vectors (x 16 columns) per register block
#ifndef JAXRNN_OUTER_ROWS
#define JAXRNN_OUTER_ROWS 8
#endif
#ifndef JAXRNN_OUTER_VECS
#define JAXRNN_OUTER_VECS 2
#endif
constexpr int kOuterRows = JAXRNN_OUTER_ROWS;  // dW rows per register block
constexpr int kOuterVecs = JAXRNN_OUTER_VECS;  // dW vectors per register block
#ifndef JAXRNN_OUTER_WINDOW
#define JAXRNN_OUTER_WINDOW 16
#endif
constexpr int64_t kOuterWindow = JAXRNN_OUTER_WINDOW;  // rows per dW update (OuterWindow)
#ifndef JAXRNN_LSTM_ROWS
#define JAXRNN_LSTM_ROWS 4
#endif
constexpr int kLstmRows = JAXRNN_LSTM_ROWS;  // rows per register block of the LSTM forward
#ifdef __AVX512F__
constexpr int kRegisters = 32, kRegsPerVector = 1;  // vector registers; per 16-float vector
#else
constexpr int kRegisters = 16, kRegsPerVector = 2;  // ymm: two a vector (avx512_on_avx2.h)
#endif
#ifndef JAXRNN_ACT_CHUNK
#define JAXRNN_ACT_CHUNK (4 / kRegsPerVector)
#endif
constexpr int kActChunk = JAXRNN_ACT_CHUNK;  // vectors per TanhChunk / SigmoidChunk
// The defaults suit an Intel Xeon with AVX-512; _build.tuning_defines passes others per CPU.

int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

__m512 Set(float v) { return _mm512_set1_ps(v); }

// tanh of N vectors in place: tanh(x) = sign(x) * -e / (2 + e) with e = expm1(-2|x|); |x|
// clamped at 9 (tanh = 1 in float32 beyond); NaN stays NaN (min keeps its second operand
// when one is NaN). expm1(y) for y <= 0: y = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two for
// exactness); expm1(r) by its Taylor series to r^7 (truncation < 2e-8 relative);
// expm1(y) = 2^n expm1(r) + (2^n - 1), exact in the last term, so small |y| keep full
// relative precision (n = 0 gives expm1(r) itself).
// Each stage runs for all N vectors before the next: one tanh is a chain of ~20 dependent
// operations, and N of them side by side keep both FMA ports busy where one at a time left
// them waiting on latency (GCC does not interleave the chains of consecutive calls itself).
// The gated cells' forward epilogues take all gates of a register block at once: seed
// forward, one thread's 32 rows, best of 12 on an Intel Xeon: LSTM 8.4 -> 7.8 ms, GRU 6.7 ->
// 6.4 ms (interleaved runs of both builds; the machine's noise is +-20%).
// The operations per vector are the same for any N: the results do not depend on it.
template <int N>
inline void TanhChunk(__m512* x) {
  const __m512 one = Set(1.0f);
  __m512 n[N], r[N], p[N];
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) {
    const __m512 y = _mm512_mul_ps(_mm512_min_ps(Set(9.0f), _mm512_abs_ps(x[i])), Set(-2.0f));
    n[i] = _mm512_roundscale_ps(_mm512_mul_ps(y, Set(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r[i] = _mm512_fnmadd_ps(n[i], Set(0.693359375f), y);  // y - n * ln2_hi
  }
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) r[i] = _mm512_fnmadd_ps(n[i], Set(-2.12194440e-4f), r[i]);
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(Set(1.0f / 5040.0f), r[i], Set(1.0f / 720.0f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], r[i], Set(1.0f / 120.0f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], r[i], Set(1.0f / 24.0f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], r[i], Set(1.0f / 6.0f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], r[i], Set(0.5f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fmadd_ps(p[i], r[i], one);
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) {
    const __m512 em1r = _mm512_mul_ps(p[i], r[i]);  // expm1(r)
    const __m512 two_n = _mm512_scalef_ps(one, n[i]);
    const __m512 e = _mm512_add_ps(_mm512_scalef_ps(em1r, n[i]), _mm512_sub_ps(two_n, one));
    const __m512 y = _mm512_div_ps(_mm512_sub_ps(_mm512_setzero_ps(), e), _mm512_add_ps(e, Set(2.0f)));
    const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x[i]), _mm512_set1_epi32(INT32_MIN));
    x[i] = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
  }
}

// TanhChunk over N vectors, kActChunk at a time: 4 chains cover the latency; 16 at once need
// more than the 32 vector registers and were no faster (LSTM forward 7.64 vs 7.53 ms). On AVX2
// 2 vectors are the same 4 chains (ymm); 4 there, 8 chains, measured no faster.
template <int N>
inline void TanhN(__m512* x) {
  constexpr int K = N < kActChunk ? N : kActChunk;
  TanhChunk<K>(x);
  if constexpr (N > K) TanhN<N - K>(x + K);
}

__m512 Tanh(__m512 x) {
  TanhChunk<1>(&x);
  return x;
}

// sigmoid of N vectors in place: 1 / (1 + e), e = exp(-x) with x clamped to [-104, 88]
// (sigmoid(88) = 1 in float32; below -88.7 e overflows to inf and the result is 0, as
// sigmoid(x) < 3e-39 there, a denormal); NaN stays NaN
// (max and min keep their second operand when one is NaN). -x = n ln2 + r with n =
// round(-x log2(e)), r' = -r = x + n ln2 (ln2 split in two, as TanhChunk), exp(r) by its
// Taylor series to r^7 in -r' (Horner with fnmadd: the alternating signs), e = 2^n exp(r).
// One exp and a division: sigmoid through tanh(x / 2) took 8 more operations per vector (the
// sign, the expm1 form and the halving). Stage by stage for all N vectors, as TanhChunk.
template <int N>
inline void SigmoidChunk(__m512* x) {
  const __m512 one = Set(1.0f);
  __m512 n[N], r[N], p[N];
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) {
    x[i] = _mm512_min_ps(Set(88.0f), _mm512_max_ps(Set(-104.0f), x[i]));
    n[i] = _mm512_roundscale_ps(_mm512_mul_ps(x[i], Set(-1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r[i] = _mm512_fmadd_ps(n[i], Set(0.693359375f), x[i]);  // x + n * ln2_hi
  }
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) r[i] = _mm512_fmadd_ps(n[i], Set(-2.12194440e-4f), r[i]);
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fnmadd_ps(Set(1.0f / 5040.0f), r[i], Set(1.0f / 720.0f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fnmadd_ps(p[i], r[i], Set(1.0f / 120.0f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fnmadd_ps(p[i], r[i], Set(1.0f / 24.0f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fnmadd_ps(p[i], r[i], Set(1.0f / 6.0f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fnmadd_ps(p[i], r[i], Set(0.5f));
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fnmadd_ps(p[i], r[i], one);
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) p[i] = _mm512_fnmadd_ps(p[i], r[i], one);  // exp(-r')
  JAXRNN_UNROLL for (int i = 0; i < N; ++i) {
    const __m512 e = _mm512_scalef_ps(p[i], n[i]);
    x[i] = _mm512_div_ps(one, _mm512_add_ps(one, e));
  }
}

// SigmoidChunk over N vectors, kActChunk at a time (as TanhN).
template <int N>
inline void SigmoidN(__m512* x) {
  constexpr int K = N < kActChunk ? N : kActChunk;
  SigmoidChunk<K>(x);
  if constexpr (N > K) SigmoidN<N - K>(x + K);
}

__m512 Sigmoid(__m512 x) {
  SigmoidChunk<1>(&x);
  return x;
}

template <int64_t act>
__m512 Apply(__m512 a) {
  if constexpr (act == kTanh) return Tanh(a);
  if constexpr (act == kSigmoid) return Sigmoid(a);
  if constexpr (act == kRelu) return _mm512_max_ps(_mm512_setzero_ps(), a);  // NaN stays NaN
  return a;
}

// f'(a) from the output h = f(a).
template <int64_t act>
__m512 DerivFromOutput(__m512 h) {
  const __m512 one = Set(1.0f);
  if constexpr (act == kTanh) return _mm512_fnmadd_ps(h, h, one);
  if constexpr (act == kSigmoid) return _mm512_mul_ps(h, _mm512_sub_ps(one, h));
  if constexpr (act == kRelu) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h, _mm512_setzero_ps(), _CMP_GT_OQ), one);
  }
  return one;
}

__mmask16 ColumnMask(int64_t j, int64_t H) {
  const int64_t left = H - j;
  return left >= kLanes ? static_cast<__mmask16>(0xFFFF)
                        : static_cast<__mmask16>((1u << left) - 1u);
}

// Quarter i (lanes 4 i .. 4 i + 3) of v, and v with quarter i replaced by x: the 4-lane
// pieces of the gated cells' packed last groups (i is a constant once the loops are unrolled:
// the switch folds away).
inline __m128 Quarter(__m512 v, int i) {
  switch (i & 3) {
    case 1: return _mm512_extractf32x4_ps(v, 1);
    case 2: return _mm512_extractf32x4_ps(v, 2);
    case 3: return _mm512_extractf32x4_ps(v, 3);
    default: return _mm512_castps512_ps128(v);
  }
}
inline __m512 WithQuarter(__m512 v, int i, __m128 x) {
  switch (i & 3) {
    case 1: return _mm512_insertf32x4(v, x, 1);
    case 2: return _mm512_insertf32x4(v, x, 2);
    case 3: return _mm512_insertf32x4(v, x, 3);
    default: return _mm512_insertf32x4(v, x, 0);
  }
}
// Quarters 0 .. n - 1 = the (masked) 4 floats at p, p + stride, ..., the rest zero.
inline __m512 LoadQuarters(const float* p, int64_t stride, int n, __mmask8 mask) {
  __m512 v = _mm512_setzero_ps();
  for (int q = 0; q < n; ++q) v = WithQuarter(v, q, _mm_maskz_loadu_ps(mask, p + q * stride));
  return v;
}

// A padded right-hand matrix for the step products: M is [K, ld] (64-byte aligned, ld a
// multiple of 16), its first n columns zero beyond the valid ones, so full vector loads of
// them are always safe.
struct Panel {
  const float* M;
  int64_t ld;  // row stride (floats): n, or more (PanelStride)
  int64_t K;   // rows (the reduction length)
  int64_t n;   // the padded width the tiles run over (a multiple of 16)
};

// The row stride (floats) of a weight panel n floats wide (n a multiple of 16): an odd number
// of 64-byte lines. A column tile of the step products ([K, 16 NV] floats) is read once per row
// block; with a stride of a power-of-two bytes its K rows fall into a few cache sets (at 4 KiB,
// one L1 set and every 64th L2 set) and evict each other before the next row block reads them
// again. Intel Xeon (Emerald Rapids), seed classifier training step, B = 64, T = 100, simple
// cell: H = 1,024 (stride 4 KiB) 350 ms against 201 ms at H = 1,000 (2.4% less work). An odd
// stride spreads the rows over all sets; the padding is never read by the tiles (they run over
// n columns), so the products and their order are unchanged. Same machine, in-process A/B
// (benchmarks/native_ab.py, B = 64): simple H = 1,024 (T = 100) 1.38x, LSTM H = 512 (T = 250)
// 1.43x faster, GRU H = 256 1.02x; the seed shapes' strides (7, 25, 19 lines) were odd already.
inline int64_t PanelStride(int64_t n) { return (n / kLanes) % 2 ? n : n + kLanes; }

// Marks an epilogue that takes the whole register block at once: epi.f(j0, acc) with acc the
// R x NV accumulators (the gated cells' forward: all gates of 16 units for R rows, activated
// together); a plain epilogue takes one vector at a time.
template <class F>
struct PerBlock {
  F f;
};
template <class T>
struct IsPerBlock : std::false_type {};
template <class F>
struct IsPerBlock<PerBlock<F>> : std::true_type {};

// One register tile: out[r * LDO + v] = X[r, :] @ M[:, j0 + 16 v : j0 + 16 v + 16] for R rows
// of X (row stride ldx, P.K columns) and NV column vectors of P.
// The k loop is a function of its own (not inlined): inlined, GCC hoisted the epilogue's
// constants (the tanh polynomial, masks) above the loop, and with 16-24 accumulators live
// ran out of the 32 vector registers: on an Intel Xeon (Emerald Rapids) the LSTM forward's
// 4 x 4 loop kept 3 accumulators on the stack (a store and a load per FMA). The
// accumulators leave through memory once per block instead.
template <int R, int NV, int LDO>
__attribute__((noinline)) void AccumulateTile(const float* x, int64_t ldx, const Panel& P,
                                              int64_t j0, __m512* out) {
  __m512 acc[R][NV];
  JAXRNN_UNROLL for (int r = 0; r < R; ++r)
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  const float* m = P.M + j0;
  for (int64_t k = 0; k < P.K; ++k, m += P.ld) {
    __m512 w[NV];
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) w[v] = _mm512_load_ps(m + kLanes * v);
    JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(x[r * ldx + k]);
      JAXRNN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, w[v], acc[r][v]);
    }
  }
  JAXRNN_UNROLL for (int r = 0; r < R; ++r)
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) out[r * LDO + v] = acc[r][v];
}

// The most vectors a tile of `rows` rows keeps in registers: rows x v accumulators, v panel
// vectors (with one row, each is used once: a memory operand) and a broadcast. Every block
// the defaults and the AVX-512 tunings use is one tile; with AVX2's 16 ymm registers (two a
// vector) tiles are at most 6 x 1, 2 x 2 or 1 x 7 vectors, and a larger block (the LSTM
// forward's 4 gate vectors, 2 rows x 8 vectors) runs as several (spilled accumulators cost a
// store and a load per FMA).
constexpr int TileVecs(int rows) {
  const int regs = kRegsPerVector * (rows + (rows > 1 ? 1 : 0));
  return (kRegisters - 1) / regs > 0 ? (kRegisters - 1) / regs : 1;
}
constexpr int kTileRows = (kRegisters - 1) / kRegsPerVector - 1;

// acc[r][v] = X[r, :] @ M[:, j0 + 16 v : j0 + 16 v + 16] for R rows and NV vectors, as tiles
// from row r0 and vector v0 on (each output element's sum runs over k in the same order
// whatever the tiles: the results do not depend on them).
template <int R, int NV, int r0 = 0, int v0 = 0>
inline void Accumulate(const float* x, int64_t ldx, const Panel& P, int64_t j0,
                       __m512 (&out)[R][NV]) {
  constexpr int TR = R - r0 < kTileRows ? R - r0 : kTileRows;
  constexpr int TV = NV - v0 < TileVecs(TR) ? NV - v0 : TileVecs(TR);
  AccumulateTile<TR, TV, NV>(x + r0 * ldx, ldx, P, j0 + kLanes * v0, &out[r0][v0]);
  if constexpr (v0 + TV < NV) {
    Accumulate<R, NV, r0, v0 + TV>(x, ldx, P, j0, out);
  } else if constexpr (r0 + TR < R) {
    Accumulate<R, NV, r0 + TR, 0>(x, ldx, P, j0, out);
  }
}

// Accumulate, then epi(r, j0 + 16 v, acc[r][v]) per vector, or epi.f(j0, acc) for a PerBlock
// epilogue.
template <int R, int NV, class Epilogue>
inline void Block(const float* x, int64_t ldx, const Panel& P, int64_t j0, const Epilogue& epi) {
  __m512 acc[R][NV];
  Accumulate<R, NV>(x, ldx, P, j0, acc);
  if constexpr (IsPerBlock<Epilogue>::value) {
    epi.f(j0, acc);
  } else {
    JAXRNN_UNROLL for (int r = 0; r < R; ++r)
      JAXRNN_UNROLL for (int v = 0; v < NV; ++v) epi(r, j0 + kLanes * v, acc[r][v]);
  }
}

// Block<R, NV> for nv <= NV vectors (the last column tile may be narrower).
template <int R, int NV, class Epilogue>
inline void BlockUpTo(int64_t nv, const float* x, int64_t ldx, const Panel& P, int64_t j0,
                      const Epilogue& epi) {
  // blocks: P.ld is a multiple of their width
  if constexpr (NV > 1 && !IsPerBlock<Epilogue>::value) {
    if (nv < NV) return BlockUpTo<R, NV - 1>(nv, x, ldx, P, j0, epi);
  }
  Block<R, NV>(x, ldx, P, j0, epi);
}

// Block<R, NV> for r <= R rows (the last row block may be shorter).
template <int R, int NV, class Epilogue>
inline void BlockRowsUpTo(int64_t r, int64_t nv, const float* x, int64_t ldx, const Panel& P,
                          int64_t j0, const Epilogue& epi) {
  if constexpr (R > 1) {
    if (r < R) return BlockRowsUpTo<R - 1, NV>(r, nv, x, ldx, P, j0, epi);
  }
  BlockUpTo<R, NV>(nv, x, ldx, P, j0, epi);
}

// One step for rows [b0, b1): epi(b, j, (X @ M)[b, j:j+16]) (or per group of NV vectors) with
// X rows at x (row stride ldx), in register blocks of BR rows x NV vectors. 8 x 3 blocks (24
// accumulators) load half the panel vectors per FMA that 4 x 4 does and keep a narrower tile
// in L1 (the backward's panels are tall, K = G H): seed steps, simple 4.2 -> 3.4 ms, LSTM
// 21.7 -> 19.3, GRU 17.8 -> 15.3 (with the prefetches below). The LSTM forward's blocks are
// 4 vectors wide (its epilogue takes a unit group's four gates at once) and kLstmRows rows.
// Column tiles of NV vectors outside, row blocks inside: a tile of M ([K, 16 NV]) is read
// from memory once per step and stays in L1/L2 for all rows (rows outside re-streamed all of
// M per row block: at H = 512 the GRU's 3 MB W_h, 8 times a step; its fast.rnn step went
// 287 -> 262 ms, the seed LSTM step 28.2 -> 25.7 ms).
// Columns [j_begin, j_end) of M only (default all: j_end < 0).
// One or two rows (a chunk of B = 1 inference) take tiles of 8 vectors: a tile is R x NV
// chains of K dependent FMAs, and with R = 1 three chains waited on the FMA latency (the
// simple cell at B = 1, H = 100: tiles of 3, 3, 1 vectors, ~400 cycles each). The same
// products in the same order per element: the results do not depend on the tile.
template <int NV = kBlockVecs, int BR = kBlockRows, class MakeEpilogue>
void StepRows(const float* x, int64_t ldx, int64_t b0, int64_t b1, const Panel& P,
              const MakeEpilogue& make_epi, int64_t j_begin = 0, int64_t j_end = -1) {
  using Epilogue = decltype(make_epi(int64_t{0}));
  if constexpr (NV < 8 && BR > 2 && !IsPerBlock<Epilogue>::value) {
    if (b1 - b0 <= 2) return StepRows<8, 2>(x, ldx, b0, b1, P, make_epi, j_begin, j_end);
  }
  if (j_end < 0) j_end = P.n;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += kLanes * NV) {
    const int64_t nv = std::min<int64_t>(NV, (j_end - j0) / kLanes);
    for (int64_t b = b0; b < b1; b += BR) {
      BlockRowsUpTo<BR, NV>(b1 - b, nv, x + b * ldx, ldx, P, j0, make_epi(b));
    }
  }
}

// The L1 data cache's size in bytes (sysconf; 32 KiB where the system does not say).
int64_t L1Bytes() {
  static const int64_t bytes = [] {
    const long n = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return n > 0 ? static_cast<int64_t>(n) : int64_t{32 * 1024};
  }();
  return bytes;
}

// StepRows for step t of a recurrence. One row (B = 1 inference) is a chain of loads: each
// panel vector feeds one FMA, and the whole panel is read every step. A
// panel just above L1 (the simple cell at H = 100: [100, 112] floats, 44.8 KB against Zen 4's
// 32 KB) was read from L2 every step: swept in the same order each time, least-recently-used
// replacement evicts each line just before it is needed again. Such a panel is taken as two
// column tiles that each fit in 7/8 of L1, in alternating order (odd t: the second tile
// first), so the tile read last in one step is read first in the next, from L1. The same
// products in the same order per element (the tiles are the columns' own): the results are
// those of StepRows. Seed model at B = 1 (Zen 4): the forward kernel 0.926x (one thread,
// benchmarks/kernels.py; H = 96 / 112: 0.944x / 0.930x), the whole inference call 0.965x
// (native_ab.py --mode infer). Two rows share each load: there the split was 1.10x slower.
template <class MakeEpilogue>
void StepRowsAlternating(int64_t t, const float* x, int64_t ldx, int64_t b0, int64_t b1,
                         const Panel& P, const MakeEpilogue& make_epi) {
  const int64_t half = (P.n / kLanes + 1) / 2 * kLanes;  // columns of the first tile
  const int64_t budget = L1Bytes() / 8 * 7;
  const int64_t bytes = static_cast<int64_t>(sizeof(float)) * P.K;  // per column
  if (b1 - b0 != 1 || bytes * P.n <= budget || bytes * half > budget) {
    return StepRows(x, ldx, b0, b1, P, make_epi);
  }
  const int64_t first = t % 2 ? half : 0, second = t % 2 ? 0 : half;
  StepRows(x, ldx, b0, b1, P, make_epi, first, first ? P.n : half);
  StepRows(x, ldx, b0, b1, P, make_epi, second, second ? P.n : half);
}

// Weight-gradient block: dW[k0 + kk, j0 + 16 v + :16] += sum_b X[b, k0 + kk] * Y[b, j0 + 16 v + :16]
// over `rows` rows of X (stride ldx) and Y (stride ldy, N valid columns); dW is [K, ldw],
// 64-byte aligned. KR x NV accumulators stay in registers over the rows; dW is read and
// written once per call.
template <int KR, int NV>
inline void OuterBlock(const float* X, int64_t ldx, const float* Y, int64_t ldy, int64_t N,
                       int64_t rows, int64_t k0, int64_t j0, float* dW, int64_t ldw) {
  __m512 acc[KR][NV];
  __mmask16 mask[NV];
  JAXRNN_UNROLL for (int v = 0; v < NV; ++v) mask[v] = ColumnMask(j0 + kLanes * v, N);
  JAXRNN_UNROLL for (int kk = 0; kk < KR; ++kk)
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) acc[kk][v] = _mm512_setzero_ps();
  for (int64_t b = 0; b < rows; ++b) {
    const float* y = Y + b * ldy + j0;
    const float* x = X + b * ldx + k0;
    __m512 yv[NV];
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) yv[v] = _mm512_maskz_loadu_ps(mask[v], y + kLanes * v);
    JAXRNN_UNROLL for (int kk = 0; kk < KR; ++kk) {
      const __m512 a = _mm512_set1_ps(x[kk]);
      JAXRNN_UNROLL for (int v = 0; v < NV; ++v) acc[kk][v] = _mm512_fmadd_ps(a, yv[v], acc[kk][v]);
    }
  }
  JAXRNN_UNROLL for (int kk = 0; kk < KR; ++kk) {
    float* w = dW + (k0 + kk) * ldw + j0;
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) {
      _mm512_store_ps(w + kLanes * v, _mm512_add_ps(_mm512_load_ps(w + kLanes * v), acc[kk][v]));
    }
  }
}

template <int KR, int NV>
inline void OuterBlockUpTo(int64_t kr, int64_t nv, const float* X, int64_t ldx, const float* Y,
                           int64_t ldy, int64_t N, int64_t rows, int64_t k0, int64_t j0,
                           float* dW, int64_t ldw) {
  if constexpr (KR > 1) {
    if (kr < KR) return OuterBlockUpTo<KR - 1, NV>(kr, nv, X, ldx, Y, ldy, N, rows, k0, j0, dW, ldw);
  }
  if constexpr (NV > 1) {
    if (nv < NV) return OuterBlockUpTo<KR, NV - 1>(kr, nv, X, ldx, Y, ldy, N, rows, k0, j0, dW, ldw);
  }
  OuterBlock<KR, NV>(X, ldx, Y, ldy, N, rows, k0, j0, dW, ldw);
}

// dW += X^T Y for X: [rows, K] (stride ldx), Y: [rows, N] (stride ldy); dW: [K, ldw],
// ldw = N rounded up to 16.
void AccumulateOuter(const float* X, int64_t ldx, int64_t K, const float* Y, int64_t ldy,
                     int64_t N, int64_t rows, float* dW, int64_t ldw) {
  for (int64_t j0 = 0; j0 < ldw; j0 += kLanes * kOuterVecs) {
    const int64_t nv = std::min<int64_t>(kOuterVecs, (ldw - j0) / kLanes);
    for (int64_t k0 = 0; k0 < K; k0 += kOuterRows) {
      OuterBlockUpTo<kOuterRows, kOuterVecs>(K - k0, nv, X, ldx, Y, ldy, N, rows, k0, j0, dW, ldw);
    }
  }
}

// Step t's input row for batch row `row`: U[t, row] of U [T, B, width], or, with ids,
// table[idx[t, row]] of a table [V, width]; nullptr for an id outside [0, V) (the callers
// read NaN there, as jnp.take's default "fill" mode).
inline const float* InputRow(const float* U, const int32_t* idx, int64_t V, int64_t width,
                             int64_t t, int64_t B, int64_t row) {
  if (idx == nullptr) return U + (t * B + row) * width;
  const int32_t i = idx[t * B + row];
  return (i >= 0 && i < V) ? U + static_cast<int64_t>(i) * width : nullptr;
}

// Fetches n floats from p into L2 (one prefetch per 64-byte line).
inline void PrefetchSpan(const float* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t off = 0; off < n * static_cast<int64_t>(sizeof(float)); off += 64) {
    _mm_prefetch(c + off, _MM_HINT_T1);
  }
}

// The LSTM's gate activations G [T, B, 4H] are stored per 16-unit group, as the forward's
// register blocks hold them: units j .. j + w - 1 (j a multiple of 16, w = min(16, H - j)) at
// 4 j .. 4 j + 4 w - 1 of a row, gate q at 4 j + q w (GateStride(j, H) = w); the same 4H
// floats per row as gate blocks [i | f | g | o], which jaxrnn.native.gate_blocks restores.
// The forward writes them with streaming stores where a row's groups are whole cache lines
// (StoreGates): G is read only by the backward, in reverse order and prefetched, and its
// lines need not be fetched into the cache to be written (seed LSTM step, native_ab.py, 60
// rounds: 0.974x).
inline int64_t GateStride(int64_t j, int64_t H) { return std::min<int64_t>(kLanes, H - j); }

// Whether a gate buffer's 16-unit groups are whole, aligned cache lines (streaming stores).
inline bool StreamsGates(const float* G, int64_t H) {
  return reinterpret_cast<uintptr_t>(G) % 64 == 0 && H % 4 == 0;
}

// For backward step t (running down from T - 1): rows [b0, b1) of a gate buffer ([T, B,
// width]) two steps ahead into L2 (at t = T - 1 the next step's too). Streamed out by the
// forward, they come from memory, not L3 (seed LSTM step, one step ahead: 1.000x, two: 0.974x).
inline void PrefetchGatesAhead(const float* G, int64_t width, int64_t t, int64_t T, int64_t B,
                               int64_t b0, int64_t b1) {
  if (t == T - 1 && t > 0) PrefetchSpan(G + ((t - 1) * B + b0) * width, (b1 - b0) * width);
  if (t > 1) PrefetchSpan(G + ((t - 2) * B + b0) * width, (b1 - b0) * width);
}

// Stores gates[q] at p + q w: streaming where p is 64-byte aligned and w = 16 (`stream`),
// else masked (w lanes).
inline void StoreGates(float* p, int64_t w, bool stream, const __m512 (&gates)[4]) {
  if (w == kLanes && stream) {
    JAXRNN_UNROLL for (int q = 0; q < 4; ++q) _mm512_stream_ps(p + kLanes * q, gates[q]);
    return;
  }
  const __mmask16 mask = ColumnMask(0, w);
  JAXRNN_UNROLL for (int q = 0; q < 4; ++q) _mm512_mask_storeu_ps(p + w * q, mask, gates[q]);
}

// The table rows step t reads for rows [b0, b1) (u = table[idx[t, b]], `width` floats each),
// fetched into L2 one step ahead. The rows are random rows of a table larger than L2 (the
// seed LSTM's [5000, 400] is 8 MB), and the step's epilogue needs them only after its
// products: without this each step waited on them (seed LSTM forward 8.6 -> 6.4 ms).
inline void PrefetchTableRows(const float* table, int64_t width, const int32_t* ids, int64_t V,
                              int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const int32_t i = ids[b];
    if (i >= 0 && i < V) PrefetchSpan(table + static_cast<int64_t>(i) * width, width);
  }
}

// A 64-byte aligned float buffer (data == nullptr when out of memory), zeroed unless asked
// not to be.
struct Aligned {
  float* data = nullptr;
  explicit Aligned(int64_t n, bool zeroed = true) {
    const size_t bytes = static_cast<size_t>(RoundUp(std::max<int64_t>(n, 1) * sizeof(float), 64));
    data = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (data != nullptr && zeroed) std::memset(data, 0, bytes);
  }
  ~Aligned() { std::free(data); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
};

// W ([H, H] row-major) or its transpose, copied into a 64-byte aligned [H, ld] buffer with
// zero columns H..Hp-1 (ld = PanelStride(Hp)).
struct Padded {
  Aligned buf;
  float* data;
  int64_t Hp, ld;
  Padded(const float* W, int64_t H, bool transpose)
      : buf(H * PanelStride(RoundUp(H, kLanes))), data(buf.data), Hp(RoundUp(H, kLanes)),
        ld(PanelStride(Hp)) {
    if (data == nullptr) return;
    for (int64_t k = 0; k < H; ++k)
      for (int64_t j = 0; j < H; ++j) data[k * ld + j] = transpose ? W[j * H + k] : W[k * H + j];
  }
};

// Denormals flushed to zero (MXCSR FTZ + DAZ) while alive, as XLA:CPU runs its own code:
// gradients that vanish through time become denormal after some hundred steps, and this keeps
// them equal to the XLA loops' (and spares the microcode assists denormal operands cost).
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~FlushDenormals() { _mm_setcsr(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned int saved_;
};

// Runs f(0) .. f(n - 1) on the calling thread and up to n - 1 tasks of XLA's intra-op pool.
// Chunks are claimed from a shared counter, so the caller finishes the work alone if the
// pool is busy or absent (no deadlock); a task that starts late claims nothing and never
// touches f. The caller returns once every chunk is done.
struct Progress {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

template <class F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, const F& f) {
  if (n <= 1) {
    const FlushDenormals ftz;
    if (n == 1) f(0);
    return;
  }
  auto progress = std::make_shared<Progress>();
  const F* fp = &f;
  auto work = [progress, fp, n]() {
    for (;;) {
      const int64_t i = progress->next.fetch_add(1, std::memory_order_relaxed);
      if (i >= n) return;
      const FlushDenormals ftz;
      (*fp)(i);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t i = 1; i < n; ++i) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  while (progress->done.load(std::memory_order_acquire) < n) _mm_pause();
}

// Rows [0, B) split into at most `threads` chunks of >= 8 rows (multiples of 4).
struct RowSplit {
  int64_t chunks, rows_per_chunk;
  RowSplit(int64_t B, int64_t threads) {
    const int64_t by_rows = std::max<int64_t>(1, B / 8);
    chunks = std::max<int64_t>(1, std::min(threads, by_rows));
    rows_per_chunk = RoundUp((B + chunks - 1) / chunks, 4);
    chunks = (B + rows_per_chunk - 1) / rows_per_chunk;
  }
};

int64_t Threads(ffi::ThreadPool& pool, int64_t requested) {
  if (requested > 0) return requested;
  return std::max<int64_t>(1, pool.num_threads());
}

// A backward loop's dW_h accumulation for one chunk of rows: dW += X^T Y, step by step, with X
// the states a step read ([rows, K]) and Y its dL/da ([rows, N]). AccumulateOuter reads and
// writes the whole [K, ldw] partial once per call, which a chunk of many rows amortises over
// its rows' products; with few rows it dominates (B = 1: a rank-1 update of the whole
// partial per step). Chunks of fewer than
// kOuterWindow rows therefore gather their steps' rows side by side until there are at least
// kOuterWindow of them (16 steps at B = 1), and add them in one call; larger chunks add each
// step directly, as before (the same sums, bit for bit). Without memory for the window, each
// step is added directly too. dW = nullptr: nothing is accumulated (the loop does not fuse
// dW_h); Flush() must follow the last Add(). One thread, the seed sizes at B = 1
// (benchmarks/kernels.py): the simple cell's backward 0.313 -> 0.184 ms, the LSTM's 1.04 ->
// 0.68 ms; at B = 4 0.73x / 0.93x; 16 rows a window measured better than 8, 32 or 64.
class OuterWindow {
 public:
  OuterWindow(int64_t K, int64_t N, int64_t rows, float* dW, int64_t ldw)
      : K_(K), N_(N), ldw_(ldw), dW_(dW),
        buf_(dW && rows < kOuterWindow ? 2 * kOuterWindow * (K + N) : 1, /*zeroed=*/false),
        direct_(rows >= kOuterWindow || buf_.data == nullptr) {}
  OuterWindow(const OuterWindow&) = delete;
  OuterWindow& operator=(const OuterWindow&) = delete;

  // Adds X^T Y for n rows (X rows stride K, Y rows stride N), now or with the window.
  void Add(const float* X, const float* Y, int64_t n) {
    if (direct_) return AccumulateOuter(X, K_, K_, Y, N_, N_, n, dW_, ldw_);
    std::memcpy(buf_.data + filled_ * K_, X, sizeof(float) * n * K_);
    std::memcpy(buf_.data + 2 * kOuterWindow * K_ + filled_ * N_, Y, sizeof(float) * n * N_);
    filled_ += n;
    if (filled_ >= kOuterWindow) Flush();
  }
  void Flush() {
    if (filled_ == 0) return;
    AccumulateOuter(buf_.data, K_, K_, buf_.data + 2 * kOuterWindow * K_, N_, N_, filled_, dW_,
                    ldw_);
    filled_ = 0;
  }

 private:
  int64_t K_, N_, ldw_;
  float* dW_;
  Aligned buf_;  // X rows [2 kOuterWindow, K], then Y rows [2 kOuterWindow, N]
  bool direct_;
  int64_t filled_ = 0;
};

// dW [H, N] = the per-chunk partial sums ([H, ldw] each) added in chunk order; zeros when
// the loop did not accumulate them (fused = false: the caller computes dW_h = S^T D itself,
// one big matmul, for large H).
void ReducePartials(const float* partial, int64_t chunks, int64_t H, int64_t N, int64_t ldw,
                    bool fused, float* dW) {
  if (!fused) {
    std::memset(dW, 0, sizeof(float) * H * N);
    return;
  }
  // each element summed from 0 in chunk order; the chunks outermost, so the rows vectorise
  for (int64_t k = 0; k < H; ++k) {
    float* d = dW + k * N;
    std::fill(d, d + N, 0.0f);
    for (int64_t c = 0; c < chunks; ++c) {
      const float* p = partial + (c * H + k) * ldw;
      for (int64_t j = 0; j < N; ++j) d[j] += p[j];
    }
  }
}

// dTable[v] = the sum of D[t][b] over (t, b) with idx[t][b] = v, for a table [V, width],
// accumulated inside a backward loop while D[t] is in cache (Add after each step) rather
// than by a pass over all of D afterwards: that pass re-read D from memory (the seed LSTM's
// 26 MB per step), and D itself no longer has to be kept beyond the step that reads it.
// Each chunk of batch rows adds into rows of its own, so the threads never write one row:
// chunk 0 into dTable itself, chunk c > 0 into a compact buffer (a slot per id, taken on the
// id's first update, at most min(V, T x its rows) rows: never more than its share of D).
// A row's first update is a copy (no zeroing pass). Finish then adds the chunks' rows in
// chunk order, by id range across the threads, and zeroes the rows no chunk hit. Ids outside
// [0, V) add nothing (as XLA's scatter drops them). The sums depend on the number of chunks
// (as dW_h's per-chunk partials do), not on which thread runs a chunk.
class TableGradient {
 public:
  TableGradient(float* dTable, const int32_t* idx, int64_t V, int64_t width, int64_t T,
                int64_t B, const RowSplit& split)
      : dTable_(dTable), idx_(idx), V_(V), width_(width), B_(B), chunks_(split.chunks),
        cap_(std::min(V, T * split.rows_per_chunk)),
        slot_(static_cast<size_t>(split.chunks * V), -1),
        used_(static_cast<size_t>(split.chunks), 0),
        rows_((split.chunks - 1) * cap_ * width, /*zeroed=*/false) {}
  bool ok() const { return rows_.data != nullptr; }

  // Brings the rows step t will add into for rows [b0, b1) of chunk c into L2 (those whose
  // slot is taken; the others are a copy, a write).
  void Prefetch(int64_t c, int64_t t, int64_t b0, int64_t b1) const {
    for (int64_t b = b0; b < b1; ++b) {
      const int32_t v = idx_[t * B_ + b];
      if (v < 0 || v >= V_) continue;
      const int32_t s = slot_[c * V_ + v];
      if (s >= 0) PrefetchSpan(Row(c, s), width_);
    }
  }

  // Adds D[t][b] (row b of Dt: [B, width]) into row idx[t][b], for rows [b0, b1) of chunk c.
  void Add(int64_t c, int64_t t, int64_t b0, int64_t b1, const float* Dt) {
    for (int64_t b = b0; b < b1; ++b) {
      const int32_t v = idx_[t * B_ + b];
      if (v < 0 || v >= V_) continue;
      int32_t& s = slot_[c * V_ + v];
      const float* d = Dt + b * width_;
      if (s < 0) {
        s = c == 0 ? v : static_cast<int32_t>(used_[c]++);
        std::memcpy(Row(c, s), d, sizeof(float) * width_);
      } else {
        AddRow(Row(c, s), d);
      }
    }
  }

  // dTable = the chunks' rows summed in chunk order; zeros where none was hit.
  void Finish(ffi::ThreadPool& pool, int64_t threads) {
    const int64_t parts = std::max<int64_t>(1, std::min(threads, V_ / 64));
    const int64_t per = (V_ + parts - 1) / parts;
    ParallelFor(pool, parts, [&](int64_t p) {
      for (int64_t v = p * per; v < std::min(V_, (p + 1) * per); ++v) {
        float* out = dTable_ + v * width_;
        bool hit = slot_[v] >= 0;
        for (int64_t c = 1; c < chunks_; ++c) {
          const int32_t s = slot_[c * V_ + v];
          if (s < 0) continue;
          if (hit) {
            AddRow(out, Row(c, s));
          } else {
            std::memcpy(out, Row(c, s), sizeof(float) * width_);
          }
          hit = true;
        }
        if (!hit) std::memset(out, 0, sizeof(float) * width_);
      }
    });
  }

 private:
  float* Row(int64_t c, int64_t s) const {
    return c == 0 ? dTable_ + s * width_ : rows_.data + ((c - 1) * cap_ + s) * width_;
  }
  void AddRow(float* row, const float* d) const {
    for (int64_t j = 0; j < width_; j += kLanes) {
      const __mmask16 mask = ColumnMask(j, width_);
      _mm512_mask_storeu_ps(row + j, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, row + j),
                                                         _mm512_maskz_loadu_ps(mask, d + j)));
    }
  }

  float* dTable_;
  const int32_t* idx_;
  int64_t V_, width_, B_, chunks_, cap_;
  std::vector<int32_t> slot_;   // [chunks, V]: a row's slot in its chunk's rows, -1 if none
  std::vector<int64_t> used_;   // slots taken per chunk (chunk 0: rows of dTable itself)
  Aligned rows_;                // chunks 1..: [cap, width] each, uninitialised
};

// acc[:width] += the sum of rows [n, width] (row stride ld): the rows summed first, then
// added to acc (a chain of n + calls additions per element instead of n x calls: float32
// error ~n times smaller). acc is 64-byte aligned, width rounded up to 16.
void AddRowSum(const float* rows, int64_t n, int64_t ld, int64_t width, float* acc) {
  for (int64_t j = 0; j < width; j += kLanes) {
    const __mmask16 mask = ColumnMask(j, width);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t b = 0; b < n; ++b) {
      sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(mask, rows + b * ld + j));
    }
    _mm512_store_ps(acc + j, _mm512_add_ps(_mm512_load_ps(acc + j), sum));
  }
}

template <int64_t act>
void Forward(ffi::ThreadPool& pool, const float* U, const int32_t* idx, int64_t V,
             const Panel& P, const float* h0, float* S, int64_t T, int64_t B,
             int64_t H, int64_t threads) {
  std::memcpy(S, h0, sizeof(float) * B * H);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const RowSplit split(B, Threads(pool, threads));
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t b0 = c * split.rows_per_chunk;
    const int64_t b1 = std::min(B, b0 + split.rows_per_chunk);
    // a table row outside [0, V) reads as NaN (as jnp.take's default "fill" mode)
    alignas(64) float nan_row[kLanes];
    std::fill(nan_row, nan_row + kLanes, nan);
    for (int64_t t = 0; t < T; ++t) {
      const float* x = S + t * B * H;
      float* out = S + (t + 1) * B * H;
      if (idx != nullptr && t + 1 < T) PrefetchTableRows(U, H, idx + (t + 1) * B, V, b0, b1);
      StepRowsAlternating(t, x, H, b0, b1, P, [&](int64_t b) {
        return [&, b](int r, int64_t j, __m512 acc) {
          const int64_t row = b + r;
          const float* in = InputRow(U, idx, V, H, t, B, row);
          const float* u = in ? in + j : nan_row;
          const __mmask16 mask = ColumnMask(j, H);
          const __m512 a = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, u));
          _mm512_mask_storeu_ps(out + row * H + j, mask, Apply<act>(a));
        };
      });
    }
  });
}

template <int64_t act>
void Backward(ffi::ThreadPool& pool, const float* S, const Panel& P, int64_t Hp,
              const float* g, bool last_only, float* D, const float* D_T, float* dW,
              const RowSplit& split, float* partial, bool fuse_dw, TableGradient* table,
              bool ring, int64_t T, int64_t B, int64_t H) {
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t b0 = c * split.rows_per_chunk;
    const int64_t b1 = std::min(B, b0 + split.rows_per_chunk);
    OuterWindow dWc(H, H, b1 - b0, fuse_dw ? partial + c * H * Hp : nullptr, Hp);
    for (int64_t t = T - 1; t >= 0; --t) {
      // D_T: zeros; with `ring`, D holds two rows, step t's and the one it reads
      const float* x = t == T - 1 ? D_T : D + (ring ? (t + 1) & 1 : t + 1) * B * H;
      float* out = D + (ring ? t & 1 : t) * B * H;
      const float* h = S + (t + 1) * B * H;
      const float* gt = last_only ? (t == T - 1 ? g : nullptr) : g + t * B * H;
      if (table) table->Prefetch(c, t, b0, b1);
      StepRowsAlternating(t, x, H, b0, b1, P, [&](int64_t b) {
        return [&, b](int r, int64_t j, __m512 acc) {
          const int64_t o = (b + r) * H + j;
          const __mmask16 mask = ColumnMask(j, H);
          const __m512 a = gt ? _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, gt + o)) : acc;
          const __m512 d = DerivFromOutput<act>(_mm512_maskz_loadu_ps(mask, h + o));
          _mm512_mask_storeu_ps(out + o, mask, _mm512_mul_ps(a, d));
        };
      });
      // dW += S[t]^T D[t] for this chunk's rows (the state step t read, times its dL/da),
      // while both are in cache
      if (fuse_dw) dWc.Add(S + (t * B + b0) * H, out + b0 * H, b1 - b0);
      if (table) table->Add(c, t, b0, b1, out);
    }
    dWc.Flush();
  });
  ReducePartials(partial, split.chunks, H, H, Hp, fuse_dw, dW);
}

// ----------------------------------------------------------------------- gated panels

// W_h [H, G H] -> [H, G Hp]: column block v (G x 16 wide) = the G gate columns of units
// 16 v + 0..15, side by side. With `pack` and G <= 4, a last group of m = H % 16 <= 4
// units (H = 100: units 96..99) is packed into one vector instead of G: gate q at lanes
// 4 q .. 4 q + m - 1 (the seed LSTM's 7th group held 16 units' columns for 4: its 4 vectors
// of products became 1, 28 -> 25 per row and step; the GRU's 21 -> 19). `full` = the columns of whole groups;
// the packed vector, if any, follows them.
struct InterleavedPanel {
  int64_t H, gates, tail, full, width, ld;  // width: full + the packed vector; ld: its stride
  Aligned buf;
  InterleavedPanel(const float* W, int64_t H, int64_t gates, bool pack = false)
      : H(H), gates(gates),
        tail(pack && gates <= 4 && H % kLanes != 0 && H % kLanes <= 4 ? H % kLanes : 0),
        full(gates * (tail ? H - tail : RoundUp(H, kLanes))),
        width(full + (tail ? kLanes : 0)),
        ld(PanelStride(width)),
        buf(H * ld) {
    if (buf.data == nullptr) return;
    for (int64_t k = 0; k < H; ++k)
      for (int64_t q = 0; q < gates; ++q)
        for (int64_t u = 0; u < H; ++u) {
          const int64_t col = tail && u >= H - tail
                                  ? full + 4 * q + (u - (H - tail))
                                  : (u / kLanes) * gates * kLanes + q * kLanes + u % kLanes;
          buf.data[k * ld + col] = W[k * gates * H + q * H + u];
        }
  }
};

// W_h [H, G H] -> W_h^T padded: [G H, Hp] (row stride ld = PanelStride(Hp)).
struct TransposedPanel {
  int64_t Hp, ld;
  Aligned buf;
  TransposedPanel(const float* W, int64_t H, int64_t gates)
      : Hp(RoundUp(H, kLanes)), ld(PanelStride(Hp)), buf(gates * H * ld) {
    if (buf.data == nullptr) return;
    for (int64_t k = 0; k < gates * H; ++k)
      for (int64_t j = 0; j < H; ++j) buf.data[k * ld + j] = W[j * gates * H + k];
  }
};

// ------------------------------------------------------------------------------- LSTM
//
//   forward   z = u_t + h_{t-1} @ W_h   ([B, 4H], gate blocks i | f | g | o)
//             i, f, o = sigmoid(z_i, z_f, z_o), g = tanh(z_g), c_t = f c_{t-1} + i g,
//             h_t = o tanh(c_t)        -> S_h, S_c [T + 1, B, H], G = gates [T, B, 4H] (GateStride)
//   backward  dh = g_t + D[t + 1] @ W_h^T, dc = dc_{t+1} f_{t+1} + dh o (1 - tanh(c_t)^2) [+ gc_t],
//             D[t] = dL/dz_t = [dc g i(1-i), dc c_{t-1} f(1-f), dc i (1-g^2), dh tanh(c_t) o(1-o)]
//             (gc_t: an optional cotangent of c_t itself, where the cell states are outputs too)
//
// The forward product runs over W_h with its columns interleaved per 16 units ([i f g o] of
// units 16 v .. 16 v + 15 side by side), so one register block holds all four gates of its
// units and the cell update happens in registers, for kLstmRows rows at once (their gate
// vectors go through one TanhN). Rows per block: 4 on an Intel Xeon; 6 on AMD Zen 4, whose
// AVX-512 runs on 256-bit units: there 4 x 4 blocks (16 accumulators, a panel load and a
// broadcast per 2 FMAs) ran the product 1.23x slower than 8 x 3 or 6 x 4 (kernels.py
// product-forward, one thread), and the LSTM forward took 10.84 vs 11.94 ms best.

void LstmForward(ffi::ThreadPool& pool, const float* U, const int32_t* idx, int64_t V,
                 const InterleavedPanel& Wp, const float* h0, const float* c0, float* Sh,
                 float* Sc, float* G, int64_t T, int64_t B, int64_t H, int64_t threads) {
  std::memcpy(Sh, h0, sizeof(float) * B * H);
  std::memcpy(Sc, c0, sizeof(float) * B * H);
  const int64_t G4 = 4 * H;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const RowSplit split(B, Threads(pool, threads));
  const Panel P{Wp.buf.data, Wp.ld, H, Wp.width};
  const bool stream = StreamsGates(G, H);
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t b0 = c * split.rows_per_chunk;
    const int64_t b1 = std::min(B, b0 + split.rows_per_chunk);
    alignas(64) float nan_row[kLanes];
    std::fill(nan_row, nan_row + kLanes, nan);
    for (int64_t t = 0; t < T; ++t) {
      const float* x = Sh + t * B * H;
      if (idx != nullptr && t + 1 < T) PrefetchTableRows(U, G4, idx + (t + 1) * B, V, b0, b1);
      StepRows<4, kLstmRows>(x, H, b0, b1, P, [&](int64_t b) {
        auto f = [&, b](int64_t j0, auto& acc) {
          constexpr int R = std::extent_v<std::remove_reference_t<decltype(acc)>>;
          const int64_t j = j0 / 4;  // 64 interleaved columns = 16 units
          const __mmask16 mask = ColumnMask(j, H);
          // s = the pre-activations of i, f, o (sigmoid), g = g's (tanh), all R rows at once
          __m512 s[R][3], g[R];
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const float* u = InputRow(U, idx, V, G4, t, B, b + r);
            JAXRNN_UNROLL for (int q = 0; q < 4; ++q) {
              const __m512 z = _mm512_add_ps(acc[r][q], _mm512_maskz_loadu_ps(mask, u ? u + q * H + j : nan_row));
              if (q == 2) g[r] = z; else s[r][q < 2 ? q : 2] = z;
            }
          }
          SigmoidN<3 * R>(&s[0][0]);
          TanhN<R>(g);
          __m512 tc[R];
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const int64_t row = b + r;
            const __m512 ig = s[r][0], fg = s[r][1], gg = g[r], og = s[r][2];
            const int64_t o = (t * B + row) * H + j;
            const __m512 cp = _mm512_maskz_loadu_ps(mask, Sc + o);
            tc[r] = _mm512_fmadd_ps(fg, cp, _mm512_mul_ps(ig, gg));
            _mm512_mask_storeu_ps(Sc + o + B * H, mask, tc[r]);
            const __m512 gates[4] = {ig, fg, gg, og};
            StoreGates(G + (t * B + row) * G4 + 4 * j, GateStride(j, H), stream, gates);
          }
          TanhN<R>(tc);
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const int64_t o = (t * B + b + r) * H + j;
            _mm512_mask_storeu_ps(Sh + o + B * H, mask, _mm512_mul_ps(s[r][2], tc[r]));
          }
        };
        return PerBlock<decltype(f)>{f};
      }, 0, Wp.full);
      if (Wp.tail == 0) continue;
      // The packed last group (units H - m .. H - 1, gate q at lanes 4 q ..): one vector per
      // row, 8 rows a block (8 independent FMA chains; 4 would wait on the FMA latency). The
      // same operations per element as above, on the gates' 4-lane quarters: same results.
      StepRows<1, 8>(x, H, b0, b1, P, [&](int64_t b) {
        auto f = [&, b](int64_t, auto& acc) {
          constexpr int R = std::extent_v<std::remove_reference_t<decltype(acc)>>;
          const int64_t j = H - Wp.tail;
          const __mmask8 m4 = static_cast<__mmask8>((1u << Wp.tail) - 1u);
          // every quarter through both: sigmoid for i, f, o, tanh for g (quarter 2)
          __m512 a[R], sg[R];
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const float* u = InputRow(U, idx, V, G4, t, B, b + r);
            const __m512 in = u ? LoadQuarters(u + j, H, 4, m4) : Set(nan);
            a[r] = sg[r] = _mm512_add_ps(acc[r][0], in);
          }
          SigmoidN<R>(sg);
          TanhN<R>(a);
          constexpr int NC = (R + 3) / 4;  // c of 4 rows per vector for their tanh
          __m512 tc[NC];
          __m128 og[R];
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const __m512 gates = _mm512_mask_blend_ps(0x0F00, sg[r], a[r]);
            const __m128 ig = Quarter(gates, 0), fg = Quarter(gates, 1), gg = Quarter(gates, 2);
            og[r] = Quarter(gates, 3);
            const int64_t o = (t * B + b + r) * H + j;
            const __m128 c = _mm_fmadd_ps(fg, _mm_maskz_loadu_ps(m4, Sc + o), _mm_mul_ps(ig, gg));
            _mm_mask_storeu_ps(Sc + o + B * H, m4, c);
            float* gt = G + (t * B + b + r) * G4 + 4 * j;  // gate q at 4 j + q m
            if (Wp.tail == 4 && stream) {
              _mm512_stream_ps(gt, gates);  // the quarters as they are: one cache line
            } else {
              _mm_mask_storeu_ps(gt, m4, ig);
              _mm_mask_storeu_ps(gt + Wp.tail, m4, fg);
              _mm_mask_storeu_ps(gt + 2 * Wp.tail, m4, gg);
              _mm_mask_storeu_ps(gt + 3 * Wp.tail, m4, og[r]);
            }
            tc[r / 4] = WithQuarter(r % 4 ? tc[r / 4] : _mm512_setzero_ps(), r % 4, c);
          }
          TanhN<NC>(tc);
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const int64_t o = (t * B + b + r) * H + j;
            _mm_mask_storeu_ps(Sh + o + B * H, m4, _mm_mul_ps(og[r], Quarter(tc[r / 4], r % 4)));
          }
        };
        return PerBlock<decltype(f)>{f};
      }, Wp.full, Wp.width);
    }
    _mm_sfence();  // the streaming stores done before the chunk counts as done
  });
}

void LstmBackward(ffi::ThreadPool& pool, const float* Sh, const float* Sc, const float* G,
                  const TransposedPanel& WTp, const float* g_hs, const float* g_cs,
                  const float* g_hT, const float* g_cT, float* D, const float* D_T, float* dW, float* dc,
                  const RowSplit& split, float* partial, bool fuse_dw, TableGradient* table,
                  bool ring, int64_t ldw, int64_t T, int64_t B, int64_t H) {
  const int64_t G4 = 4 * H;
  std::memcpy(dc, g_cT, sizeof(float) * B * H);  // the carried dL/dc, ends as dL/dc_0
  const Panel P{WTp.buf.data, WTp.ld, G4, WTp.Hp};
  const __m512 one = Set(1.0f);
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t b0 = c * split.rows_per_chunk;
    const int64_t b1 = std::min(B, b0 + split.rows_per_chunk);
    OuterWindow dWc(H, G4, b1 - b0, fuse_dw ? partial + c * H * ldw : nullptr, ldw);
    for (int64_t t = T - 1; t >= 0; --t) {
      // D_T: zeros; with `ring`, D holds two rows, step t's and the one it reads
      const float* x = t == T - 1 ? D_T : D + (ring ? (t + 1) & 1 : t + 1) * B * G4;
      float* out = D + (ring ? t & 1 : t) * B * G4;
      const float* gh = g_hs ? g_hs + t * B * H : nullptr;
      const float* gc = g_cs ? g_cs + t * B * H : nullptr;
      const float* ghT = t == T - 1 ? g_hT : nullptr;
      PrefetchGatesAhead(G, G4, t, T, B, b0, b1);
      if (t > 0) {  // what step t - 1 reads, into L2 ahead (the streams run backwards in t)
        PrefetchSpan(Sc + ((t - 1) * B + b0) * H, (b1 - b0) * H);
        PrefetchSpan(Sh + ((t - 1) * B + b0) * H, (b1 - b0) * H);
      }
      if (table) table->Prefetch(c, t, b0, b1);
      StepRows(x, G4, b0, b1, P, [&](int64_t b) {
        return [&, b](int r, int64_t j, __m512 acc) {
          const int64_t row = b + r, o = row * H + j;
          const __mmask16 mask = ColumnMask(j, H);
          __m512 dh = acc;
          if (gh) dh = _mm512_add_ps(dh, _mm512_maskz_loadu_ps(mask, gh + o));
          if (ghT) dh = _mm512_add_ps(dh, _mm512_maskz_loadu_ps(mask, ghT + o));
          const float* gt = G + (t * B + row) * G4 + 4 * j;
          const int64_t w = GateStride(j, H);
          const __m512 ig = _mm512_maskz_loadu_ps(mask, gt);
          const __m512 fg = _mm512_maskz_loadu_ps(mask, gt + w);
          const __m512 gg = _mm512_maskz_loadu_ps(mask, gt + 2 * w);
          const __m512 og = _mm512_maskz_loadu_ps(mask, gt + 3 * w);
          const __m512 cn = _mm512_maskz_loadu_ps(mask, Sc + (t + 1) * B * H + o);
          const __m512 cp = _mm512_maskz_loadu_ps(mask, Sc + t * B * H + o);
          const __m512 tc = Tanh(cn);
          __m512 dcv = _mm512_fmadd_ps(_mm512_mul_ps(dh, og), _mm512_fnmadd_ps(tc, tc, one),
                                       _mm512_maskz_loadu_ps(mask, dc + o));
          if (gc) dcv = _mm512_add_ps(dcv, _mm512_maskz_loadu_ps(mask, gc + o));
          float* d = out + row * G4 + j;
          _mm512_mask_storeu_ps(d, mask, _mm512_mul_ps(_mm512_mul_ps(dcv, gg), DerivFromOutput<kSigmoid>(ig)));
          _mm512_mask_storeu_ps(d + H, mask, _mm512_mul_ps(_mm512_mul_ps(dcv, cp), DerivFromOutput<kSigmoid>(fg)));
          _mm512_mask_storeu_ps(d + 2 * H, mask, _mm512_mul_ps(_mm512_mul_ps(dcv, ig), DerivFromOutput<kTanh>(gg)));
          _mm512_mask_storeu_ps(d + 3 * H, mask, _mm512_mul_ps(_mm512_mul_ps(dh, tc), DerivFromOutput<kSigmoid>(og)));
          _mm512_mask_storeu_ps(dc + o, mask, _mm512_mul_ps(dcv, fg));
        };
      });
      if (fuse_dw) dWc.Add(Sh + (t * B + b0) * H, out + b0 * G4, b1 - b0);
      if (table) table->Add(c, t, b0, b1, out);
    }
    dWc.Flush();
  });
  ReducePartials(partial, split.chunks, H, G4, ldw, fuse_dw, dW);
}

// -------------------------------------------------------------------------------- GRU
//
// reset_after (Keras / cuDNN form), gate blocks z | r | n:
//   forward   [u_z, u_r, u_n] = h_{t-1} @ W_h + b_h, z = sigmoid(a_z + u_z),
//             r = sigmoid(a_r + u_r), n = tanh(a_n + r u_n), h_t = z h_{t-1} + (1 - z) n
//             -> S [T + 1, B, H], V = [z | r | n | u_n] [T, B, 4H] (per 16 units, as G)
//   backward  dh = g_t + carry + D[t + 1] @ W_h^T   (carry = z_{t+1} dL/dh_{t+1})
//             dn = dh (1 - z)(1 - n^2), dz = dh (h_{t-1} - n) z (1 - z), dr = dn u_n r (1 - r)
//             D[t] = dL/du_t = [dz, dr, dn r], A[t] = dL/da_t = [dz, dr, dn]   ([T + 1, B, 3H])
// As for the LSTM, the forward product runs over W_h with its columns interleaved per 16 units.

void GruForward(ffi::ThreadPool& pool, const float* U, const int32_t* idx, int64_t V,
                const InterleavedPanel& Wp, const float* bh, const float* h0, float* S,
                float* Sv, int64_t T, int64_t B, int64_t H, int64_t threads) {
  std::memcpy(S, h0, sizeof(float) * B * H);
  const int64_t G3 = 3 * H;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const RowSplit split(B, Threads(pool, threads));
  const Panel P{Wp.buf.data, Wp.ld, H, Wp.width};
  const __m512 one = Set(1.0f);
  const bool stream = StreamsGates(Sv, H);
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t b0 = c * split.rows_per_chunk;
    const int64_t b1 = std::min(B, b0 + split.rows_per_chunk);
    alignas(64) float nan_row[kLanes];
    std::fill(nan_row, nan_row + kLanes, nan);
    for (int64_t t = 0; t < T; ++t) {
      if (idx != nullptr && t + 1 < T) PrefetchTableRows(U, G3, idx + (t + 1) * B, V, b0, b1);
      StepRows<3>(S + t * B * H, H, b0, b1, P, [&](int64_t b) {
        auto f = [&, b](int64_t j0, auto& acc) {
          constexpr int R = std::extent_v<std::remove_reference_t<decltype(acc)>>;
          const int64_t j = j0 / 3;  // 48 interleaved columns = 16 units
          const __mmask16 mask = ColumnMask(j, H);
          // zr[r] = the z and r pre-activations (sigmoid), then n[r] = tanh(a_n + r u_n),
          // each activated for all R rows at once
          __m512 zr[R][2], in_n[R], u_n[R], n[R];
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const float* a = InputRow(U, idx, V, G3, t, B, b + r);
            JAXRNN_UNROLL for (int q = 0; q < 2; ++q) {
              const __m512 in = _mm512_maskz_loadu_ps(mask, a ? a + q * H + j : nan_row);
              const __m512 u = _mm512_add_ps(acc[r][q], _mm512_maskz_loadu_ps(mask, bh + q * H + j));
              zr[r][q] = _mm512_add_ps(in, u);
            }
            in_n[r] = _mm512_maskz_loadu_ps(mask, a ? a + 2 * H + j : nan_row);
            u_n[r] = _mm512_add_ps(acc[r][2], _mm512_maskz_loadu_ps(mask, bh + 2 * H + j));
          }
          SigmoidN<2 * R>(&zr[0][0]);
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            n[r] = _mm512_fmadd_ps(zr[r][1], u_n[r], in_n[r]);
          }
          TanhN<R>(n);
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const int64_t row = b + r;
            const __m512 z = zr[r][0];
            const int64_t o = (t * B + row) * H + j;
            const __m512 hp = _mm512_maskz_loadu_ps(mask, S + o);
            // h = z h_prev + (1 - z) n
            const __m512 h = _mm512_fmadd_ps(z, hp, _mm512_mul_ps(_mm512_sub_ps(one, z), n[r]));
            _mm512_mask_storeu_ps(S + o + B * H, mask, h);
            const __m512 gates[4] = {z, zr[r][1], n[r], u_n[r]};
            StoreGates(Sv + (t * B + row) * 4 * H + 4 * j, GateStride(j, H), stream, gates);
          }
        };
        return PerBlock<decltype(f)>{f};
      }, 0, Wp.full);
      if (Wp.tail == 0) continue;
      // The packed last group (units H - m .. H - 1; z, r, n at lanes 0.., 4.., 8..), as in
      // LstmForward: the same operations per element on the gates' 4-lane quarters.
      StepRows<1, 8>(S + t * B * H, H, b0, b1, P, [&](int64_t b) {
        auto f = [&, b](int64_t, auto& acc) {
          constexpr int R = std::extent_v<std::remove_reference_t<decltype(acc)>>;
          const int64_t j = H - Wp.tail;
          const __mmask8 m4 = static_cast<__mmask8>((1u << Wp.tail) - 1u);
          const __m512 bhv = LoadQuarters(bh + j, H, 3, m4);
          __m512 zr[R], u[R], in[R];
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const float* a = InputRow(U, idx, V, G3, t, B, b + r);
            in[r] = a ? LoadQuarters(a + j, H, 3, m4) : Set(nan);
            u[r] = _mm512_add_ps(acc[r][0], bhv);
            zr[r] = _mm512_add_ps(in[r], u[r]);  // quarter 2 unused
          }
          SigmoidN<R>(zr);
          constexpr int NC = (R + 3) / 4;  // n of 4 rows per vector for their tanh
          __m512 n[NC];
          __m128 z[R];
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            z[r] = Quarter(zr[r], 0);
            const __m128 rg = Quarter(zr[r], 1), u_n = Quarter(u[r], 2);
            const __m128 pre = _mm_fmadd_ps(rg, u_n, Quarter(in[r], 2));
            float* v = Sv + (t * B + b + r) * 4 * H + 4 * j;  // as G: q at 4 j + q m
            _mm_mask_storeu_ps(v, m4, z[r]);
            _mm_mask_storeu_ps(v + Wp.tail, m4, rg);
            _mm_mask_storeu_ps(v + 3 * Wp.tail, m4, u_n);
            n[r / 4] = WithQuarter(r % 4 ? n[r / 4] : _mm512_setzero_ps(), r % 4, pre);
          }
          TanhN<NC>(n);
          JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
            const __m128 nr = Quarter(n[r / 4], r % 4);
            const int64_t o = (t * B + b + r) * H + j;
            const __m128 hp = _mm_maskz_loadu_ps(m4, S + o);
            const __m128 h = _mm_fmadd_ps(z[r], hp, _mm_mul_ps(_mm_sub_ps(_mm_set1_ps(1.0f), z[r]), nr));
            _mm_mask_storeu_ps(S + o + B * H, m4, h);
            _mm_mask_storeu_ps(Sv + (t * B + b + r) * 4 * H + 4 * j + 2 * Wp.tail, m4, nr);
          }
        };
        return PerBlock<decltype(f)>{f};
      }, Wp.full, Wp.width);
    }
    _mm_sfence();  // as LstmForward
  });
}

// D and A as GradientRows place them (D_T: D's zero row T; ring_d / ring_a: two-row rings).
// db_h = the sum of D's rows, one partial per chunk ([ldw] each in db_partial, zeroed),
// added in chunk order: D need not leave the call for it.
void GruBackward(ffi::ThreadPool& pool, const float* S, const float* Sv,
                 const TransposedPanel& WTp, const float* g, bool last_only, float* D,
                 const float* D_T, bool ring_d, float* A, bool ring_a, float* carry, float* dW,
                 float* db, float* db_partial, const RowSplit& split, float* partial,
                 bool fuse_dw, TableGradient* table, int64_t ldw, int64_t T, int64_t B,
                 int64_t H) {
  const int64_t G3 = 3 * H;
  std::memset(carry, 0, sizeof(float) * B * H);  // z_{t+1} dL/dh_{t+1}; ends as z_0 dL/dh_0
  const Panel P{WTp.buf.data, WTp.ld, G3, WTp.Hp};
  const __m512 one = Set(1.0f);
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t b0 = c * split.rows_per_chunk;
    const int64_t b1 = std::min(B, b0 + split.rows_per_chunk);
    OuterWindow dWc(H, G3, b1 - b0, fuse_dw ? partial + c * H * ldw : nullptr, ldw);
    float* dbc = db_partial + c * ldw;
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* gt = last_only ? (t == T - 1 ? g : nullptr) : g + t * B * H;
      const float* x = t == T - 1 ? D_T : D + (ring_d ? (t + 1) & 1 : t + 1) * B * G3;
      float* out = D + (ring_d ? t & 1 : t) * B * G3;
      float* outA = A + (ring_a ? t & 1 : t) * B * G3;
      PrefetchGatesAhead(Sv, 4 * H, t, T, B, b0, b1);
      if (t > 0) PrefetchSpan(S + ((t - 1) * B + b0) * H, (b1 - b0) * H);  // step t - 1's, ahead
      if (table) table->Prefetch(c, t, b0, b1);
      StepRows(x, G3, b0, b1, P, [&](int64_t b) {
        return [&, b](int r, int64_t j, __m512 acc) {
          const int64_t row = b + r, o = row * H + j;
          const __mmask16 mask = ColumnMask(j, H);
          __m512 dh = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, carry + o));
          if (gt) dh = _mm512_add_ps(dh, _mm512_maskz_loadu_ps(mask, gt + o));
          const float* v = Sv + (t * B + row) * 4 * H + 4 * j;
          const int64_t w = GateStride(j, H);
          const __m512 z = _mm512_maskz_loadu_ps(mask, v);
          const __m512 rg = _mm512_maskz_loadu_ps(mask, v + w);
          const __m512 n = _mm512_maskz_loadu_ps(mask, v + 2 * w);
          const __m512 un = _mm512_maskz_loadu_ps(mask, v + 3 * w);
          const __m512 hp = _mm512_maskz_loadu_ps(mask, S + t * B * H + o);
          const __m512 dn = _mm512_mul_ps(_mm512_mul_ps(dh, _mm512_sub_ps(one, z)),
                                          DerivFromOutput<kTanh>(n));
          const __m512 dz = _mm512_mul_ps(_mm512_mul_ps(dh, _mm512_sub_ps(hp, n)),
                                          DerivFromOutput<kSigmoid>(z));
          const __m512 dr = _mm512_mul_ps(_mm512_mul_ps(dn, un), DerivFromOutput<kSigmoid>(rg));
          float* d = out + row * G3 + j;
          float* da = outA + row * G3 + j;
          _mm512_mask_storeu_ps(d, mask, dz);
          _mm512_mask_storeu_ps(d + H, mask, dr);
          _mm512_mask_storeu_ps(d + 2 * H, mask, _mm512_mul_ps(dn, rg));
          _mm512_mask_storeu_ps(da, mask, dz);
          _mm512_mask_storeu_ps(da + H, mask, dr);
          _mm512_mask_storeu_ps(da + 2 * H, mask, dn);
          _mm512_mask_storeu_ps(carry + o, mask, _mm512_mul_ps(dh, z));
        };
      });
      if (fuse_dw) dWc.Add(S + (t * B + b0) * H, out + b0 * G3, b1 - b0);
      if (table) table->Add(c, t, b0, b1, outA);
      AddRowSum(out + b0 * G3, b1 - b0, G3, G3, dbc);  // db_h
    }
    dWc.Flush();
  });
  ReducePartials(partial, split.chunks, H, G3, ldw, fuse_dw, dW);
  ReducePartials(db_partial, split.chunks, 1, G3, ldw, true, db);
}

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

// How a backward kernel's [T + 1, B, G H] gradient buffer (row T = 0, read by step T - 1)
// goes back to XLA, from the result's dimensions (`row` = B G H elements):
//  * all rows, [T + 1, B, G H];
//  * the first row only, [1, B, G H]: the caller needs just that row (the table's gradient
//    is accumulated inside the call), so the kernel keeps only the two rows a step writes
//    and reads, row t at t % 2 of a scratch buffer (a ring). For the seed LSTM that takes
//    26 MB out of XLA's temporary buffer for the step (72 -> 47 MB), below the 64 MB of a
//    glibc thread heap, so the buffer is reused from step to step instead of being mapped
//    and faulted in afresh (jaxrnn/runtime.py), and the rows stay in cache;
//  * the input rows only, [T, B, G H] (the cotangent of U [T, B, G H] as it is): the zero
//    row lives in a buffer of its own. XLA then gets the cotangent without slicing
//    [T + 1, B, G H]: a slice feeding the input projection's gradient matmuls cost ~33 ms in
//    XLA:CPU against ~4 ms without it (the LSTM classifier's [250, 64, 400] buffer).
enum class Rows { kAll, kFirst, kInputs, kInvalid };

// One row is read as kFirst: at T = 1 the input rows are that same row (the ring then holds
// the one step's row, with the same result), and a buffer that only takes kAll or kFirst (the
// GRU's D) must not be refused there.
Rows RowsOf(ffi::Span<const int64_t> dims, int64_t T, int64_t B, int64_t GH) {
  if (dims.size() != 3 || dims[1] != B || dims[2] != GH) return Rows::kInvalid;
  if (dims[0] == T + 1) return Rows::kAll;
  if (dims[0] == 1) return Rows::kFirst;
  if (dims[0] == T) return Rows::kInputs;
  return Rows::kInvalid;
}

// Where a backward kernel writes such a buffer (`data`: rows 0..T - 1 and row T for kAll;
// with `ring` (kFirst), row t at t % 2 of an uninitialised two-row scratch buffer whose row 0
// Finish() copies into the result) and the zero row step T - 1 reads (`last`).
struct GradientRows {
  float* result;
  int64_t row;
  bool ring;
  Aligned scratch;
  Aligned zeros;
  float* data;
  const float* last;
  GradientRows(float* result, Rows rows, int64_t T, int64_t row)
      : result(result), row(row), ring(rows == Rows::kFirst),
        scratch(ring ? 2 * row : 1, /*zeroed=*/false),
        zeros(rows == Rows::kAll ? 1 : row),
        data(ring ? scratch.data : result),
        last(rows == Rows::kAll ? (data ? data + T * row : nullptr) : zeros.data) {
    if (rows == Rows::kAll && data != nullptr) std::memset(data + T * row, 0, sizeof(float) * row);
  }
  bool ok() const { return data != nullptr && last != nullptr; }
  void Finish() const {
    if (ring) std::memcpy(result, data, sizeof(float) * row);
  }
};

template <class Fn>
ffi::Error Dispatch(int64_t activation, const Fn& fn) {
  switch (activation) {
    case kTanh: fn(std::integral_constant<int64_t, kTanh>()); break;
    case kSigmoid: fn(std::integral_constant<int64_t, kSigmoid>()); break;
    case kRelu: fn(std::integral_constant<int64_t, kRelu>()); break;
    case kIdentity: fn(std::integral_constant<int64_t, kIdentity>()); break;
    default:
      return ffi::Error::InvalidArgument("jaxrnn_simple: activation code must be 0..3, got " +
                                         std::to_string(activation));
  }
  return ffi::Error::Success();
}

ffi::Error SimpleForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> U,
                             ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::F32> W,
                             ffi::Buffer<ffi::F32> h0, ffi::ResultBuffer<ffi::F32> S,
                             int64_t activation, int64_t threads) {
  const auto sd = S->dimensions();
  if (sd.size() != 3) return ffi::Error::InvalidArgument("jaxrnn_simple_forward: S " + Shape(sd));
  const int64_t T = sd[0] - 1, B = sd[1], H = sd[2];
  const auto ud = U.dimensions();
  const bool table = ud.size() == 2;
  const bool ok = W.dimensions().size() == 2 && W.dimensions()[0] == H &&
                  W.dimensions()[1] == H && static_cast<int64_t>(h0.element_count()) == B * H &&
                  (table ? (ud[1] == H && static_cast<int64_t>(idx.element_count()) == T * B)
                         : (ud.size() == 3 && ud[0] == T && ud[1] == B && ud[2] == H));
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_simple_forward: expected U [T, B, H] or [V, H] with idx [T, B], W [H, H], "
        "h0 [B, H] for S [T + 1, B, H] = " + Shape(sd) + "; got U " + Shape(ud) + ", idx " +
        Shape(idx.dimensions()) + ", W " + Shape(W.dimensions()) + ", h0 " +
        Shape(h0.dimensions()));
  }
  if (B == 0 || H == 0) return ffi::Error::Success();
  const Padded Wp(W.typed_data(), H, /*transpose=*/false);
  if (Wp.data == nullptr) return ffi::Error::Internal("jaxrnn_simple_forward: out of memory");
  return Dispatch(activation, [&](auto act) {
    Forward<decltype(act)::value>(pool, U.typed_data(), table ? idx.typed_data() : nullptr,
                                  table ? ud[0] : 0, Panel{Wp.data, Wp.ld, H, Wp.Hp},
                                  h0.typed_data(),
                                  S->typed_data(), T, B, H, threads);
  });
}

ffi::Error SimpleBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> S,
                              ffi::Buffer<ffi::F32> W, ffi::Buffer<ffi::F32> g,
                              ffi::Buffer<ffi::S32> idx, ffi::ResultBuffer<ffi::F32> D,
                              ffi::ResultBuffer<ffi::F32> dW, ffi::ResultBuffer<ffi::F32> dTable,
                              int64_t activation, int64_t threads, int64_t fuse_dw) {
  const auto sd = S.dimensions();
  const auto gd = g.dimensions();
  const auto td = dTable->dimensions();
  const bool shapes_ok = sd.size() == 3;
  const int64_t T = shapes_ok ? sd[0] - 1 : 0, B = shapes_ok ? sd[1] : 0,
                H = shapes_ok ? sd[2] : 0;
  const Rows rows = RowsOf(D->dimensions(), T, B, H);
  const int64_t V = td.size() == 2 ? td[0] : -1;
  const bool last_only = gd.size() == 2;
  const bool ok = shapes_ok && T >= 1 && rows != Rows::kInvalid &&
                  (rows != Rows::kFirst || fuse_dw != 0) &&
                  W.dimensions().size() == 2 &&
                  W.dimensions()[0] == H && W.dimensions()[1] == H &&
                  static_cast<int64_t>(dW->element_count()) == H * H &&
                  (last_only ? (gd[0] == B && gd[1] == H)
                             : (gd.size() == 3 && gd[0] == T && gd[1] == B && gd[2] == H)) &&
                  V >= 0 && td[1] == H &&
                  (V == 0 || static_cast<int64_t>(idx.element_count()) == T * B);
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_simple_backward: expected S [T + 1, B, H] (T >= 1), D [T + 1, B, H], [T, B, H] or "
        "(with fuse_dw) [1, B, H], W [H, H], g [T, B, H] or [B, H], dTable [V, H] with idx [T, B] "
        "(V = 0: no table); got fuse_dw " + std::to_string(fuse_dw) + ", S " + Shape(sd) +
        ", D " + Shape(D->dimensions()) + ", W " + Shape(W.dimensions()) + ", g " + Shape(gd) +
        ", dTable " + Shape(td) + ", idx " + Shape(idx.dimensions()));
  }
  if (H == 0) return ffi::Error::Success();
  if (B == 0) {
    std::memset(dW->typed_data(), 0, sizeof(float) * H * H);
    std::memset(dTable->typed_data(), 0, sizeof(float) * V * H);
    return ffi::Error::Success();
  }
  const Padded WTp(W.typed_data(), H, /*transpose=*/true);
  const int64_t threads_used = Threads(pool, threads);
  const RowSplit split(B, threads_used);
  Aligned partial(fuse_dw ? split.chunks * H * WTp.Hp : 1);  // one [H, Hp] partial dW per chunk
  const GradientRows Drows(D->typed_data(), rows, T, B * H);
  TableGradient table(dTable->typed_data(), idx.typed_data(), V, H, T, B, split);
  if (WTp.data == nullptr || partial.data == nullptr || !Drows.ok() || !table.ok()) {
    return ffi::Error::Internal("jaxrnn_simple_backward: out of memory");
  }
  const ffi::Error status = Dispatch(activation, [&](auto act) {
    Backward<decltype(act)::value>(pool, S.typed_data(), Panel{WTp.data, WTp.ld, H, WTp.Hp},
                                   WTp.Hp, g.typed_data(),
                                   last_only, Drows.data, Drows.last, dW->typed_data(), split,
                                   partial.data, fuse_dw != 0, V > 0 ? &table : nullptr,
                                   Drows.ring, T, B, H);
  });
  if (status.failure()) return status;
  if (V > 0) table.Finish(pool, threads_used);
  Drows.Finish();
  return ffi::Error::Success();
}

ffi::Error LstmForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> U,
                           ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::F32> W,
                           ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                           ffi::ResultBuffer<ffi::F32> Sh, ffi::ResultBuffer<ffi::F32> Sc,
                           ffi::ResultBuffer<ffi::F32> G, int64_t threads) {
  const auto sd = Sh->dimensions();
  if (sd.size() != 3) return ffi::Error::InvalidArgument("jaxrnn_lstm_forward: S_h " + Shape(sd));
  const int64_t T = sd[0] - 1, B = sd[1], H = sd[2];
  const auto ud = U.dimensions();
  const bool table = ud.size() == 2;
  const bool ok = W.dimensions().size() == 2 && W.dimensions()[0] == H &&
                  W.dimensions()[1] == 4 * H &&
                  static_cast<int64_t>(h0.element_count()) == B * H &&
                  static_cast<int64_t>(c0.element_count()) == B * H &&
                  Sc->element_count() == Sh->element_count() &&
                  static_cast<int64_t>(G->element_count()) == T * B * 4 * H &&
                  (table ? (ud[1] == 4 * H && static_cast<int64_t>(idx.element_count()) == T * B)
                         : (ud.size() == 3 && ud[0] == T && ud[1] == B && ud[2] == 4 * H));
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_lstm_forward: expected U [T, B, 4H] or [V, 4H] with idx [T, B], W [H, 4H], "
        "h0, c0 [B, H] for S_h [T + 1, B, H] = " + Shape(sd) + "; got U " + Shape(ud) + ", idx " +
        Shape(idx.dimensions()) + ", W " + Shape(W.dimensions()) + ", h0 " +
        Shape(h0.dimensions()) + ", c0 " + Shape(c0.dimensions()));
  }
  if (B == 0 || H == 0) return ffi::Error::Success();
  const InterleavedPanel Wp(W.typed_data(), H, 4, /*pack=*/true);
  if (Wp.buf.data == nullptr) return ffi::Error::Internal("jaxrnn_lstm_forward: out of memory");
  LstmForward(pool, U.typed_data(), table ? idx.typed_data() : nullptr, table ? ud[0] : 0, Wp,
              h0.typed_data(), c0.typed_data(), Sh->typed_data(), Sc->typed_data(),
              G->typed_data(), T, B, H, threads);
  return ffi::Error::Success();
}

ffi::Error LstmBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> Sh,
                            ffi::Buffer<ffi::F32> Sc, ffi::Buffer<ffi::F32> G,
                            ffi::Buffer<ffi::F32> W, ffi::Buffer<ffi::F32> g_hs,
                            ffi::Buffer<ffi::F32> g_cs, ffi::Buffer<ffi::F32> g_hT,
                            ffi::Buffer<ffi::F32> g_cT, ffi::Buffer<ffi::S32> idx,
                            ffi::ResultBuffer<ffi::F32> D,
                            ffi::ResultBuffer<ffi::F32> dW, ffi::ResultBuffer<ffi::F32> dc0,
                            ffi::ResultBuffer<ffi::F32> dTable, int64_t threads,
                            int64_t fuse_dw) {
  const auto sd = Sh.dimensions();
  const auto td = dTable->dimensions();
  const bool shapes_ok = sd.size() == 3 && Sc.element_count() == Sh.element_count();
  const int64_t T = shapes_ok ? sd[0] - 1 : 0, B = shapes_ok ? sd[1] : 0,
                H = shapes_ok ? sd[2] : 0;
  const int64_t V = td.size() == 2 ? td[0] : -1;
  const int64_t n_hs = static_cast<int64_t>(g_hs.element_count());
  const int64_t n_cs = static_cast<int64_t>(g_cs.element_count());
  const Rows rows = RowsOf(D->dimensions(), T, B, 4 * H);
  const bool ok = shapes_ok && T >= 1 && W.dimensions().size() == 2 &&
                  W.dimensions()[0] == H && W.dimensions()[1] == 4 * H &&
                  static_cast<int64_t>(G.element_count()) == T * B * 4 * H &&
                  rows != Rows::kInvalid &&
                  static_cast<int64_t>(dW->element_count()) == 4 * H * H &&
                  static_cast<int64_t>(dc0->element_count()) == B * H &&
                  static_cast<int64_t>(g_hT.element_count()) == B * H &&
                  static_cast<int64_t>(g_cT.element_count()) == B * H &&
                  (n_hs == 0 || n_hs == T * B * H) && (n_cs == 0 || n_cs == T * B * H) &&
                  V >= 0 && td[1] == 4 * H &&
                  (V == 0 || static_cast<int64_t>(idx.element_count()) == T * B) &&
                  (rows != Rows::kFirst || fuse_dw != 0);
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_lstm_backward: expected S_h, S_c [T + 1, B, H] (T >= 1), G [T, B, 4H], W [H, 4H], "
        "g_hs, g_cs [T, B, H] or empty, g_hT, g_cT [B, H], dTable [V, 4H] with idx [T, B], D "
        "[T + 1, B, 4H], [T, B, 4H] or (with fuse_dw) [1, B, 4H]; got fuse_dw " +
        std::to_string(fuse_dw) + ", S_h " + Shape(sd) + ", S_c " +
        Shape(Sc.dimensions()) + ", D " + Shape(D->dimensions()) + ", G " + Shape(G.dimensions()) +
        ", W " + Shape(W.dimensions()) + ", g_hs " + Shape(g_hs.dimensions()) + ", g_cs " +
        Shape(g_cs.dimensions()) + ", g_hT " +
        Shape(g_hT.dimensions()) + ", g_cT " + Shape(g_cT.dimensions()) + ", dTable " +
        Shape(td) + ", idx " + Shape(idx.dimensions()));
  }
  if (H == 0) return ffi::Error::Success();
  if (B == 0) {
    std::memset(dW->typed_data(), 0, sizeof(float) * 4 * H * H);
    std::memset(dTable->typed_data(), 0, sizeof(float) * V * 4 * H);
    return ffi::Error::Success();
  }
  const TransposedPanel WTp(W.typed_data(), H, 4);
  const int64_t threads_used = Threads(pool, threads);
  const RowSplit split(B, threads_used);
  const int64_t ldw = RoundUp(4 * H, kLanes);
  Aligned partial(fuse_dw ? split.chunks * H * ldw : 1);
  const GradientRows Drows(D->typed_data(), rows, T, B * 4 * H);
  TableGradient table(dTable->typed_data(), idx.typed_data(), V, 4 * H, T, B, split);
  if (WTp.buf.data == nullptr || partial.data == nullptr || !Drows.ok() || !table.ok()) {
    return ffi::Error::Internal("jaxrnn_lstm_backward: out of memory");
  }
  LstmBackward(pool, Sh.typed_data(), Sc.typed_data(), G.typed_data(), WTp,
               n_hs ? g_hs.typed_data() : nullptr, n_cs ? g_cs.typed_data() : nullptr,
               g_hT.typed_data(), g_cT.typed_data(),
               Drows.data, Drows.last, dW->typed_data(), dc0->typed_data(), split, partial.data,
               fuse_dw != 0, V > 0 ? &table : nullptr, Drows.ring, ldw, T, B, H);
  if (V > 0) table.Finish(pool, threads_used);
  Drows.Finish();
  return ffi::Error::Success();
}

ffi::Error GruForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> U,
                          ffi::Buffer<ffi::S32> idx, ffi::Buffer<ffi::F32> W,
                          ffi::Buffer<ffi::F32> bh, ffi::Buffer<ffi::F32> h0,
                          ffi::ResultBuffer<ffi::F32> S, ffi::ResultBuffer<ffi::F32> Sv,
                          int64_t threads) {
  const auto sd = S->dimensions();
  if (sd.size() != 3) return ffi::Error::InvalidArgument("jaxrnn_gru_forward: S " + Shape(sd));
  const int64_t T = sd[0] - 1, B = sd[1], H = sd[2];
  const auto ud = U.dimensions();
  const bool table = ud.size() == 2;
  const bool ok = W.dimensions().size() == 2 && W.dimensions()[0] == H &&
                  W.dimensions()[1] == 3 * H &&
                  static_cast<int64_t>(bh.element_count()) == 3 * H &&
                  static_cast<int64_t>(h0.element_count()) == B * H &&
                  static_cast<int64_t>(Sv->element_count()) == T * B * 4 * H &&
                  (table ? (ud[1] == 3 * H && static_cast<int64_t>(idx.element_count()) == T * B)
                         : (ud.size() == 3 && ud[0] == T && ud[1] == B && ud[2] == 3 * H));
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_gru_forward: expected U [T, B, 3H] or [V, 3H] with idx [T, B], W [H, 3H], "
        "b_h [3H], h0 [B, H] for S [T + 1, B, H] = " + Shape(sd) + "; got U " + Shape(ud) +
        ", idx " + Shape(idx.dimensions()) + ", W " + Shape(W.dimensions()) + ", b_h " +
        Shape(bh.dimensions()) + ", h0 " + Shape(h0.dimensions()));
  }
  if (B == 0 || H == 0) return ffi::Error::Success();
  const InterleavedPanel Wp(W.typed_data(), H, 3, /*pack=*/true);
  if (Wp.buf.data == nullptr) return ffi::Error::Internal("jaxrnn_gru_forward: out of memory");
  GruForward(pool, U.typed_data(), table ? idx.typed_data() : nullptr, table ? ud[0] : 0, Wp,
             bh.typed_data(), h0.typed_data(), S->typed_data(), Sv->typed_data(), T, B, H,
             threads);
  return ffi::Error::Success();
}

ffi::Error GruBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> S,
                           ffi::Buffer<ffi::F32> Sv, ffi::Buffer<ffi::F32> W,
                           ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::S32> idx,
                           ffi::ResultBuffer<ffi::F32> D, ffi::ResultBuffer<ffi::F32> A,
                           ffi::ResultBuffer<ffi::F32> carry, ffi::ResultBuffer<ffi::F32> dW,
                           ffi::ResultBuffer<ffi::F32> db, ffi::ResultBuffer<ffi::F32> dTable,
                           int64_t threads, int64_t fuse_dw) {
  const auto sd = S.dimensions();
  const auto gd = g.dimensions();
  const auto td = dTable->dimensions();
  const int64_t T = sd.size() == 3 ? sd[0] - 1 : 0, B = sd.size() == 3 ? sd[1] : 0,
                H = sd.size() == 3 ? sd[2] : 0;
  const int64_t V = td.size() == 2 ? td[0] : -1;
  const bool last_only = gd.size() == 2;
  const Rows rows = RowsOf(A->dimensions(), T, B, 3 * H);
  const Rows d_rows = RowsOf(D->dimensions(), T, B, 3 * H);
  const bool ok = sd.size() == 3 && T >= 1 && W.dimensions().size() == 2 &&
                  W.dimensions()[0] == H && W.dimensions()[1] == 3 * H &&
                  static_cast<int64_t>(Sv.element_count()) == T * B * 4 * H &&
                  (d_rows == Rows::kAll || (d_rows == Rows::kFirst && fuse_dw != 0)) &&
                  static_cast<int64_t>(db->element_count()) == 3 * H &&
                  rows != Rows::kInvalid &&
                  static_cast<int64_t>(carry->element_count()) == B * H &&
                  static_cast<int64_t>(dW->element_count()) == 3 * H * H &&
                  (last_only ? (gd[0] == B && gd[1] == H)
                             : (gd.size() == 3 && gd[0] == T && gd[1] == B && gd[2] == H)) &&
                  V >= 0 && td[1] == 3 * H &&
                  (V == 0 || static_cast<int64_t>(idx.element_count()) == T * B);
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_gru_backward: expected S [T + 1, B, H] (T >= 1), Sv [T, B, 4H], W [H, 3H], "
        "g [T, B, H] or [B, H], dTable [V, 3H] with idx [T, B], db [3H], D [T + 1, B, 3H] or "
        "(with fuse_dw) [1, B, 3H], A [T + 1, B, 3H], [T, B, 3H] or [1, B, 3H]; got fuse_dw " +
        std::to_string(fuse_dw) + ", S " + Shape(sd) + ", Sv " + Shape(Sv.dimensions()) +
        ", D " + Shape(D->dimensions()) + ", A " + Shape(A->dimensions()) + ", W " +
        Shape(W.dimensions()) + ", g " + Shape(gd) + ", db " + Shape(db->dimensions()) +
        ", dTable " + Shape(td) + ", idx " + Shape(idx.dimensions()));
  }
  if (H == 0) return ffi::Error::Success();
  if (B == 0) {
    std::memset(dW->typed_data(), 0, sizeof(float) * 3 * H * H);
    std::memset(db->typed_data(), 0, sizeof(float) * 3 * H);
    std::memset(dTable->typed_data(), 0, sizeof(float) * V * 3 * H);
    return ffi::Error::Success();
  }
  const TransposedPanel WTp(W.typed_data(), H, 3);
  const int64_t threads_used = Threads(pool, threads);
  const RowSplit split(B, threads_used);
  const int64_t ldw = RoundUp(3 * H, kLanes);
  Aligned partial(fuse_dw ? split.chunks * H * ldw : 1), db_partial(split.chunks * ldw);
  const GradientRows Drows(D->typed_data(), d_rows, T, B * 3 * H);
  const GradientRows Arows(A->typed_data(), rows, T, B * 3 * H);
  TableGradient table(dTable->typed_data(), idx.typed_data(), V, 3 * H, T, B, split);
  if (WTp.buf.data == nullptr || partial.data == nullptr || db_partial.data == nullptr ||
      !Drows.ok() || !Arows.ok() || !table.ok()) {
    return ffi::Error::Internal("jaxrnn_gru_backward: out of memory");
  }
  GruBackward(pool, S.typed_data(), Sv.typed_data(), WTp, g.typed_data(), last_only,
              Drows.data, Drows.last, Drows.ring, Arows.data, Arows.ring, carry->typed_data(),
              dW->typed_data(), db->typed_data(), db_partial.data, split, partial.data,
              fuse_dw != 0, V > 0 ? &table : nullptr, ldw, T, B, H);
  if (V > 0) table.Finish(pool, threads_used);
  Drows.Finish();
  Arows.Finish();
  return ffi::Error::Success();
}


// ------------------------------------------------------------------ table projection

// Rows ids[r0 .. r1 - 1] of E [V, K] copied into dst [r1 - r0, K]; a NaN row for an id
// outside [0, V) (as jnp.take's default "fill" mode).
void GatherRows(const float* E, const int32_t* ids, int64_t V, int64_t K, int64_t r0, int64_t r1,
                float* dst) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t r = r0; r < r1; ++r, dst += K) {
    const int32_t i = ids[r];
    if (i >= 0 && i < V) {
      std::memcpy(dst, E + static_cast<int64_t>(i) * K, sizeof(float) * K);
    } else {
      std::fill(dst, dst + K, nan);
    }
  }
}

// W^T of W [K, N] into WT [N, Kp] (Kp >= K; the columns beyond K left as they are: zeros in a
// zeroed buffer), the panel of the projections' gradients dOut W^T.
void TransposeInto(const float* W, int64_t K, int64_t N, int64_t Kp, float* WT) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) WT[n * Kp + k] = W[k * N + n];
}

// table = E W (+ b) ([V, K] @ [K, N] (+ [N])): the rows split over the threads, register
// blocks over W padded to [K, Np], b added in the epilogue. XLA:CPU took 1.1-1.4 ms for the
// seed LSTM's [5000, 32] @ [32, 400] and its bias add (an 8 MB table written, then read and
// written again).
// The same with ids ([R] int32): out = E[ids] W (+ b), [R, N], the step inputs of a batch
// with fewer tokens than the vocabulary (one review at B = 1 inference), gathered 64 rows at a
// time into a buffer of the thread's; an id outside [0, V) gives a NaN row (as jnp.take then
// the product). XLA ran the gather, the product and the bias add as three operations, the
// gather split over two threads: ~45 us of a 165 us seed inference call at B = 1 (Zen 4).
void ProjectRows(ffi::ThreadPool& pool, const float* E, const int32_t* ids, int64_t V,
                 int64_t R, int64_t K, const float* Wp, int64_t Np, const float* bias, int64_t N,
                 float* out, int64_t threads) {
  constexpr int64_t kRows = 64;
  // by default a thread of its own per 4M multiply-adds (~50 us on one core here) at most: a
  // B = 1 review's 250 rows ([32] @ [32, 100] or [32, 400]) ran 1.1-1.25x slower on two threads
  // than on one (waking the second costs more than it saves)
  const int64_t by_work = std::max<int64_t>(1, R * K * N >> 22);
  const RowSplit split(R, threads > 0 ? threads : std::min(Threads(pool, 0), by_work));
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t v0 = c * split.rows_per_chunk;
    const int64_t v1 = std::min(R, v0 + split.rows_per_chunk);
    Aligned rows(ids ? kRows * K : 0, /*zeroed=*/false);
    const int64_t block = ids ? kRows : v1 - v0;  // gathered: 64 rows at a time; else all
    for (int64_t r0 = v0; r0 < v1; r0 += block) {
      const int64_t r1 = std::min(v1, r0 + block);
      const float* x = E + r0 * K;  // rows r0 .. r1 - 1: E's own, or gathered into `rows`
      if (ids) {
        GatherRows(E, ids, V, K, r0, r1, rows.data);
        x = rows.data;
      }
      float* o = out + r0 * N;
      StepRows(x, K, 0, r1 - r0, Panel{Wp, Np, K, Np}, [&](int64_t row0) {
        return [&, row0](int r, int64_t j, __m512 acc) {
          const __mmask16 mask = ColumnMask(j, N);
          if (bias) acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, bias + j));
          _mm512_mask_storeu_ps(o + (row0 + r) * N + j, mask, acc);
        };
      });
    }
  });
}

// E, W, b checked and W padded, for both handlers; `rows` = R (ids) or V (none).
ffi::Error ProjectionImpl(const char* name, ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& E,
                          const int32_t* ids, int64_t rows, ffi::Buffer<ffi::F32>& W,
                          ffi::Buffer<ffi::F32>& b, ffi::ResultBuffer<ffi::F32>& out,
                          int64_t threads) {
  const auto ed = E.dimensions(), wd = W.dimensions();
  const int64_t nb = static_cast<int64_t>(b.element_count());
  const bool ok = ed.size() == 2 && wd.size() == 2 && wd[0] == ed[1] &&
                  (nb == 0 || nb == wd[1]) &&
                  static_cast<int64_t>(out->element_count()) == rows * wd[1];
  if (!ok) {
    return ffi::Error::InvalidArgument(
        std::string(name) + ": expected E [V, K], W [K, N], b [N] or empty, out [" +
        (ids ? "R" : "V") + ", N]; got E " + Shape(ed) + ", W " + Shape(wd) + ", b " +
        Shape(b.dimensions()) + ", out " + Shape(out->dimensions()));
  }
  const int64_t V = ed[0], K = ed[1], N = wd[1], Np = RoundUp(N, kLanes);
  if (rows == 0 || N == 0) return ffi::Error::Success();
  Aligned Wp(K * Np);  // W [K, N] padded to [K, Np] (zeros beyond N)
  if (Wp.data == nullptr) return ffi::Error::Internal(std::string(name) + ": out of memory");
  for (int64_t k = 0; k < K; ++k)
    std::memcpy(Wp.data + k * Np, W.typed_data() + k * N, sizeof(float) * N);
  ProjectRows(pool, E.typed_data(), ids, V, rows, K, Wp.data, Np, nb ? b.typed_data() : nullptr,
              N, out->typed_data(), threads);
  return ffi::Error::Success();
}

ffi::Error TableProjectionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> E,
                               ffi::Buffer<ffi::F32> W, ffi::Buffer<ffi::F32> b,
                               ffi::ResultBuffer<ffi::F32> table, int64_t threads) {
  const int64_t V = E.dimensions().size() == 2 ? E.dimensions()[0] : 0;
  return ProjectionImpl("jaxrnn_table_projection", pool, E, nullptr, V, W, b, table, threads);
}

ffi::Error RowsProjectionImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> E,
                              ffi::Buffer<ffi::S32> ids, ffi::Buffer<ffi::F32> W,
                              ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> out,
                              int64_t threads) {
  const int64_t R = static_cast<int64_t>(ids.element_count());
  return ProjectionImpl("jaxrnn_rows_projection", pool, E, ids.typed_data(), R, W, b, out,
                        threads);
}

// The gradient of a projected table, table = E W + b ([V, K] @ [K, N] + [N]), from dTable
// [V, N], in one pass over dTable: dE = dTable W^T [V, K], dW = E^T dTable [K, N] and
// db = the column sums of dTable [N]. XLA ran them as two products and a reduction, each
// reading all of dTable (the seed LSTM's 8 MB: 3.5 ms median, 72 GFLOP/s, on 2 cores). The
// rows are split over the threads; each takes its rows in blocks of 64 (100 KB of dTable,
// in L2 for all three) and, per block, the dE rows (register blocks over W^T padded), its
// partial dW ([K, N]: L1/L2) and its partial db. The partials are added in chunk order.
void TableProjectionBackward(ffi::ThreadPool& pool, const float* dT, const float* E,
                             const float* WT, int64_t Kp, int64_t V, int64_t K, int64_t N,
                             float* dE, float* partial, float* db_partial, int64_t ldw,
                             const RowSplit& split) {
  constexpr int64_t kRows = 64;
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t v0 = c * split.rows_per_chunk;
    const int64_t v1 = std::min(V, v0 + split.rows_per_chunk);
    float* dWc = partial + c * K * ldw;
    float* dbc = db_partial + c * ldw;
    for (int64_t r0 = v0; r0 < v1; r0 += kRows) {
      const int64_t r1 = std::min(v1, r0 + kRows);
      StepRows(dT, N, r0, r1, Panel{WT, Kp, N, Kp}, [&](int64_t b) {
        return [&, b](int r, int64_t j, __m512 acc) {
          _mm512_mask_storeu_ps(dE + (b + r) * K + j, ColumnMask(j, K), acc);
        };
      });
      AccumulateOuter(E + r0 * K, K, K, dT + r0 * N, N, N, r1 - r0, dWc, ldw);
      AddRowSum(dT + r0 * N, r1 - r0, N, N, dbc);
    }
  });
}

ffi::Error TableProjectionBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dT,
                                       ffi::Buffer<ffi::F32> E, ffi::Buffer<ffi::F32> W,
                                       ffi::ResultBuffer<ffi::F32> dE,
                                       ffi::ResultBuffer<ffi::F32> dW,
                                       ffi::ResultBuffer<ffi::F32> db, int64_t threads) {
  const auto td = dT.dimensions(), ed = E.dimensions(), wd = W.dimensions();
  const bool ok = td.size() == 2 && ed.size() == 2 && wd.size() == 2 && ed[0] == td[0] &&
                  wd[0] == ed[1] && wd[1] == td[1] &&
                  dE->element_count() == E.element_count() &&
                  dW->element_count() == W.element_count() &&
                  static_cast<int64_t>(db->element_count()) == (td.size() == 2 ? td[1] : -1);
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_table_projection_backward: expected dTable [V, N], E [V, K], W [K, N]; got "
        "dTable " + Shape(td) + ", E " + Shape(ed) + ", W " + Shape(wd));
  }
  const int64_t V = td[0], N = td[1], K = ed[1];
  const int64_t ldw = RoundUp(N, kLanes), Kp = RoundUp(K, kLanes);
  if (N == 0 || K == 0 || V == 0) {
    std::memset(dE->typed_data(), 0, sizeof(float) * V * K);
    std::memset(dW->typed_data(), 0, sizeof(float) * K * N);
    std::memset(db->typed_data(), 0, sizeof(float) * N);
    return ffi::Error::Success();
  }
  const RowSplit split(V, Threads(pool, threads));
  Aligned WT(N * Kp);  // W^T [N, K] padded to [N, Kp] (zeros beyond K)
  Aligned partial(split.chunks * K * ldw), db_partial(split.chunks * ldw);  // per chunk
  if (WT.data == nullptr || partial.data == nullptr || db_partial.data == nullptr) {
    return ffi::Error::Internal("jaxrnn_table_projection_backward: out of memory");
  }
  TransposeInto(W.typed_data(), K, N, Kp, WT.data);
  TableProjectionBackward(pool, dT.typed_data(), E.typed_data(), WT.data, Kp, V, K, N,
                          dE->typed_data(), partial.data, db_partial.data, ldw, split);
  ReducePartials(partial.data, split.chunks, K, N, ldw, true, dW->typed_data());
  ReducePartials(db_partial.data, split.chunks, 1, N, ldw, true, db->typed_data());
  return ffi::Error::Success();
}

// The gradient of projected rows, out = E[ids] W + b ([R] ids into E [V, K], W [K, N]),
// from dOut [R, N]: dE = the rows dOut W^T [R, K] added into the rows ids name (zeros
// elsewhere; an id outside [0, V) adds nothing, as XLA's scatter drops it), dW = E[ids]^T dOut
// (an id outside [0, V) gathers a NaN row, as jnp.take does: dW is then NaN, as XLA's) and
// db = the column sums of dOut. XLA ran a gather, two products, a reduction, a zero fill of
// dE and a scatter: the seed simple cell's B = 1 training step took 1.00 ms with those, 0.86
// with this call (Zen 4, benchmarks/rows_ab.py --mode train). Two passes: the rows in blocks
// of 64, split over the threads (their dE rows into `dX` [R, K], partial dW and db per
// chunk), then dE by ranges of ids (each thread zeroes its range and adds the rows whose ids
// fall in it, in row order: the same sums whatever the number of threads).
void RowsProjectionBackward(ffi::ThreadPool& pool, const float* dO, const float* E,
                            const int32_t* ids, const float* WT, int64_t Kp, int64_t V,
                            int64_t R, int64_t K, int64_t N, float* dE, float* dX,
                            float* partial, float* db_partial, int64_t ldw,
                            const RowSplit& split) {
  constexpr int64_t kRows = 64;
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t v0 = c * split.rows_per_chunk;
    const int64_t v1 = std::min(R, v0 + split.rows_per_chunk);
    Aligned rows(kRows * K, /*zeroed=*/false);
    for (int64_t r0 = v0; r0 < v1; r0 += kRows) {
      const int64_t r1 = std::min(v1, r0 + kRows);
      StepRows(dO, N, r0, r1, Panel{WT, Kp, N, Kp}, [&](int64_t b) {
        return [&, b](int r, int64_t j, __m512 acc) {
          _mm512_mask_storeu_ps(dX + (b + r) * K + j, ColumnMask(j, K), acc);
        };
      });
      GatherRows(E, ids, V, K, r0, r1, rows.data);
      AccumulateOuter(rows.data, K, K, dO + r0 * N, N, N, r1 - r0, partial + c * K * ldw, ldw);
      AddRowSum(dO + r0 * N, r1 - r0, N, N, db_partial + c * ldw);
    }
  });
  const RowSplit by_id(V, split.chunks);
  ParallelFor(pool, by_id.chunks, [&](int64_t c) {
    const int64_t i0 = c * by_id.rows_per_chunk;
    const int64_t i1 = std::min(V, i0 + by_id.rows_per_chunk);
    std::memset(dE + i0 * K, 0, sizeof(float) * (i1 - i0) * K);
    for (int64_t r = 0; r < R; ++r) {
      const int64_t i = ids[r];
      if (i < i0 || i >= i1) continue;
      float* row = dE + i * K;
      const float* d = dX + r * K;
      for (int64_t j = 0; j < K; j += kLanes) {
        const __mmask16 mask = ColumnMask(j, K);
        _mm512_mask_storeu_ps(row + j, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, row + j),
                                                           _mm512_maskz_loadu_ps(mask, d + j)));
      }
    }
  });
}

ffi::Error RowsProjectionBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dO,
                                      ffi::Buffer<ffi::F32> E, ffi::Buffer<ffi::S32> ids,
                                      ffi::Buffer<ffi::F32> W, ffi::ResultBuffer<ffi::F32> dE,
                                      ffi::ResultBuffer<ffi::F32> dW,
                                      ffi::ResultBuffer<ffi::F32> db, int64_t threads) {
  const auto od = dO.dimensions(), ed = E.dimensions(), wd = W.dimensions();
  const int64_t R = static_cast<int64_t>(ids.element_count());
  const bool ok = ed.size() == 2 && wd.size() == 2 && wd[0] == ed[1] &&
                  static_cast<int64_t>(dO.element_count()) == R * wd[1] &&
                  dE->element_count() == E.element_count() &&
                  dW->element_count() == W.element_count() &&
                  static_cast<int64_t>(db->element_count()) == wd[1];
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_rows_projection_backward: expected dOut [R, N] for ids [R], E [V, K], W [K, N]; "
        "got dOut " + Shape(od) + ", ids " + Shape(ids.dimensions()) + ", E " + Shape(ed) +
        ", W " + Shape(wd));
  }
  const int64_t V = ed[0], K = ed[1], N = wd[1];
  const int64_t ldw = RoundUp(N, kLanes), Kp = RoundUp(K, kLanes);
  if (N == 0 || K == 0 || R == 0) {
    std::memset(dE->typed_data(), 0, sizeof(float) * V * K);
    std::memset(dW->typed_data(), 0, sizeof(float) * K * N);
    std::memset(db->typed_data(), 0, sizeof(float) * N);
    return ffi::Error::Success();
  }
  // threads as ProjectRows (its forward): one per 4M multiply-adds at most by default
  const int64_t by_work = std::max<int64_t>(1, R * K * N >> 22);
  const RowSplit split(R, threads > 0 ? threads : std::min(Threads(pool, 0), by_work));
  Aligned WT(N * Kp), dX(R * K, /*zeroed=*/false);  // WT: W^T [N, K] padded to [N, Kp]
  Aligned partial(split.chunks * K * ldw), db_partial(split.chunks * ldw);  // per chunk
  if (WT.data == nullptr || dX.data == nullptr || partial.data == nullptr ||
      db_partial.data == nullptr) {
    return ffi::Error::Internal("jaxrnn_rows_projection_backward: out of memory");
  }
  TransposeInto(W.typed_data(), K, N, Kp, WT.data);
  RowsProjectionBackward(pool, dO.typed_data(), E.typed_data(), ids.typed_data(), WT.data, Kp,
                         V, R, K, N, dE->typed_data(), dX.data, partial.data, db_partial.data,
                         ldw, split);
  ReducePartials(partial.data, split.chunks, K, N, ldw, true, dW->typed_data());
  ReducePartials(db_partial.data, split.chunks, 1, N, ldw, true, db->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnSimpleForward, SimpleForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // U [T, B, H] or table [V, H]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // idx [T, B] (table only)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W_h [H, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // S [T + 1, B, H]
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnSimpleBackward, SimpleBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // S [T + 1, B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W_h [H, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g [T, B, H] or [B, H]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // idx [T, B] (table only)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // D [T + 1, B, H] or [T, B, H] (no zero row)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW_h = S^T D [H, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dTable [V, H] (V = 0: none)
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("fuse_dw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLstmForward, LstmForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // U [T, B, 4H] or table [V, 4H]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // idx [T, B] (table only)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W_h [H, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // S_h [T + 1, B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // S_c [T + 1, B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // G (gates) [T, B, 4H]
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnLstmBackward, LstmBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // S_h [T + 1, B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // S_c [T + 1, B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // G [T, B, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W_h [H, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g_hs [T, B, H] or [0]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g_cs [T, B, H] or [0]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g_hT [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g_cT [B, H]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // idx [T, B] (table only)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // D = dL/dz [T + 1, B, 4H], [T, B, 4H] or [1, B, 4H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW_h [H, 4H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dL/dc_0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dTable [V, 4H] (V = 0: none)
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("fuse_dw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnGruForward, GruForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // U [T, B, 3H] or table [V, 3H]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // idx [T, B] (table only)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W_h [H, 3H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b_h [3H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // h0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // S [T + 1, B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // Sv = [z|r|n|u_n] [T, B, 4H]
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnGruBackward, GruBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // S [T + 1, B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // Sv [T, B, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W_h [H, 3H]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g [T, B, H] or [B, H]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // idx [T, B] (table only)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // D = dL/du [T + 1, B, 3H] or [1, B, 3H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // A = dL/da [T + 1, B, 3H], [T, B, 3H] or [1, B, 3H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // z_0 dL/dh_0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW_h [H, 3H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db_h [3H] = D summed
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dTable [V, 3H] (V = 0: none)
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("fuse_dw"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnTableProjectionBackward, TableProjectionBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dTable [V, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // E [V, K]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W [K, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dE [V, K]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW [K, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db [N]
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnRowsProjection, RowsProjectionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // E [V, K]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // ids [R] (any shape)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W [K, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [N] or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out [R, N]
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnTableProjection, TableProjectionImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // E [V, K]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W [K, N]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b [N] or empty
                                  .Ret<ffi::Buffer<ffi::F32>>()  // table [V, N]
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxrnnRowsProjectionBackward, RowsProjectionBackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dOut [R, N] (ids' shape, N)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // E [V, K]
                                  .Arg<ffi::Buffer<ffi::S32>>()  // ids [R] (any shape)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W [K, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dE [V, K]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW [K, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db [N]
                                  .Attr<int64_t>("threads"));
