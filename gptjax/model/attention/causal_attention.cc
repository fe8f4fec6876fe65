// Fused causal self-attention for the CPU, forward and backward, as XLA FFI custom calls.
//
// Why a kernel: at the reference configs' shapes (head size 32-64, T = 256) XLA's CPU attention is a
// chain of small batched products plus the copies that give them dense, batch-major operands
// ([B, T, N, H] -> [B, N, T, H] transposes, key prefixes, padded gradients); BENCHMARKS.md has the
// measured cost. Here each (batch row, head) is one task that reads Q, K, V in place from the
// projections' [B, T, N, H] layout, keeps its operands in cache, computes only the visible (causal) keys of each query row and
// never writes the [T, T] probabilities: the backward recomputes them from the saved log-sum-exp.
//
// Built at first use by gptjax/model/attention/cpu_fused.py with the host compiler (-O3
// -march=native). The products use GCC/Clang vector extensions, 16 floats wide, so one source
// compiles to AVX-512, AVX2 or NEON. Only float32; head sizes 16, 32, 64 and 128 (elsewhere
// gptjax.model.attention.resolve picks another backend).
//
// Shape letters follow gptjax/model/gpt.py: B batch, T sequence, N query heads, K key/value heads,
// G = N / K, H head size. R is the number of query rows processed together.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }
inline Vec Splat(float x) { return Vec{} + x; }
typedef int32_t IVec __attribute__((vector_size(kLanes * sizeof(int32_t))));
// Which lanes of the 16 keys from j on are visible: key index < `visible` (a splat of the count).
inline IVec Visible(int64_t j, Vec visible) {
  static const Vec kLaneIndex = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  return kLaneIndex + static_cast<float>(j) < visible;
}
inline float HorizontalMax(Vec v) {
  float m = v[0];
  for (int l = 1; l < kLanes; ++l) m = std::max(m, v[l]);
  return m;
}
inline float HorizontalSum(Vec v) {
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += v[l];
  return total;
}

// exp(x) for x <= 0, to about 2 ulp: 2^n * e^f with |f| <= ln2 / 2 and a degree-6 polynomial.
inline Vec ExpNonPositive(Vec x) {
  const Vec lo = Splat(-87.0f), hi = Splat(0.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;  // masked lanes may hold anything; they are zeroed by the caller
  const Vec round = Splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  Vec n = x * Splat(1.44269504088896341f) + round;
  n = n - round;
  Vec f = x - n * Splat(0.693145751953125f);
  f = f - n * Splat(1.428606765330187045e-06f);
  Vec p = Splat(1.0f / 720);
  p = p * f + Splat(1.0f / 120);
  p = p * f + Splat(1.0f / 24);
  p = p * f + Splat(1.0f / 6);
  p = p * f + Splat(0.5f);
  p = p * f + Splat(1.0f);
  p = p * f + Splat(1.0f);
  IVec bits = (__builtin_convertvector(n, IVec) + 127) << 23;
  Vec scale;
  std::memcpy(&scale, &bits, sizeof(Vec));
  return p * scale;
}

inline int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Dims {
  int64_t b, t, n, k, h;
  int64_t g() const { return n / k; }
  int64_t padded_t() const { return RoundUp(t, kLanes); }
  // Offsets into the [B, T, heads, H] activations.
  int64_t q_row(int64_t bi, int64_t ti, int64_t ni) const { return ((bi * t + ti) * n + ni) * h; }
  int64_t kv_row(int64_t bi, int64_t ti, int64_t ki) const { return ((bi * t + ti) * k + ki) * h; }
};

// Runs f(0..count-1) on the calling thread and up to the pool's other threads. The caller takes
// tasks too, so the call finishes even when every pool thread is busy with other work.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t count, const F& f) {
  struct Progress {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto progress = std::make_shared<Progress>();
  // Helpers that start after every task was taken exit without touching f.
  auto work = [progress, count, &f] {
    for (int64_t i; (i = progress->next.fetch_add(1)) < count;) {
      f(i);
      progress->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), count) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  while (progress->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

// s[r][j] = sum_h a[r][h] * bt[h][j] for r < R and j < cols (a multiple of kLanes).
// a is [R, H] with rows `a_stride` apart; bt is [H, padded T]. Two column vectors at a time give
// 2R independent accumulators, enough to hide the FMA latency.
template <int H, int R>
inline void RowsTimesColumns(const float* __restrict__ a, int64_t a_stride,
                             const float* __restrict__ bt, int64_t bt_stride, int64_t cols,
                             float* __restrict__ s, int64_t s_stride) {
  int64_t c = 0;
  for (; c + 2 * kLanes <= cols; c += 2 * kLanes) {
    Vec acc0[R] = {}, acc1[R] = {};
    for (int hi = 0; hi < H; ++hi) {
      const Vec col0 = Load(bt + hi * bt_stride + c), col1 = Load(bt + hi * bt_stride + c + kLanes);
      for (int r = 0; r < R; ++r) {
        const float x = a[r * a_stride + hi];
        acc0[r] += x * col0;
        acc1[r] += x * col1;
      }
    }
    for (int r = 0; r < R; ++r) {
      Store(s + r * s_stride + c, acc0[r]);
      Store(s + r * s_stride + c + kLanes, acc1[r]);
    }
  }
  if (c < cols) {
    Vec acc[R] = {};
    for (int hi = 0; hi < H; ++hi) {
      const Vec col = Load(bt + hi * bt_stride + c);
      for (int r = 0; r < R; ++r) acc[r] += a[r * a_stride + hi] * col;
    }
    for (int r = 0; r < R; ++r) Store(s + r * s_stride + c, acc[r]);
  }
}

// out[r][:] = sum_{j < len} p[r][j] * m[j][:] for r < R; m is [len, H] contiguous.
template <int H, int R>
inline void WeightsTimesRows(const float* __restrict__ p, int64_t p_stride,
                             const float* __restrict__ m, int64_t len, float* __restrict__ out) {
  constexpr int kV = H / kLanes;
  constexpr int kRows = std::max(1, std::min(R, 16 / kV));  // keep the accumulators in registers
  for (int r0 = 0; r0 < R; r0 += kRows) {
    Vec acc[kRows][kV] = {};
    for (int64_t j = 0; j < len; ++j) {
      Vec row[kV];
      for (int v = 0; v < kV; ++v) row[v] = Load(m + j * H + v * kLanes);
      for (int r = 0; r < kRows; ++r) {
        const float w = p[(r0 + r) * p_stride + j];
        for (int v = 0; v < kV; ++v) acc[r][v] += w * row[v];
      }
    }
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < kV; ++v) Store(out + (r0 + r) * H + v * kLanes, acc[r][v]);
  }
}

// m[j][:] += sum_{r < R} p[r][j] * rows[r][:] for j < len; m is [len, H] contiguous. The R rows
// stay in registers while j runs over the keys.
template <int H, int R>
inline void AddColumnsTimesRows(const float* __restrict__ p, int64_t p_stride,
                                const float* __restrict__ rows, int64_t len, float* __restrict__ m) {
  constexpr int kV = H / kLanes;
  constexpr int kRows = std::max(1, std::min(R, 16 / kV));
  for (int r0 = 0; r0 < R; r0 += kRows) {
    Vec held[kRows][kV];
    for (int r = 0; r < kRows; ++r)
      for (int v = 0; v < kV; ++v) held[r][v] = Load(rows + (r0 + r) * H + v * kLanes);
    for (int64_t j = 0; j < len; ++j) {
      Vec acc[kV];
      for (int v = 0; v < kV; ++v) acc[v] = Load(m + j * H + v * kLanes);
      for (int r = 0; r < kRows; ++r) {
        const float w = p[(r0 + r) * p_stride + j];
        for (int v = 0; v < kV; ++v) acc[v] += w * held[r][v];
      }
      for (int v = 0; v < kV; ++v) Store(m + j * H + v * kLanes, acc[v]);
    }
  }
}

// Per-thread scratch, grown on demand and reused across calls.
std::vector<float>& Scratch(int slot, size_t size) {
  thread_local std::vector<float> buffers[8];
  if (buffers[slot].size() < size) buffers[slot].resize(size);
  return buffers[slot];
}

// Copies heads [T, H] of a [B, T, heads, H] tensor into a contiguous [T + pad, H] buffer (times
// scale), zeroing the pad rows, and optionally its transpose into [H, padded T].
template <int H>
void Gather(const float* x, int64_t row0, int64_t row_stride, int64_t t, int64_t pad_rows,
            float scale, float* rows_out, float* columns_out, int64_t padded_t) {
  for (int64_t i = 0; i < t; ++i)
    for (int hi = 0; hi < H; ++hi) rows_out[i * H + hi] = x[row0 + i * row_stride + hi] * scale;
  std::fill(rows_out + t * H, rows_out + (t + pad_rows) * H, 0.0f);
  if (columns_out == nullptr) return;
  for (int hi = 0; hi < H; ++hi) {
    for (int64_t i = 0; i < t; ++i) columns_out[hi * padded_t + i] = rows_out[i * H + hi];
    std::fill(columns_out + hi * padded_t + t, columns_out + (hi + 1) * padded_t, 0.0f);
  }
}

constexpr int kR = 8;

// Forward of one (batch row, query head): out and the log-sum-exp of each query's logits.
template <int H>
void ForwardHead(const Dims& d, const float* q, const float* k, const float* v, float* out,
                 float* lse, int64_t bi, int64_t ni) {
  const int64_t t = d.t, tp = d.padded_t(), ki = ni / d.g();
  float* qs = Scratch(0, (t + kR) * H).data();     // [T + R, H] scaled queries
  float* keys_t = Scratch(1, H * tp).data();       // [H, padded T]
  float* values = Scratch(2, (t + kR) * H).data(); // [T, H]
  float* s = Scratch(3, kR * tp).data();            // [R, padded T] logits, then probabilities
  float* o = Scratch(4, kR * H).data();              // [R, H]
  float* keys = Scratch(5, (t + kR) * H).data();
  const float scale = 1.0f / std::sqrt(static_cast<float>(H));
  Gather<H>(q, d.q_row(bi, 0, ni), d.n * H, t, kR, scale, qs, nullptr, tp);
  Gather<H>(k, d.kv_row(bi, 0, ki), d.k * H, t, kR, 1.0f, keys, keys_t, tp);
  Gather<H>(v, d.kv_row(bi, 0, ki), d.k * H, t, kR, 1.0f, values, nullptr, tp);
  for (int64_t i0 = 0; i0 < t; i0 += kR) {
    const int64_t rows = std::min<int64_t>(kR, t - i0);
    const int64_t len = i0 + rows;  // keys visible to the block's last row
    const int64_t cols = RoundUp(len, kLanes);
    RowsTimesColumns<H, kR>(qs + i0 * H, H, keys_t, tp, cols, s, tp);
    float inv_sum[kR];
    for (int r = 0; r < kR; ++r) {
      float* row = s + r * tp;
      const Vec visible = Splat(static_cast<float>(std::min(i0 + r + 1, len)));
      Vec max = Splat(-INFINITY);
      for (int64_t j = 0; j < cols; j += kLanes) {
        const Vec x = Load(row + j);
        max = Visible(j, visible) && x > max ? x : max;
      }
      const float m = HorizontalMax(max);
      Vec sum = {};
      for (int64_t j = 0; j < cols; j += kLanes) {
        Vec e = ExpNonPositive(Load(row + j) - m);
        e = Visible(j, visible) ? e : Vec{};
        Store(row + j, e);
        sum += e;
      }
      const float total = HorizontalSum(sum);
      if (r < rows) lse[(bi * d.n + ni) * t + i0 + r] = m + std::log(total);
      inv_sum[r] = 1.0f / total;
    }
    WeightsTimesRows<H, kR>(s, tp, values, len, o);  // unnormalised: 1/sum is applied here
    for (int r = 0; r < rows; ++r) {
      float* dst = out + d.q_row(bi, i0 + r, ni);
      for (int hi = 0; hi < H; ++hi) dst[hi] = o[r * H + hi] * inv_sum[r];
    }
  }
}

// Backward of one (batch row, key/value head) over its G query heads: dQ of those heads, dK, dV.
template <int H>
void BackwardHead(const Dims& d, const float* q, const float* k, const float* v, const float* out,
                  const float* lse, const float* dout, float* dq, float* dk, float* dv, int64_t bi,
                  int64_t ki) {
  const int64_t t = d.t, tp = d.padded_t();
  float* qs = Scratch(0, (t + kR) * H).data();
  float* keys = Scratch(1, (t + kR) * H).data();
  float* keys_t = Scratch(2, H * tp).data();
  float* values_t = Scratch(3, H * tp).data();
  float* douts = Scratch(4, (t + kR) * H).data();
  float* p = Scratch(5, 2 * kR * tp).data();  // [R, padded T] probabilities, then dP and dS
  float* ds = p + kR * tp;
  float* acc = Scratch(6, 2 * (t + kR) * H + kR * H + t).data();
  float* dkeys = acc, *dvalues = acc + (t + kR) * H, *dqs = dvalues + (t + kR) * H;
  float* delta = dqs + kR * H;
  float* values = Scratch(7, (t + kR) * H).data();
  const float scale = 1.0f / std::sqrt(static_cast<float>(H));
  Gather<H>(k, d.kv_row(bi, 0, ki), d.k * H, t, kR, 1.0f, keys, keys_t, tp);
  Gather<H>(v, d.kv_row(bi, 0, ki), d.k * H, t, kR, 1.0f, values, values_t, tp);
  std::fill(dkeys, dkeys + 2 * (t + kR) * H, 0.0f);
  for (int64_t ni = ki * d.g(); ni < (ki + 1) * d.g(); ++ni) {
    Gather<H>(q, d.q_row(bi, 0, ni), d.n * H, t, kR, scale, qs, nullptr, tp);
    Gather<H>(dout, d.q_row(bi, 0, ni), d.n * H, t, kR, 1.0f, douts, nullptr, tp);
    // rowsum(dP * P) = rowsum(dO * O): one H-long dot per query instead of one over the keys.
    for (int64_t i = 0; i < t; ++i) {
      const float* o = out + d.q_row(bi, i, ni);
      float sum = 0.0f;
      for (int hi = 0; hi < H; ++hi) sum += o[hi] * douts[i * H + hi];
      delta[i] = sum;
    }
    const float* lse_t = lse + (bi * d.n + ni) * t;
    for (int64_t i0 = 0; i0 < t; i0 += kR) {
      const int64_t rows = std::min<int64_t>(kR, t - i0);
      const int64_t len = i0 + rows;
      const int64_t cols = RoundUp(len, kLanes);
      RowsTimesColumns<H, kR>(qs + i0 * H, H, keys_t, tp, cols, p, tp);
      RowsTimesColumns<H, kR>(douts + i0 * H, H, values_t, tp, cols, ds, tp);
      for (int r = 0; r < kR; ++r) {
        float* prow = p + r * tp;
        float* dsrow = ds + r * tp;
        const Vec visible = Splat(r < rows ? static_cast<float>(i0 + r + 1) : 0.0f);
        const float m = r < rows ? lse_t[i0 + r] : 0.0f;
        const float dl = r < rows ? delta[i0 + r] : 0.0f;
        for (int64_t j = 0; j < cols; j += kLanes) {
          Vec e = ExpNonPositive(Load(prow + j) - m);
          e = Visible(j, visible) ? e : Vec{};
          Store(prow + j, e);
          Store(dsrow + j, e * (Load(dsrow + j) - dl));
        }
      }
      AddColumnsTimesRows<H, kR>(p, tp, douts + i0 * H, len, dvalues);
      AddColumnsTimesRows<H, kR>(ds, tp, qs + i0 * H, len, dkeys);
      WeightsTimesRows<H, kR>(ds, tp, keys, len, dqs);
      for (int r = 0; r < rows; ++r) {
        float* dst = dq + d.q_row(bi, i0 + r, ni);
        for (int hi = 0; hi < H; ++hi) dst[hi] = dqs[r * H + hi] * scale;
      }
    }
  }
  for (int64_t i = 0; i < t; ++i) {
    std::memcpy(dk + d.kv_row(bi, i, ki), dkeys + i * H, H * sizeof(float));
    std::memcpy(dv + d.kv_row(bi, i, ki), dvalues + i * H, H * sizeof(float));
  }
}

ffi::Error CheckShapes(const Dims& d) {
  if (d.k == 0 || d.n % d.k != 0)
    return ffi::Error::InvalidArgument("query heads must be a multiple of key/value heads");
  if (d.h != 16 && d.h != 32 && d.h != 64 && d.h != 128)
    return ffi::Error::InvalidArgument("head size must be 16, 32, 64 or 128");
  return ffi::Error::Success();
}

Dims DimsOf(ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k) {
  auto qd = q.dimensions(), kd = k.dimensions();
  return Dims{qd[0], qd[1], qd[2], kd[2], qd[3]};
}

template <typename F>
void DispatchHeadSize(int64_t h, const F& f) {
  switch (h) {
    case 16: f(std::integral_constant<int, 16>()); break;
    case 32: f(std::integral_constant<int, 32>()); break;
    case 64: f(std::integral_constant<int, 64>()); break;
    default: f(std::integral_constant<int, 128>()); break;
  }
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> lse) {
  const Dims d = DimsOf(q, k);
  if (ffi::Error error = CheckShapes(d); error.failure()) return error;
  DispatchHeadSize(d.h, [&](auto h) {
    ParallelFor(pool, d.b * d.n, [&](int64_t task) {
      ForwardHead<decltype(h)::value>(d, q.typed_data(), k.typed_data(), v.typed_data(),
                                      out->typed_data(), lse->typed_data(), task / d.n,
                                      task % d.n);
    });
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv) {
  const Dims d = DimsOf(q, k);
  if (ffi::Error error = CheckShapes(d); error.failure()) return error;
  DispatchHeadSize(d.h, [&](auto h) {
    ParallelFor(pool, d.b * d.k, [&](int64_t task) {
      BackwardHead<decltype(h)::value>(d, q.typed_data(), k.typed_data(), v.typed_data(),
                                       out.typed_data(), lse.typed_data(), dout.typed_data(),
                                       dq->typed_data(), dk->typed_data(), dv->typed_data(),
                                       task / d.k, task % d.k);
    });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GptjaxCausalAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GptjaxCausalAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
