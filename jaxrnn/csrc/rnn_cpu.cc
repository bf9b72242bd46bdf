// Hand-written CPU kernels for the simple-cell recurrence (XLA FFI custom calls).
//
//   forward   S[0] = h0,   S[t + 1] = f(u_t + S[t] @ W)              S: [T + 1, B, H]
//   backward  D[T] = 0,    D[t] = (g_t + D[t + 1] @ W^T) * f'(S[t + 1])  D: [T + 1, B, H]
//
// with u_t = U[t] ([T, B, H]) or u_t = table[idx[t]] (table [V, H], idx [T, B] int32).
// jaxrnn/native.py builds this file, registers the two handlers and calls them from
// jaxrnn/fast.py; dW_h = S^T D, dh0 = D[0] W^T and the input cotangents stay in XLA.
//
// Why by hand: in XLA:CPU every step of the loop is a few small thunks (a [B, H] @ [H, H]
// dot, a fusion, a dynamic-update-slice) run one after another on one core. Here
//  * batch rows never interact in the recurrence, so rows are split across the threads of
//    XLA's intra-op pool, each thread running all T steps on its rows (no sync per step);
//  * each step is one register-blocked AVX-512 loop: a block of 4 rows x 64 columns of
//    accumulators stays in registers over the whole k loop, and the activation (or the
//    derivative) is applied to the registers before the single store.
// Results do not depend on the number of threads (each row is computed by one thread, in
// the same order). Built only where the CPU has AVX-512 (native.py checks first).

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Activation : int64_t { kTanh = 0, kSigmoid = 1, kRelu = 2, kIdentity = 3 };

// Register blocks are arrays of vectors indexed by constant-bound loops; unrolled fully and
// early, GCC keeps them in registers (without this it stored every accumulator to the stack
// in every iteration of the k loop, ~2-4x slower).
#define JAXRNN_UNROLL _Pragma("GCC unroll 32")

constexpr int64_t kLanes = 16;  // floats per AVX-512 vector
#ifndef JAXRNN_BLOCK_ROWS
#define JAXRNN_BLOCK_ROWS 4
#define JAXRNN_BLOCK_VECS 4
#endif
constexpr int kBlockRows = JAXRNN_BLOCK_ROWS;  // rows of accumulators per register block
constexpr int kBlockVecs = JAXRNN_BLOCK_VECS;  // vectors (x 16 columns) per register block
#ifndef JAXRNN_OUTER_ROWS
#define JAXRNN_OUTER_ROWS 8
#define JAXRNN_OUTER_VECS 2
#endif
constexpr int kOuterRows = JAXRNN_OUTER_ROWS;  // dW rows per register block
constexpr int kOuterVecs = JAXRNN_OUTER_VECS;  // dW vectors per register block

int64_t RoundUp(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

__m512 Set(float v) { return _mm512_set1_ps(v); }

// expm1(x) for x <= 0: x = n ln2 + r, |r| <= ln2 / 2 (ln2 split in two for exactness);
// expm1(r) by its Taylor series to r^7 (truncation < 2e-8 relative);
// expm1(x) = 2^n expm1(r) + (2^n - 1), exact in the last term, so small |x| keep full
// relative precision (n = 0 gives expm1(r) itself).
__m512 Expm1NonPositive(__m512 x) {
  const __m512 one = Set(1.0f);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, Set(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, Set(0.693359375f), x);  // x - n * ln2_hi
  r = _mm512_fnmadd_ps(n, Set(-2.12194440e-4f), r);     // - n * ln2_lo
  __m512 p = Set(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, Set(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, Set(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, Set(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, Set(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, Set(0.5f));
  p = _mm512_fmadd_ps(p, r, one);
  p = _mm512_mul_ps(p, r);  // expm1(r)
  const __m512 two_n = _mm512_scalef_ps(one, n);
  return _mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_sub_ps(two_n, one));
}

// tanh(x) = sign(x) * -e / (2 + e), e = expm1(-2|x|); |x| clamped at 9 (tanh = 1 in float32
// beyond); NaN stays NaN (min keeps its second operand when one is NaN).
__m512 Tanh(__m512 x) {
  const __m512 ax = _mm512_min_ps(Set(9.0f), _mm512_abs_ps(x));
  const __m512 e = Expm1NonPositive(_mm512_mul_ps(ax, Set(-2.0f)));
  const __m512 y = _mm512_div_ps(_mm512_sub_ps(_mm512_setzero_ps(), e), _mm512_add_ps(e, Set(2.0f)));
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
}

template <int64_t act>
__m512 Apply(__m512 a) {
  if constexpr (act == kTanh) return Tanh(a);
  if constexpr (act == kSigmoid) {  // sigmoid(a) = (1 + tanh(a / 2)) / 2
    return _mm512_fmadd_ps(Tanh(_mm512_mul_ps(a, Set(0.5f))), Set(0.5f), Set(0.5f));
  }
  if constexpr (act == kRelu) return _mm512_max_ps(a, _mm512_setzero_ps());
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

// One register block: acc[r][v] = X[r, :] @ M[:, j0 + 16 v : j0 + 16 v + 16] for R rows of X
// (row stride H, K = H columns) and NV column vectors of the padded M ([H, Hp], zero
// columns beyond H so full loads are safe); then epi(r, j, acc[r][v]) per vector.
template <int R, int NV, class Epilogue>
inline void Block(const float* x, int64_t H, const float* M, int64_t Hp, int64_t j0,
                  const Epilogue& epi) {
  __m512 acc[R][NV];
  JAXRNN_UNROLL for (int r = 0; r < R; ++r)
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_setzero_ps();
  const float* m = M + j0;
  for (int64_t k = 0; k < H; ++k, m += Hp) {
    __m512 w[NV];
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) w[v] = _mm512_load_ps(m + kLanes * v);
    JAXRNN_UNROLL for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(x[r * H + k]);
      JAXRNN_UNROLL for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, w[v], acc[r][v]);
    }
  }
  JAXRNN_UNROLL for (int r = 0; r < R; ++r)
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) epi(r, j0 + kLanes * v, acc[r][v]);
}

// Block<R, NV> for nv <= NV vectors (the last column tile may be narrower).
template <int R, int NV, class Epilogue>
inline void BlockUpTo(int64_t nv, const float* x, int64_t H, const float* M, int64_t Hp,
                      int64_t j0, const Epilogue& epi) {
  if constexpr (NV > 1) {
    if (nv < NV) return BlockUpTo<R, NV - 1>(nv, x, H, M, Hp, j0, epi);
  }
  Block<R, NV>(x, H, M, Hp, j0, epi);
}

template <int R, class Epilogue>
inline void RowBlock(const float* x, int64_t H, const float* M, int64_t Hp,
                     const Epilogue& epi) {
  for (int64_t j0 = 0; j0 < Hp; j0 += kLanes * kBlockVecs) {
    BlockUpTo<R, kBlockVecs>((Hp - j0) / kLanes, x, H, M, Hp, j0, epi);
  }
}

// RowBlock<R> for r <= R rows (the last row block may be shorter).
template <int R, class Epilogue>
inline void RowBlockUpTo(int64_t r, const float* x, int64_t H, const float* M, int64_t Hp,
                         const Epilogue& epi) {
  if constexpr (R > 1) {
    if (r < R) return RowBlockUpTo<R - 1>(r, x, H, M, Hp, epi);
  }
  RowBlock<R>(x, H, M, Hp, epi);
}

// out rows [b0, b1) of one step: epi(b, j, (X @ M)[b, j:j+16]) with X rows at x (stride H).
template <class MakeEpilogue>
void StepRows(const float* x, int64_t b0, int64_t b1, int64_t H, const float* M, int64_t Hp,
              const MakeEpilogue& make_epi) {
  for (int64_t b = b0; b < b1; b += kBlockRows) {
    RowBlockUpTo<kBlockRows>(b1 - b, x + b * H, H, M, Hp, make_epi(b));
  }
}

// Weight-gradient block: dW[k0 + kk, j0 + 16 v + :16] += sum_b X[b, k0 + kk] * Y[b, j0 + 16 v + :16]
// over `rows` rows of X and Y (both row stride H); dW is [H, Hp], 64-byte aligned. KR x NV
// accumulators stay in registers over the rows; dW is read and written once per call.
template <int KR, int NV>
inline void OuterBlock(const float* X, const float* Y, int64_t rows, int64_t H, int64_t k0,
                       int64_t j0, float* dW, int64_t Hp) {
  __m512 acc[KR][NV];
  __mmask16 mask[NV];
  JAXRNN_UNROLL for (int v = 0; v < NV; ++v) mask[v] = ColumnMask(j0 + kLanes * v, H);
  JAXRNN_UNROLL for (int kk = 0; kk < KR; ++kk)
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) acc[kk][v] = _mm512_setzero_ps();
  for (int64_t b = 0; b < rows; ++b) {
    const float* y = Y + b * H + j0;
    const float* x = X + b * H + k0;
    __m512 yv[NV];
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) yv[v] = _mm512_maskz_loadu_ps(mask[v], y + kLanes * v);
    JAXRNN_UNROLL for (int kk = 0; kk < KR; ++kk) {
      const __m512 a = _mm512_set1_ps(x[kk]);
      JAXRNN_UNROLL for (int v = 0; v < NV; ++v) acc[kk][v] = _mm512_fmadd_ps(a, yv[v], acc[kk][v]);
    }
  }
  JAXRNN_UNROLL for (int kk = 0; kk < KR; ++kk) {
    float* w = dW + (k0 + kk) * Hp + j0;
    JAXRNN_UNROLL for (int v = 0; v < NV; ++v) {
      _mm512_store_ps(w + kLanes * v, _mm512_add_ps(_mm512_load_ps(w + kLanes * v), acc[kk][v]));
    }
  }
}

template <int KR, int NV>
inline void OuterBlockUpTo(int64_t kr, int64_t nv, const float* X, const float* Y, int64_t rows,
                           int64_t H, int64_t k0, int64_t j0, float* dW, int64_t Hp) {
  if constexpr (KR > 1) {
    if (kr < KR) return OuterBlockUpTo<KR - 1, NV>(kr, nv, X, Y, rows, H, k0, j0, dW, Hp);
  }
  if constexpr (NV > 1) {
    if (nv < NV) return OuterBlockUpTo<KR, NV - 1>(kr, nv, X, Y, rows, H, k0, j0, dW, Hp);
  }
  OuterBlock<KR, NV>(X, Y, rows, H, k0, j0, dW, Hp);
}

// dW += X^T Y for X, Y: [rows, H] (row stride H); dW: [H, Hp].
void AccumulateOuter(const float* X, const float* Y, int64_t rows, int64_t H, float* dW,
                     int64_t Hp) {
  for (int64_t j0 = 0; j0 < Hp; j0 += kLanes * kOuterVecs) {
    const int64_t nv = std::min<int64_t>(kOuterVecs, (Hp - j0) / kLanes);
    for (int64_t k0 = 0; k0 < H; k0 += kOuterRows) {
      OuterBlockUpTo<kOuterRows, kOuterVecs>(H - k0, nv, X, Y, rows, H, k0, j0, dW, Hp);
    }
  }
}

// A zeroed, 64-byte aligned float buffer.
struct Aligned {
  float* data = nullptr;
  explicit Aligned(int64_t n) {
    const size_t bytes = static_cast<size_t>(RoundUp(std::max<int64_t>(n, 1) * sizeof(float), 64));
    data = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (data != nullptr) std::memset(data, 0, bytes);
  }
  ~Aligned() { std::free(data); }
  Aligned(const Aligned&) = delete;
  Aligned& operator=(const Aligned&) = delete;
};

// W ([H, H] row-major) or its transpose, copied into a 64-byte aligned [H, Hp] buffer with
// zero columns H..Hp-1.
struct Padded {
  Aligned buf;
  float* data;
  int64_t Hp;
  Padded(const float* W, int64_t H, bool transpose)
      : buf(H * RoundUp(H, kLanes)), data(buf.data), Hp(RoundUp(H, kLanes)) {
    if (data == nullptr) return;
    for (int64_t k = 0; k < H; ++k)
      for (int64_t j = 0; j < H; ++j) data[k * Hp + j] = transpose ? W[j * H + k] : W[k * H + j];
  }
};

// Denormals flushed to zero (MXCSR FTZ + DAZ) while alive, as XLA:CPU runs its own code.
// Gradients that vanish through time become denormal after some hundred steps, and each
// denormal operand costs a microcode assist (the backward pass ran ~3x slower with them).
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

// Rows [0, B) split into at most `threads` chunks of whole register blocks (>= 8 rows each).
struct RowSplit {
  int64_t chunks, rows_per_chunk;
  RowSplit(int64_t B, int64_t threads) {
    const int64_t by_rows = std::max<int64_t>(1, B / 8);
    chunks = std::max<int64_t>(1, std::min(threads, by_rows));
    rows_per_chunk = RoundUp((B + chunks - 1) / chunks, kBlockRows);
    chunks = (B + rows_per_chunk - 1) / rows_per_chunk;
  }
};

int64_t Threads(ffi::ThreadPool& pool, int64_t requested) {
  if (requested > 0) return requested;
  return std::max<int64_t>(1, pool.num_threads());
}

template <int64_t act>
void Forward(ffi::ThreadPool& pool, const float* U, const int32_t* idx, int64_t V,
             const float* Wp, int64_t Hp, const float* h0, float* S, int64_t T, int64_t B,
             int64_t H, int64_t threads) {
  std::memcpy(S, h0, sizeof(float) * B * H);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const RowSplit split(B, Threads(pool, threads));
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t b0 = c * split.rows_per_chunk;
    const int64_t b1 = std::min(B, b0 + split.rows_per_chunk);
    // a table row outside [0, V) reads as NaN (as jnp.take's default "fill" mode)
    alignas(64) float nan_row[kLanes * 4];
    std::fill(nan_row, nan_row + kLanes * 4, nan);
    for (int64_t t = 0; t < T; ++t) {
      const float* x = S + t * B * H;
      float* out = S + (t + 1) * B * H;
      StepRows(x, b0, b1, H, Wp, Hp, [&](int64_t b) {
        return [&, b](int r, int64_t j, __m512 acc) {
          const int64_t row = b + r;
          const float* u;
          if (idx == nullptr) {
            u = U + (t * B + row) * H + j;
          } else {
            const int32_t i = idx[t * B + row];
            u = (i >= 0 && i < V) ? U + static_cast<int64_t>(i) * H + j : nan_row;
          }
          const __mmask16 mask = ColumnMask(j, H);
          const __m512 a = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, u));
          _mm512_mask_storeu_ps(out + row * H + j, mask, Apply<act>(a));
        };
      });
    }
  });
}

template <int64_t act>
void Backward(ffi::ThreadPool& pool, const float* S, const float* WTp, int64_t Hp,
              const float* g, bool last_only, float* D, float* dW, const RowSplit& split,
              float* partial, int64_t T, int64_t B, int64_t H) {
  std::memset(D + T * B * H, 0, sizeof(float) * B * H);
  ParallelFor(pool, split.chunks, [&](int64_t c) {
    const int64_t b0 = c * split.rows_per_chunk;
    const int64_t b1 = std::min(B, b0 + split.rows_per_chunk);
    float* dWc = partial + c * H * Hp;
    for (int64_t t = T - 1; t >= 0; --t) {
      const float* x = D + (t + 1) * B * H;
      float* out = D + t * B * H;
      const float* h = S + (t + 1) * B * H;
      const float* gt = last_only ? (t == T - 1 ? g : nullptr) : g + t * B * H;
      StepRows(x, b0, b1, H, WTp, Hp, [&](int64_t b) {
        return [&, b](int r, int64_t j, __m512 acc) {
          const int64_t o = (b + r) * H + j;
          const __mmask16 mask = ColumnMask(j, H);
          const __m512 a = gt ? _mm512_add_ps(acc, _mm512_maskz_loadu_ps(mask, gt + o)) : acc;
          const __m512 d = DerivFromOutput<act>(_mm512_maskz_loadu_ps(mask, h + o));
          _mm512_mask_storeu_ps(out + o, mask, _mm512_mul_ps(a, d));
        };
      });
      // dW += h_t^T da_t for this chunk's rows, while both are in cache (S[t] = h_{t-1}
      // of step t in the docs' numbering: the state the step read)
      AccumulateOuter(S + (t * B + b0) * H, out + b0 * H, b1 - b0, H, dWc, Hp);
    }
  });
  for (int64_t k = 0; k < H; ++k) {
    for (int64_t j = 0; j < H; ++j) {
      float sum = 0.0f;
      for (int64_t c = 0; c < split.chunks; ++c) sum += partial[(c * H + k) * Hp + j];
      dW[k * H + j] = sum;
    }
  }
}

// dTable[v] = sum of D[t][b] over (t, b) with idx[t][b] = v, for a table [V, H]. The rows
// of dTable are split among the threads by owner (no two threads write one row, no atomics)
// and each thread adds its rows' updates in (t, b) order: deterministic for any thread
// count. Ids outside [0, V) add nothing (as XLA's scatter drops them).
void ScatterRows(ffi::ThreadPool& pool, const float* D, const int32_t* idx, int64_t T,
                 int64_t B, int64_t H, float* dTable, int64_t V, int64_t threads) {
  const int64_t chunks = std::max<int64_t>(1, std::min(threads, V / 64));
  const int64_t per = (V + chunks - 1) / chunks;
  ParallelFor(pool, chunks, [&](int64_t c) {
    const int64_t v0 = c * per, v1 = std::min(V, v0 + per);
    std::memset(dTable + v0 * H, 0, sizeof(float) * (v1 - v0) * H);
    for (int64_t n = 0; n < T * B; ++n) {
      const int64_t v = idx[n];
      if (v < v0 || v >= v1) continue;
      float* row = dTable + v * H;
      const float* d = D + n * H;
      for (int64_t j = 0; j < H; j += kLanes) {
        const __mmask16 mask = ColumnMask(j, H);
        _mm512_mask_storeu_ps(row + j, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, row + j),
                                                           _mm512_maskz_loadu_ps(mask, d + j)));
      }
    }
  });
}

std::string Shape(ffi::Span<const int64_t> dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

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
                                  table ? ud[0] : 0, Wp.data, Wp.Hp, h0.typed_data(),
                                  S->typed_data(), T, B, H, threads);
  });
}

ffi::Error SimpleBackwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> S,
                              ffi::Buffer<ffi::F32> W, ffi::Buffer<ffi::F32> g,
                              ffi::Buffer<ffi::S32> idx, ffi::ResultBuffer<ffi::F32> D,
                              ffi::ResultBuffer<ffi::F32> dW, ffi::ResultBuffer<ffi::F32> dTable,
                              int64_t activation, int64_t threads) {
  const auto sd = S.dimensions();
  const auto gd = g.dimensions();
  const auto td = dTable->dimensions();
  const bool shapes_ok = sd.size() == 3 && D->dimensions().size() == 3 &&
                         D->element_count() == S.element_count();
  const int64_t T = shapes_ok ? sd[0] - 1 : 0, B = shapes_ok ? sd[1] : 0,
                H = shapes_ok ? sd[2] : 0;
  const int64_t V = td.size() == 2 ? td[0] : -1;
  const bool last_only = gd.size() == 2;
  const bool ok = shapes_ok && T >= 1 && W.dimensions().size() == 2 &&
                  W.dimensions()[0] == H && W.dimensions()[1] == H &&
                  static_cast<int64_t>(dW->element_count()) == H * H &&
                  (last_only ? (gd[0] == B && gd[1] == H)
                             : (gd.size() == 3 && gd[0] == T && gd[1] == B && gd[2] == H)) &&
                  V >= 0 && td[1] == H &&
                  (V == 0 || static_cast<int64_t>(idx.element_count()) == T * B);
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "jaxrnn_simple_backward: expected S and D [T + 1, B, H] (T >= 1), W [H, H], g [T, B, H] "
        "or [B, H], dTable [V, H] with idx [T, B] (V = 0: no table); got S " + Shape(sd) +
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
  Aligned partial(split.chunks * H * WTp.Hp);  // one [H, Hp] partial dW per chunk
  if (WTp.data == nullptr || partial.data == nullptr) {
    return ffi::Error::Internal("jaxrnn_simple_backward: out of memory");
  }
  const ffi::Error status = Dispatch(activation, [&](auto act) {
    Backward<decltype(act)::value>(pool, S.typed_data(), WTp.data, WTp.Hp, g.typed_data(),
                                   last_only, D->typed_data(), dW->typed_data(), split,
                                   partial.data, T, B, H);
  });
  if (status.failure() || V == 0) return status;
  ScatterRows(pool, D->typed_data(), idx.typed_data(), T, B, H, dTable->typed_data(), V,
              threads_used);
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
                                  .Ret<ffi::Buffer<ffi::F32>>()  // D [T + 1, B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dW_h = S^T D [H, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dTable [V, H] (V = 0: none)
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("threads"));
