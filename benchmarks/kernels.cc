// One thread's share of the seed step, run through the native CPU kernels directly (no XLA, no
// Python), for A/B tests of jaxrnn/backends/cpu/rnn_cpu.cc: benchmarks/kernels.py builds this
// file with the kernel source (or a variant of it) included, runs it and prints the timings.
//
//   kernels KERNEL REPS [B T H V]   ->  one line per repetition: "KERNEL <ms> <checksum>"
//
// KERNEL: lstm-forward, lstm-backward (dW_h fused, all of D kept), lstm-backward-nodw,
// lstm-backward-table (as the seed step runs it: dW_h fused, the table's gradient accumulated
// in the loop, D kept as two rows), gru-forward, simple-forward, simple-backward (the last
// state's gradient only, dW_h fused, all of D kept), product-forward ([B, H] @ the LSTM's
// interleaved [H, 4 Hp] panel, no epilogue), product-backward ([B, 4H] @ W_h^T padded, no
// epilogue).
// Defaults: B = 32 (one of two threads' rows of the seed batch), T = 250, H = 100, V = 5000.
// Everything runs on one thread: the kernels only use XLA's thread pool where they split rows
// over more than one thread, and here they are asked for one (threads = 1), so the pool
// reference they take is never used.
#ifndef JAXRNN_SOURCE
#error "define JAXRNN_SOURCE as the quoted path of rnn_cpu.cc (benchmarks/kernels.py does)"
#endif
#include JAXRNN_SOURCE

#include <chrono>
#include <cstdio>
#include <random>

namespace {

double Checksum(const float* x, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

std::vector<float> Normal(int64_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = scale * nd(rng);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s KERNEL REPS [B T H V]\n", argv[0]);
    return 2;
  }
  const std::string kernel = argv[1];
  const int reps = std::atoi(argv[2]);
  const int64_t B = argc > 3 ? std::atoll(argv[3]) : 32, T = argc > 4 ? std::atoll(argv[4]) : 250,
                H = argc > 5 ? std::atoll(argv[5]) : 100, V = argc > 6 ? std::atoll(argv[6]) : 5000;
  std::mt19937 rng(0);
  std::vector<int32_t> idx(T * B);
  for (auto& i : idx) i = static_cast<int32_t>(rng() % V);
  alignas(64) unsigned char unused_pool[256] = {};  // never touched with threads = 1
  auto& pool = *reinterpret_cast<ffi::ThreadPool*>(unused_pool);
  const RowSplit split(B, 1);

  const int gates = kernel.rfind("gru", 0) == 0 ? 3 : kernel.rfind("simple", 0) == 0 ? 1 : 4;
  const int64_t GH = gates * H, ldw = RoundUp(GH, kLanes);
  const std::vector<float> W = Normal(H * GH, 0.1f, rng), table = Normal(V * GH, 0.3f, rng),
                           bh = Normal(GH, 0.1f, rng), zeros(B * H, 0.f), gT(B * H, 0.01f);
  const InterleavedPanel Wp(W.data(), H, gates, /*pack=*/true);  // as shipped
  const TransposedPanel WTp(W.data(), H, gates);
  const Padded Wsp(W.data(), H, false);
  Aligned Sh((T + 1) * B * H), Sc((T + 1) * B * H), G(T * B * 4 * H), D((T + 1) * B * GH),
      DT(B * GH), dW(H * ldw), dc(B * H), partial(H * ldw), dTable(V * GH),
      out(B * std::max(Wp.ld, WTp.ld));
  if (gates == 4) {  // the states the backward kernels read
    LstmForward(pool, table.data(), idx.data(), V, Wp, zeros.data(), zeros.data(), Sh.data,
                Sc.data, G.data, T, B, H, 1);
  }
  if (gates == 1) {  // the states the simple backward reads
    Forward<kTanh>(pool, table.data(), idx.data(), V, Panel{Wsp.data, Wsp.ld, H, Wsp.Hp},
                   zeros.data(), Sh.data, T, B, H, 1);
  }
  for (int64_t i = 0; i < B * GH; ++i) D.data[i] = 1e-3f * static_cast<float>(i % 7);

  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    double check = 0;
    if (kernel == "lstm-forward") {
      LstmForward(pool, table.data(), idx.data(), V, Wp, zeros.data(), zeros.data(), Sh.data,
                  Sc.data, G.data, T, B, H, 1);
      check = Checksum(Sh.data, (T + 1) * B * H);
    } else if (kernel == "lstm-backward" || kernel == "lstm-backward-nodw") {
      std::memset(partial.data, 0, sizeof(float) * H * ldw);
      LstmBackward(pool, Sh.data, Sc.data, G.data, WTp, nullptr, nullptr, gT.data(), zeros.data(),
                   D.data, DT.data, dW.data, dc.data, split, partial.data,
                   kernel == "lstm-backward", nullptr, false, ldw, T, B, H);
      check = Checksum(dW.data, H * GH) + Checksum(D.data + (T - 1) * B * GH, B * GH);
    } else if (kernel == "lstm-backward-table") {  // as LstmBackwardImpl with D [1, B, 4H]
      std::memset(partial.data, 0, sizeof(float) * H * ldw);
      const GradientRows Drows(D.data, Rows::kFirst, T, B * GH);
      TableGradient grad(dTable.data, idx.data(), V, GH, T, B, split);
      LstmBackward(pool, Sh.data, Sc.data, G.data, WTp, nullptr, nullptr, gT.data(), zeros.data(),
                   Drows.data, Drows.last, dW.data, dc.data, split, partial.data, true, &grad,
                   Drows.ring, ldw, T, B, H);
      grad.Finish(pool, 1);
      Drows.Finish();
      check = Checksum(dW.data, H * GH) + Checksum(dTable.data, V * GH) + Checksum(D.data, B * GH);
    } else if (kernel == "gru-forward") {
      GruForward(pool, table.data(), idx.data(), V, Wp, bh.data(), zeros.data(), Sh.data, G.data,
                 T, B, H, 1);
      check = Checksum(Sh.data, (T + 1) * B * H);
    } else if (kernel == "simple-forward") {
      Forward<kTanh>(pool, table.data(), idx.data(), V, Panel{Wsp.data, Wsp.ld, H, Wsp.Hp},
                     zeros.data(), Sh.data, T, B, H, 1);
      check = Checksum(Sh.data, (T + 1) * B * H);
    } else if (kernel == "simple-backward") {  // as the B T < V seed step: D [T, B, H] kept
      std::memset(partial.data, 0, sizeof(float) * H * ldw);
      const Padded WsTp(W.data(), H, /*transpose=*/true);
      Backward<kTanh>(pool, Sh.data, Panel{WsTp.data, WsTp.ld, H, WsTp.Hp}, WsTp.Hp, gT.data(),
                      /*last_only=*/true, D.data, DT.data, dW.data, split, partial.data,
                      /*fuse_dw=*/true, nullptr, false, T, B, H);
      check = Checksum(dW.data, H * H) + Checksum(D.data, T * B * H);
    } else if (kernel == "product-forward" || kernel == "product-backward") {
      const bool fwd = kernel == "product-forward";
      const Panel P = fwd ? Panel{Wp.buf.data, Wp.ld, H, Wp.width}
                          : Panel{WTp.buf.data, WTp.ld, GH, WTp.Hp};
      const float* x = fwd ? Sh.data + T * B * H : D.data;  // h_T (h_0 = 0)
      const int64_t ldx = fwd ? H : GH;
      for (int64_t t = 0; t < T; ++t) {
        StepRows(x, ldx, 0, B, P, [&](int64_t b) {
          return [&, b](int r, int64_t j, __m512 acc) {
            _mm512_store_ps(out.data + (b + r) * P.ld + j, acc);
          };
        });
      }
      check = Checksum(out.data, B * P.ld);
    } else {
      std::fprintf(stderr, "unknown kernel %s\n", kernel.c_str());
      return 2;
    }
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%s %.4f %.9g\n", kernel.c_str(), ms, check);
  }
  return 0;
}
