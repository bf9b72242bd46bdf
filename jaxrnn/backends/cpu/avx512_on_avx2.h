// The AVX-512 types and intrinsics that rnn_cpu.cc uses, on AVX2 + FMA (rnn_cpu.cc includes
// this where __AVX512F__ is not defined). A 16-float vector is two __m256 (lanes 0-7, 8-15),
// __mmask16 / __mmask8 are uint16 / uint8, and every operation gives the results the AVX-512
// instruction gives (bit for bit; scalef's exact domain is at ScalefHalf). The names below are
// macros for functions in namespace avx512_on_avx2, so the kernels compile unchanged; include
// this after every other header (a header parsed later would see the macros).
//
// Masked memory operations never touch masked-off lanes: partial masks use vmaskmovps
// (no fault, no write there), full halves plain loads / stores, empty halves nothing. Masked
// stores are not emulated as load-blend-store: a masked-off lane may be another thread's row.
// Immediate operands are template arguments (function-like macros), as the instructions need
// constants.
#ifndef JAXRNN_AVX512_ON_AVX2_H_
#define JAXRNN_AVX512_ON_AVX2_H_

#if defined(__AVX512F__)
#error "avx512_on_avx2.h is for CPUs without AVX-512; use the real intrinsics"
#endif
#if !defined(__AVX2__) || !defined(__FMA__)
#error "avx512_on_avx2.h needs AVX2 and FMA (-mavx2 -mfma, or -march=native on such a CPU)"
#endif

#include <immintrin.h>

#include <cstdint>

namespace avx512_on_avx2 {

#define JAXRNN_SHIM inline __attribute__((always_inline))

struct m512 {
  __m256 lo, hi;
};
struct m512i {
  __m256i lo, hi;
};
using mmask16 = uint16_t;
using mmask8 = uint8_t;

// Lane i all ones where bit i of `bits` is set (8 lanes / 4 lanes).
JAXRNN_SHIM __m256i Lanes8(unsigned bits) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), bit), bit);
}
JAXRNN_SHIM __m128i Lanes4(unsigned bits) {
  const __m128i bit = _mm_setr_epi32(1, 2, 4, 8);
  return _mm_cmpeq_epi32(_mm_and_si128(_mm_set1_epi32(static_cast<int>(bits)), bit), bit);
}

// ------------------------------------------------------------------ arithmetic, per half

JAXRNN_SHIM m512 _mm512_setzero_ps() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
JAXRNN_SHIM m512 _mm512_set1_ps(float v) { return {_mm256_set1_ps(v), _mm256_set1_ps(v)}; }
JAXRNN_SHIM m512i _mm512_set1_epi32(int v) { return {_mm256_set1_epi32(v), _mm256_set1_epi32(v)}; }

#define JAXRNN_SHIM_BINARY(name, op)                                                   \
  JAXRNN_SHIM m512 name(m512 a, m512 b) { return {op(a.lo, b.lo), op(a.hi, b.hi)}; }
JAXRNN_SHIM_BINARY(_mm512_add_ps, _mm256_add_ps)
JAXRNN_SHIM_BINARY(_mm512_sub_ps, _mm256_sub_ps)
JAXRNN_SHIM_BINARY(_mm512_mul_ps, _mm256_mul_ps)
JAXRNN_SHIM_BINARY(_mm512_div_ps, _mm256_div_ps)
// vminps / vmaxps: the second operand where either is NaN or both are zeros, as EVEX's
JAXRNN_SHIM_BINARY(_mm512_min_ps, _mm256_min_ps)
JAXRNN_SHIM_BINARY(_mm512_max_ps, _mm256_max_ps)
#undef JAXRNN_SHIM_BINARY

// fused: one rounding, as vfmadd231ps / vfnmadd231ps zmm
JAXRNN_SHIM m512 _mm512_fmadd_ps(m512 a, m512 b, m512 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
JAXRNN_SHIM m512 _mm512_fnmadd_ps(m512 a, m512 b, m512 c) {  // -(a b) + c
  return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
}

// the sign bit cleared (NaNs keep their payload), as the AVX-512 intrinsic's vpandd
JAXRNN_SHIM m512 _mm512_abs_ps(m512 a) {
  const __m256 m = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  return {_mm256_and_ps(a.lo, m), _mm256_and_ps(a.hi, m)};
}

// vrndscaleps with scale 0 (imm8[7:4] = 0) is vroundps with the same imm8[3:0]: rounding
// control (or MXCSR's), precision exception suppressed; NaN quieted, ties to even.
template <int imm>
JAXRNN_SHIM m512 RoundScale(m512 a) {
  static_assert((imm & 0xF0) == 0, "_mm512_roundscale_ps: only scale 0 (imm8[7:4] = 0) is provided");
  return {_mm256_round_ps(a.lo, imm & 0x0F), _mm256_round_ps(a.hi, imm & 0x0F)};
}

// scalef(a, b) = a * 2^floor(b), one rounding (overflow to inf, underflow to a denormal or to
// 0 under FTZ / DAZ, as any multiply), NaNs kept: with n = floor(b) clamped to [-252, 254],
// t = a * 2^floor(n / 2), then t * 2^ceil(n / 2). Bitwise equal to vscalefps for every NaN
// (QNaN(a), else QNaN(b)) and for finite b with -252 <= floor(b) <= 254 wherever t is exact
// and kept: |t| >= 2^-126, a = 0 or inf; with FTZ off and DAZ off also t a denormal; with FTZ
// on also a result that underflows anyway. vroundps honours DAZ for b, as scalef does. The
// kernels feed n in [-127, 150] and |a| >= 2^-40 (|t| >= 2^-104): always in that domain.
// May differ elsewhere: b = +inf with a = 0 (scalef: NaN; here 0), b = -inf with a = inf
// (NaN; inf), b = -inf or floor(b) < -252 with |a| >= 2^102 (a * 2^-252 here), a denormal a
// with floor(b) > 254 (DAZ off: inf there, finite here), and a denormal t otherwise (FTZ off:
// rounded twice; DAZ on: read as 0).
JAXRNN_SHIM __m256 ScalefHalf(__m256 a, __m256 b) {
  const __m256 f = _mm256_round_ps(b, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m256 c = _mm256_min_ps(_mm256_max_ps(f, _mm256_set1_ps(-252.0f)), _mm256_set1_ps(254.0f));
  const __m256i n = _mm256_cvttps_epi32(c);  // NaN: max gave -252, replaced below
  const __m256i n1 = _mm256_srai_epi32(n, 1), n2 = _mm256_sub_epi32(n, n1);
  const __m256i bias = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, bias), 23));
  const __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, bias), 23));
  s1 = _mm256_blendv_ps(s1, f, _mm256_cmp_ps(f, f, _CMP_UNORD_Q));  // NaN b: QNaN(b)
  // a as the first source: a NaN a wins over a NaN b (the compiler may swap the operands of
  // _mm256_mul_ps)
  __m256 t;
  __asm__("vmulps {%2, %1, %0|%0, %1, %2}" : "=x"(t) : "x"(a), "xm"(s1));
  __m256 r = _mm256_mul_ps(t, s2);
  // An opaque value: the compiler must not fuse this product into a following add (the
  // kernels add to scalef's result; vscalefps rounds on its own).
  __asm__("" : "+x"(r));
  return r;
}
JAXRNN_SHIM m512 _mm512_scalef_ps(m512 a, m512 b) {
  return {ScalefHalf(a.lo, b.lo), ScalefHalf(a.hi, b.hi)};
}

// ----------------------------------------------------------------- integer / casts

JAXRNN_SHIM m512i _mm512_castps_si512(m512 a) {
  return {_mm256_castps_si256(a.lo), _mm256_castps_si256(a.hi)};
}
JAXRNN_SHIM m512 _mm512_castsi512_ps(m512i a) {
  return {_mm256_castsi256_ps(a.lo), _mm256_castsi256_ps(a.hi)};
}
JAXRNN_SHIM m512i _mm512_and_si512(m512i a, m512i b) {
  return {_mm256_and_si256(a.lo, b.lo), _mm256_and_si256(a.hi, b.hi)};
}
JAXRNN_SHIM m512i _mm512_or_si512(m512i a, m512i b) {
  return {_mm256_or_si256(a.lo, b.lo), _mm256_or_si256(a.hi, b.hi)};
}

// --------------------------------------------------------------------------- masks

template <int pred>
JAXRNN_SHIM mmask16 CmpMask(m512 a, m512 b) {  // VEX vcmpps takes all 32 predicates
  const int lo = _mm256_movemask_ps(_mm256_cmp_ps(a.lo, b.lo, pred));
  const int hi = _mm256_movemask_ps(_mm256_cmp_ps(a.hi, b.hi, pred));
  return static_cast<mmask16>(lo | hi << 8);
}
JAXRNN_SHIM m512 _mm512_maskz_mov_ps(mmask16 k, m512 a) {
  return {_mm256_and_ps(a.lo, _mm256_castsi256_ps(Lanes8(k & 0xFFu))),
          _mm256_and_ps(a.hi, _mm256_castsi256_ps(Lanes8(k >> 8)))};
}
JAXRNN_SHIM m512 _mm512_mask_blend_ps(mmask16 k, m512 a, m512 b) {  // b where k is set
  return {_mm256_blendv_ps(a.lo, b.lo, _mm256_castsi256_ps(Lanes8(k & 0xFFu))),
          _mm256_blendv_ps(a.hi, b.hi, _mm256_castsi256_ps(Lanes8(k >> 8)))};
}

// ------------------------------------------------------------------------ memory

JAXRNN_SHIM m512 _mm512_load_ps(const void* p) {  // 64-byte aligned
  const float* f = static_cast<const float*>(p);
  return {_mm256_load_ps(f), _mm256_load_ps(f + 8)};
}
JAXRNN_SHIM void _mm512_store_ps(void* p, m512 a) {
  float* f = static_cast<float*>(p);
  _mm256_store_ps(f, a.lo);
  _mm256_store_ps(f + 8, a.hi);
}
JAXRNN_SHIM void _mm512_stream_ps(void* p, m512 a) {
  float* f = static_cast<float*>(p);
  _mm256_stream_ps(f, a.lo);
  _mm256_stream_ps(f + 8, a.hi);
}

// Masked loads: vmaskmovps reads only the lanes set (a masked-off lane never faults) and
// zeroes the others; full halves are plain loads, as vmaskmovps of data beyond L1 ran ~1.5x
// slower than vmovups on AMD Zen 3 (streaming from L3 / memory; the backward kernels' gate
// reads), equal in L1.
JAXRNN_SHIM __m256 LoadHalf(const float* p, unsigned bits) {
  return bits == 0xFFu ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, Lanes8(bits));
}
JAXRNN_SHIM m512 _mm512_maskz_loadu_ps(mmask16 k, const void* p) {
  const float* f = static_cast<const float*>(p);
  if (k == 0xFFFF) return {_mm256_loadu_ps(f), _mm256_loadu_ps(f + 8)};
  return {LoadHalf(f, k & 0xFFu), LoadHalf(f + 8, k >> 8)};
}
JAXRNN_SHIM __m128 _mm_maskz_loadu_ps(mmask8 k, const void* p) {
  const float* f = static_cast<const float*>(p);
  const unsigned bits = k & 0x0Fu;
  return bits == 0x0Fu ? _mm_loadu_ps(f) : _mm_maskload_ps(f, Lanes4(bits));
}

// Masked stores: a vmaskmovps store is microcoded (Zen 3: ~12x a plain store), so full halves
// are plain stores and empty halves store nothing; partial ones write only their lanes.
JAXRNN_SHIM void StoreHalf(float* p, unsigned bits, __m256 a) {
  if (bits == 0xFFu) {
    _mm256_storeu_ps(p, a);
  } else if (bits != 0) {
    _mm256_maskstore_ps(p, Lanes8(bits), a);
  }
}
JAXRNN_SHIM void _mm512_mask_storeu_ps(void* p, mmask16 k, m512 a) {
  float* f = static_cast<float*>(p);
  StoreHalf(f, k & 0xFFu, a.lo);
  StoreHalf(f + 8, k >> 8, a.hi);
}
JAXRNN_SHIM void _mm_mask_storeu_ps(void* p, mmask8 k, __m128 a) {
  float* f = static_cast<float*>(p);
  const unsigned bits = k & 0x0Fu;
  if (bits == 0x0Fu) {
    _mm_storeu_ps(f, a);
  } else if (bits != 0) {
    _mm_maskstore_ps(f, Lanes4(bits), a);
  }
}

// ------------------------------------------------------------------ 128-bit pieces

JAXRNN_SHIM __m128 _mm512_castps512_ps128(m512 a) { return _mm256_castps256_ps128(a.lo); }
template <int imm>
JAXRNN_SHIM __m128 Extract32x4(m512 a) {  // lanes 4 imm .. 4 imm + 3
  const __m256 half = (imm & 2) ? a.hi : a.lo;
  return _mm256_extractf128_ps(half, imm & 1);
}
template <int imm>
JAXRNN_SHIM m512 Insert32x4(m512 a, __m128 x) {
  if (imm & 2) {
    a.hi = _mm256_insertf128_ps(a.hi, x, imm & 1);
  } else {
    a.lo = _mm256_insertf128_ps(a.lo, x, imm & 1);
  }
  return a;
}

#undef JAXRNN_SHIM

}  // namespace avx512_on_avx2

// The intrinsics' names, for the code that follows (#undef first: some are macros in the
// system headers).
#undef __m512
#undef __m512i
#undef __mmask16
#undef __mmask8
#undef _mm512_setzero_ps
#undef _mm512_set1_ps
#undef _mm512_set1_epi32
#undef _mm512_add_ps
#undef _mm512_sub_ps
#undef _mm512_mul_ps
#undef _mm512_div_ps
#undef _mm512_min_ps
#undef _mm512_max_ps
#undef _mm512_fmadd_ps
#undef _mm512_fnmadd_ps
#undef _mm512_abs_ps
#undef _mm512_roundscale_ps
#undef _mm512_scalef_ps
#undef _mm512_castps_si512
#undef _mm512_castsi512_ps
#undef _mm512_and_si512
#undef _mm512_or_si512
#undef _mm512_cmp_ps_mask
#undef _mm512_maskz_mov_ps
#undef _mm512_mask_blend_ps
#undef _mm512_load_ps
#undef _mm512_store_ps
#undef _mm512_stream_ps
#undef _mm512_maskz_loadu_ps
#undef _mm512_mask_storeu_ps
#undef _mm_maskz_loadu_ps
#undef _mm_mask_storeu_ps
#undef _mm512_castps512_ps128
#undef _mm512_extractf32x4_ps
#undef _mm512_insertf32x4
#define __m512 avx512_on_avx2::m512
#define __m512i avx512_on_avx2::m512i
#define __mmask16 avx512_on_avx2::mmask16
#define __mmask8 avx512_on_avx2::mmask8
#define _mm512_setzero_ps avx512_on_avx2::_mm512_setzero_ps
#define _mm512_set1_ps avx512_on_avx2::_mm512_set1_ps
#define _mm512_set1_epi32 avx512_on_avx2::_mm512_set1_epi32
#define _mm512_add_ps avx512_on_avx2::_mm512_add_ps
#define _mm512_sub_ps avx512_on_avx2::_mm512_sub_ps
#define _mm512_mul_ps avx512_on_avx2::_mm512_mul_ps
#define _mm512_div_ps avx512_on_avx2::_mm512_div_ps
#define _mm512_min_ps avx512_on_avx2::_mm512_min_ps
#define _mm512_max_ps avx512_on_avx2::_mm512_max_ps
#define _mm512_fmadd_ps avx512_on_avx2::_mm512_fmadd_ps
#define _mm512_fnmadd_ps avx512_on_avx2::_mm512_fnmadd_ps
#define _mm512_abs_ps avx512_on_avx2::_mm512_abs_ps
#define _mm512_roundscale_ps(a, imm) avx512_on_avx2::RoundScale<(imm)>(a)
#define _mm512_scalef_ps avx512_on_avx2::_mm512_scalef_ps
#define _mm512_castps_si512 avx512_on_avx2::_mm512_castps_si512
#define _mm512_castsi512_ps avx512_on_avx2::_mm512_castsi512_ps
#define _mm512_and_si512 avx512_on_avx2::_mm512_and_si512
#define _mm512_or_si512 avx512_on_avx2::_mm512_or_si512
#define _mm512_cmp_ps_mask(a, b, pred) avx512_on_avx2::CmpMask<(pred)>((a), (b))
#define _mm512_maskz_mov_ps avx512_on_avx2::_mm512_maskz_mov_ps
#define _mm512_mask_blend_ps avx512_on_avx2::_mm512_mask_blend_ps
#define _mm512_load_ps avx512_on_avx2::_mm512_load_ps
#define _mm512_store_ps avx512_on_avx2::_mm512_store_ps
#define _mm512_stream_ps avx512_on_avx2::_mm512_stream_ps
#define _mm512_maskz_loadu_ps avx512_on_avx2::_mm512_maskz_loadu_ps
#define _mm512_mask_storeu_ps avx512_on_avx2::_mm512_mask_storeu_ps
#define _mm_maskz_loadu_ps avx512_on_avx2::_mm_maskz_loadu_ps
#define _mm_mask_storeu_ps avx512_on_avx2::_mm_mask_storeu_ps
#define _mm512_castps512_ps128 avx512_on_avx2::_mm512_castps512_ps128
#define _mm512_extractf32x4_ps(a, imm) avx512_on_avx2::Extract32x4<(imm)>(a)
#define _mm512_insertf32x4(a, x, imm) avx512_on_avx2::Insert32x4<(imm)>((a), (x))

#endif  // JAXRNN_AVX512_ON_AVX2_H_
