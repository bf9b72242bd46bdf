// Checks jaxrnn/backends/cpu/avx512_on_avx2.h, operation by operation, bit for bit: against
// the AVX-512 instructions themselves where the CPU has them (functions compiled for avx512f /
// avx512vl below, before the header renames the intrinsics), else against scalar models of
// them. Masked loads and stores run against an inaccessible page (a touched masked-off lane is
// a SIGSEGV, reported as a failure). Built and run by tests/backends/test_cpu_kernels.py:
//
//   c++ -O2 -std=c++17 -march=native -mno-avx512f -I jaxrnn/backends/cpu \
//       tests/backends/avx512_on_avx2_check.cc
//
// Prints "ok <checks> <reference>" and exits 0, or prints the mismatches and exits 1.
#include <immintrin.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace {

uint32_t Bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float FromBits(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// ---------------------------------------------------------------- the AVX-512 instructions

#define HW __attribute__((target("avx512f,avx512vl"), noinline))
HW void HwScalef(const float* a, const float* b, float* out) {
  _mm512_storeu_ps(out, _mm512_scalef_ps(_mm512_loadu_ps(a), _mm512_loadu_ps(b)));
}
HW void HwRoundscale(const float* a, float* out) {
  _mm512_storeu_ps(out, _mm512_roundscale_ps(_mm512_loadu_ps(a),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
HW void HwBinary(int op, const float* a, const float* b, const float* c, float* out) {
  const __m512 x = _mm512_loadu_ps(a), y = _mm512_loadu_ps(b), z = _mm512_loadu_ps(c);
  __m512 r;
  switch (op) {
    case 0: r = _mm512_add_ps(x, y); break;
    case 1: r = _mm512_sub_ps(x, y); break;
    case 2: r = _mm512_mul_ps(x, y); break;
    case 3: r = _mm512_div_ps(x, y); break;
    case 4: r = _mm512_min_ps(x, y); break;
    case 5: r = _mm512_max_ps(x, y); break;
    case 6: r = _mm512_fmadd_ps(x, y, z); break;
    case 7: r = _mm512_fnmadd_ps(x, y, z); break;
    default: r = _mm512_abs_ps(x); break;
  }
  _mm512_storeu_ps(out, r);
}
HW uint16_t HwCmpGt(const float* a, const float* b) {
  return _mm512_cmp_ps_mask(_mm512_loadu_ps(a), _mm512_loadu_ps(b), _CMP_GT_OQ);
}
#undef HW

bool HasAvx512() { return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"); }

}  // namespace

#include "avx512_on_avx2.h"

namespace {

// The shim's 16 floats from any address (it provides the aligned load rnn_cpu.cc uses).
__m512 Load(const float* p) {
  alignas(64) float a[16];
  std::memcpy(a, p, sizeof(a));
  return _mm512_load_ps(a);
}

int failures = 0;
long checks = 0;

void Expect(bool ok, const char* what, int lane, float a, float b, float got, float want) {
  ++checks;
  if (ok) return;
  if (++failures <= 40) {
    std::printf("FAIL %s lane %d: a=%a (%08x) b=%a (%08x): got %a (%08x), want %a (%08x)\n", what,
                lane, a, Bits(a), b, Bits(b), got, Bits(got), want, Bits(want));
  }
}

float Quiet(float x) { return FromBits(Bits(x) | 0x00400000u); }
// by the bits: under DAZ a denormal compares equal to 0
bool IsZero(float x) { return (Bits(x) & 0x7FFFFFFFu) == 0; }
bool IsDenormal(float x) { return (Bits(x) & 0x7F800000u) == 0 && !IsZero(x); }
float Daz(float x, bool daz) { return daz && IsDenormal(x) ? std::copysign(0.0f, x) : x; }

// vscalefps for one lane (SDM: a * 2^floor(b), DAZ on both operands, one rounding under
// MXCSR): the exact product in double, rounded to float by the hardware's own conversion.
float ModelScalef(float a, float b, bool daz) {
  a = Daz(a, daz);
  b = Daz(b, daz);
  if (std::isnan(a)) return Quiet(a);
  if (std::isnan(b)) return Quiet(b);
  const double f = std::floor(static_cast<double>(b));
  if (std::isinf(f)) {
    if (f > 0) return IsZero(a) ? FromBits(0xFFC00000u) : std::copysign(INFINITY, a);
    return std::isinf(a) ? FromBits(0xFFC00000u) : std::copysign(0.0f, a);
  }
  const double exact = std::ldexp(static_cast<double>(a), static_cast<int>(std::fmax(-400, std::fmin(400, f))));
  volatile double v = exact;
  return _mm_cvtss_f32(_mm_cvtsd_ss(_mm_setzero_ps(), _mm_set_sd(v)));  // MXCSR rounding, FTZ
}

// Whether the header promises scalef's result for (a, b) (avx512_on_avx2.h, ScalefHalf): the
// first product t = a 2^floor(n / 2) exact and not flushed, or flushed where the result is.
bool ScalefInDomain(float a, float b, bool ftz, bool daz) {
  a = Daz(a, daz);
  b = Daz(b, daz);
  if (std::isnan(a) || std::isnan(b)) return true;
  const double f = std::floor(static_cast<double>(b));
  if (!(f >= -252 && f <= 254)) return false;
  if (IsZero(a) || std::isinf(a)) return true;
  const int n = static_cast<int>(f);
  const double t = std::fabs(std::ldexp(static_cast<double>(a), n >> 1));
  if (t >= FLT_MIN) return true;
  if (ftz) return n <= 0 || std::fabs(std::ldexp(static_cast<double>(a), n)) < FLT_MIN;
  return !daz && std::fmod(t, 0x1p-149) == 0;  // a representable denormal
}

std::vector<float> SpecialFloats() {
  std::vector<float> v = {0.0f, 1.0f, 0.5f, 0.7f, 1.42f, 1.5f, 2.5f, 3.0f, 0.29f, 1e-8f,
                          0x1p-40f, FLT_MIN, 1.1754942e-38f, 1e-40f, 1.4e-45f, FLT_MAX, 0x1p102f,
                          0x1.fffffep101f, 0x1.000002p-126f, 0x1.8p-127f, 65504.0f, 8388607.5f,
                          8388608.0f, 8388609.0f, 16777216.0f, INFINITY, 0.49999997f,
                          0x1p-64f, 0x1.fffffep-1f, 3.4e38f, 1e30f, 1e-30f};
  const size_t n = v.size();
  for (size_t i = 0; i < n; ++i) v.push_back(-v[i]);
  for (uint32_t payload : {0x7FC00000u, 0xFFC00000u, 0x7FC12345u, 0x7F812345u, 0xFF800001u}) {
    v.push_back(FromBits(payload));  // quiet and signalling NaNs, both signs
  }
  return v;
}

// ----------------------------------------------------------------------------- scalef

void CheckScalef(bool ftz, bool daz, bool hw) {
  std::vector<float> as = SpecialFloats(), bs;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> unit(0.5f, 2.0f);
  for (int i = 0; i < 64; ++i) as.push_back(unit(rng) * (i % 2 ? -1.0f : 1.0f));
  for (int n = -300; n <= 300; ++n) bs.push_back(static_cast<float>(n));
  for (float x : {0.5f, -0.5f, 2.75f, -2.75f, 126.5f, -126.5f, 149.99f, -149.99f, 1e-40f, -1e-40f,
                  -0.0f, 1e9f, -1e9f, INFINITY, -INFINITY}) {
    bs.push_back(x);
  }
  for (uint32_t payload : {0x7FC00000u, 0xFFC54321u, 0x7F800042u}) bs.push_back(FromBits(payload));
  const unsigned saved = _mm_getcsr();
  _mm_setcsr((saved & ~0x8040u) | (ftz ? 0x8000u : 0) | (daz ? 0x0040u : 0));
  alignas(64) float a16[16], b16[16], got[16], want[16];
  long in_domain = 0;
  for (size_t i = 0; i < as.size(); ++i) {
    for (size_t j0 = 0; j0 < bs.size(); j0 += 16) {
      for (int l = 0; l < 16; ++l) {
        a16[l] = as[i];
        b16[l] = bs[(j0 + l) % bs.size()];
      }
      _mm512_store_ps(got, _mm512_scalef_ps(Load(a16), Load(b16)));
      if (hw) {
        HwScalef(a16, b16, want);
      } else {
        for (int l = 0; l < 16; ++l) want[l] = ModelScalef(a16[l], b16[l], daz);
      }
      for (int l = 0; l < 16; ++l) {
        if (!ScalefInDomain(a16[l], b16[l], ftz, daz)) continue;
        ++in_domain;
        Expect(Bits(got[l]) == Bits(want[l]), ftz ? (daz ? "scalef ftz daz" : "scalef ftz")
                                                   : (daz ? "scalef daz" : "scalef"),
               l, a16[l], b16[l], got[l], want[l]);
      }
    }
  }
  // The kernels' own inputs: TanhChunk (n in [-26, 0]) and SigmoidChunk (n in [-127, 150],
  // a = exp(r) in [0.7, 1.42]) are all in the domain.
  for (int n = -127; n <= 150; ++n) {
    for (float a : {0.7071f, 1.0f, 1.4142f, 0x1p-40f, 0.3f}) {
      Expect(ScalefInDomain(a, static_cast<float>(n), ftz, daz), "scalef kernel domain", 0, a,
             static_cast<float>(n), 0, 0);
    }
  }
  _mm_setcsr(saved);
  if (in_domain < 50000) Expect(false, "scalef: too few cases in the domain", 0, 0, 0, 0, 0);
}

// -------------------------------------------------------------- roundscale, arithmetic

void CheckRoundscaleAndArithmetic(bool hw) {
  std::vector<float> xs = SpecialFloats();
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> wide(-40.0f, 40.0f);
  for (int i = 0; i < 4096; ++i) xs.push_back(wide(rng));
  for (int i = -20; i <= 20; ++i) xs.push_back(i + 0.5f);  // ties to even
  std::uniform_int_distribution<uint32_t> any;
  for (int i = 0; i < 4096; ++i) xs.push_back(FromBits(any(rng)));
  while (xs.size() % 16) xs.push_back(1.0f);
  alignas(64) float got[16], want[16];
  for (size_t i = 0; i < xs.size(); i += 16) {
    const float* x = &xs[i];
    _mm512_store_ps(got, _mm512_roundscale_ps(Load(x),
                                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (hw) {
      HwRoundscale(x, want);
    } else {
      for (int l = 0; l < 16; ++l) want[l] = std::isnan(x[l]) ? Quiet(x[l]) : std::nearbyint(x[l]);
    }
    for (int l = 0; l < 16; ++l) {
      Expect(Bits(got[l]) == Bits(want[l]), "roundscale", l, x[l], 0, got[l], want[l]);
    }
  }
  // binary operations, fused multiply-adds, abs over pairs (and triples) of the values
  std::vector<float> ys(xs), zs(xs);
  std::shuffle(ys.begin(), ys.end(), rng);
  std::shuffle(zs.begin(), zs.end(), rng);
  const char* names[] = {"add", "sub", "mul", "div", "min", "max", "fmadd", "fnmadd", "abs"};
  for (int op = 0; op < 9; ++op) {
    for (size_t i = 0; i < xs.size(); i += 16) {
      const __m512 a = Load(&xs[i]), b = Load(&ys[i]),
                   c = Load(&zs[i]);
      __m512 r;
      switch (op) {
        case 0: r = _mm512_add_ps(a, b); break;
        case 1: r = _mm512_sub_ps(a, b); break;
        case 2: r = _mm512_mul_ps(a, b); break;
        case 3: r = _mm512_div_ps(a, b); break;
        case 4: r = _mm512_min_ps(a, b); break;
        case 5: r = _mm512_max_ps(a, b); break;
        case 6: r = _mm512_fmadd_ps(a, b, c); break;
        case 7: r = _mm512_fnmadd_ps(a, b, c); break;
        default: r = _mm512_abs_ps(a); break;
      }
      _mm512_store_ps(got, r);
      if (hw) {
        HwBinary(op, &xs[i], &ys[i], &zs[i], want);
      } else {
        for (int l = 0; l < 16; ++l) {
          const float x = xs[i + l], y = ys[i + l], z = zs[i + l];
          switch (op) {
            case 4: want[l] = x < y ? x : y; break;  // vminps: the second where unordered / equal
            case 5: want[l] = x > y ? x : y; break;
            case 6: want[l] = std::fma(x, y, z); break;
            case 7: want[l] = std::fma(-x, y, z); break;
            case 8: want[l] = FromBits(Bits(x) & 0x7FFFFFFFu); break;
            default: want[l] = got[l];  // IEEE operations: only NaN-free results compared below
          }
        }
      }
      for (int l = 0; l < 16; ++l) {
        const float x = xs[i + l], y = ys[i + l], z = zs[i + l];
        float w = want[l];
        if (!hw && op < 4) {
          volatile float vx = x, vy = y;
          w = op == 0 ? vx + vy : op == 1 ? vx - vy : op == 2 ? vx * vy : vx / vy;
        }
        // without the instructions, NaN payloads of the scalar models are not the reference
        const bool skip = !hw && std::isnan(w) && op != 4 && op != 5 && op != 8;
        if (!skip) Expect(Bits(got[l]) == Bits(w), names[op], l, x, y, got[l], w);
        (void)z;
      }
    }
  }
  // compare-to-mask (the kernels' _CMP_GT_OQ)
  for (size_t i = 0; i < xs.size(); i += 16) {
    const uint16_t got_mask = _mm512_cmp_ps_mask(Load(&xs[i]), Load(&ys[i]), _CMP_GT_OQ);
    uint16_t want_mask = 0;
    if (hw) {
      want_mask = HwCmpGt(&xs[i], &ys[i]);
    } else {
      for (int l = 0; l < 16; ++l) want_mask |= (xs[i + l] > ys[i + l]) << l;
    }
    Expect(got_mask == want_mask, "cmp_ps_mask GT_OQ", 0, xs[i], ys[i], got_mask, want_mask);
  }
}

// ------------------------------------------------------------------ lanes and pieces

void CheckLanes() {
  alignas(64) float x[16], y[16], out[16];
  for (int l = 0; l < 16; ++l) {
    x[l] = static_cast<float>(l + 1);
    y[l] = static_cast<float>(-100 - l);
  }
  const __m512 a = _mm512_load_ps(x), b = _mm512_load_ps(y);
  for (uint32_t k : {0x0000u, 0xFFFFu, 0x0F00u, 0x8001u, 0x5A5Au, 0x00FFu, 0xFF00u, 0x1234u}) {
    _mm512_store_ps(out, _mm512_mask_blend_ps(static_cast<__mmask16>(k), a, b));
    for (int l = 0; l < 16; ++l) Expect(out[l] == ((k >> l) & 1 ? y[l] : x[l]), "mask_blend", l, k, 0, out[l], 0);
    _mm512_store_ps(out, _mm512_maskz_mov_ps(static_cast<__mmask16>(k), a));
    for (int l = 0; l < 16; ++l) Expect(Bits(out[l]) == ((k >> l) & 1 ? Bits(x[l]) : 0u), "maskz_mov", l, k, 0, out[l], 0);
  }
  for (int q = 0; q < 4; ++q) {  // extract / insert / cast by quarter (immediates)
    __m128 piece;
    __m512 with;
    const __m128 marker = _mm_set1_ps(-7.0f);
    switch (q) {
      case 0: piece = _mm512_extractf32x4_ps(a, 0); with = _mm512_insertf32x4(a, marker, 0); break;
      case 1: piece = _mm512_extractf32x4_ps(a, 1); with = _mm512_insertf32x4(a, marker, 1); break;
      case 2: piece = _mm512_extractf32x4_ps(a, 2); with = _mm512_insertf32x4(a, marker, 2); break;
      default: piece = _mm512_extractf32x4_ps(a, 3); with = _mm512_insertf32x4(a, marker, 3); break;
    }
    alignas(16) float p4[4];
    _mm_store_ps(p4, piece);
    _mm512_store_ps(out, with);
    for (int l = 0; l < 4; ++l) Expect(p4[l] == x[4 * q + l], "extractf32x4", l, q, 0, p4[l], x[4 * q + l]);
    for (int l = 0; l < 16; ++l) {
      const float w = l / 4 == q ? -7.0f : x[l];
      Expect(out[l] == w, "insertf32x4", l, q, 0, out[l], w);
    }
  }
  _mm_store_ps(out, _mm512_castps512_ps128(a));
  for (int l = 0; l < 4; ++l) Expect(out[l] == x[l], "castps512_ps128", l, 0, 0, out[l], x[l]);
  // sign handling through the integer casts, as TanhChunk does it
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(b), _mm512_set1_epi32(INT32_MIN));
  _mm512_store_ps(out, _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(a), sign)));
  for (int l = 0; l < 16; ++l) Expect(out[l] == -x[l], "and/or_si512", l, 0, 0, out[l], -x[l]);
  _mm512_stream_ps(out, _mm512_set1_ps(3.0f));
  _mm_sfence();
  for (int l = 0; l < 16; ++l) Expect(out[l] == 3.0f, "stream/set1", l, 0, 0, out[l], 3.0f);
  _mm512_store_ps(out, _mm512_setzero_ps());
  for (int l = 0; l < 16; ++l) Expect(Bits(out[l]) == 0, "setzero", l, 0, 0, out[l], 0);
}

// ------------------------------------------------------- masked memory at a page's edge

sigjmp_buf fault_jump;
void OnFault(int) { siglongjmp(fault_jump, 1); }

void CheckMaskedMemory() {
  const long page = sysconf(_SC_PAGESIZE);
  // three pages: inaccessible | accessible | inaccessible
  char* base = static_cast<char*>(mmap(nullptr, 3 * page, PROT_READ | PROT_WRITE,
                                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED) {
    Expect(false, "mmap", 0, 0, 0, 0, 0);
    return;
  }
  mprotect(base, page, PROT_NONE);
  mprotect(base + 2 * page, page, PROT_NONE);
  float* lo = reinterpret_cast<float*>(base + page);
  float* hi = reinterpret_cast<float*>(base + 2 * page);
  const long floats = page / 4;
  struct sigaction sa = {}, old_segv = {}, old_bus = {};
  sa.sa_handler = OnFault;
  sigaction(SIGSEGV, &sa, &old_segv);
  sigaction(SIGBUS, &sa, &old_bus);
  std::vector<uint32_t> masks = {0x0000u, 0x0001u, 0x8000u, 0x000Fu, 0x00FFu, 0x0100u, 0xFF00u,
                                 0x7FFFu, 0xFFFEu, 0xFFFFu, 0x0FF0u};
  std::mt19937 rng(3);
  for (int i = 0; i < 64; ++i) masks.push_back(rng() & 0xFFFFu);
  for (uint32_t k : masks) {
    // windows whose set lanes end at the page's last float, or start at its first
    int first = -1, last = -1;
    for (int l = 0; l < 16; ++l) {
      if ((k >> l) & 1) {
        if (first < 0) first = l;
        last = l;
      }
    }
    float* starts[2] = {k ? hi - 1 - last : hi - 8, k ? lo - first : lo - 8};
    for (float* p : starts) {
      for (long i = 0; i < floats; ++i) lo[i] = static_cast<float>(i);
      const char* volatile step = "maskz_loadu_ps";
      if (sigsetjmp(fault_jump, 1) == 0) {
        alignas(64) float got[16];
        _mm512_store_ps(got, _mm512_maskz_loadu_ps(static_cast<__mmask16>(k), p));
        for (int l = 0; l < 16; ++l) {
          const float want = (k >> l) & 1 ? p[l] : 0.0f;
          Expect(Bits(got[l]) == Bits(want), "maskz_loadu_ps", l, k, 0, got[l], want);
        }
        step = "mask_storeu_ps";
        _mm512_mask_storeu_ps(p, static_cast<__mmask16>(k), _mm512_set1_ps(-1.0f));
        for (long i = 0; i < floats; ++i) {
          const long l = lo + i - p;
          const bool set = l >= 0 && l < 16 && ((k >> l) & 1);
          const float want = set ? -1.0f : static_cast<float>(i);
          if (lo[i] != want) Expect(false, "mask_storeu_ps wrote a masked-off lane", l, k, 0, lo[i], want);
        }
        ++checks;
      } else {
        Expect(false, step, 0, k, 0, 0, 0);
        std::printf("  (a masked-off lane touched an inaccessible page; mask %04x)\n", k);
      }
    }
    // the 128-bit forms: 4 lanes, the mask's upper bits ignored
    const uint32_t k4 = k & 0xFFu, bits = k4 & 0xFu;
    int last4 = -1, first4 = -1;
    for (int l = 0; l < 4; ++l) {
      if ((bits >> l) & 1) {
        if (first4 < 0) first4 = l;
        last4 = l;
      }
    }
    float* starts4[2] = {bits ? hi - 1 - last4 : hi - 2, bits ? lo - first4 : lo - 2};
    for (float* p : starts4) {
      for (long i = 0; i < floats; ++i) lo[i] = static_cast<float>(i);
      if (sigsetjmp(fault_jump, 1) == 0) {
        alignas(16) float got[4];
        _mm_store_ps(got, _mm_maskz_loadu_ps(static_cast<__mmask8>(k4), p));
        for (int l = 0; l < 4; ++l) {
          const float want = (bits >> l) & 1 ? p[l] : 0.0f;
          Expect(Bits(got[l]) == Bits(want), "_mm_maskz_loadu_ps", l, k4, 0, got[l], want);
        }
        _mm_mask_storeu_ps(p, static_cast<__mmask8>(k4), _mm_set1_ps(-1.0f));
        for (long i = 0; i < floats; ++i) {
          const long l = lo + i - p;
          const bool set = l >= 0 && l < 4 && ((bits >> l) & 1);
          const float want = set ? -1.0f : static_cast<float>(i);
          if (lo[i] != want) Expect(false, "_mm_mask_storeu_ps wrote a masked-off lane", l, k4, 0, lo[i], want);
        }
        ++checks;
      } else {
        Expect(false, "_mm_maskz_loadu_ps / _mm_mask_storeu_ps fault", 0, k4, 0, 0, 0);
      }
    }
  }
  sigaction(SIGSEGV, &old_segv, nullptr);
  sigaction(SIGBUS, &old_bus, nullptr);
  munmap(base, 3 * page);
}

}  // namespace

int main() {
  const bool hw = HasAvx512();
  for (int mode = 0; mode < 4; ++mode) CheckScalef(mode & 1, mode & 2, hw);
  CheckRoundscaleAndArithmetic(hw);
  CheckLanes();
  CheckMaskedMemory();
  if (failures) {
    std::printf("%d of %ld checks failed\n", failures, checks);
    return 1;
  }
  std::printf("ok %ld %s\n", checks, hw ? "avx512" : "model");
  return 0;
}
