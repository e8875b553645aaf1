// bnlab's CPU batch-norm kernels. The math is that of bnlab.functional (and its derivation in
// bnlab.reference); this file only decides how memory is walked.
//
// Two walks cover every layout the dispatcher sends here:
//   planes: contiguous (N, C, S), S > 1. Each (n, c) plane is S contiguous values of one channel.
//   rows:   (M, C) with the C channels contiguous in each row: 2D input, channels_last, or an
//           (N, C, 1, ...) input. Narrow rows (C < kMinWidth) are read k at a time as one row of
//           width L = k * C with per-column coefficients repeated k times, so inner loops stay
//           long enough to vectorize.
//
// Statistics: one pass over memory. Each cache-sized block (kBlock values, or kBlock / L rows)
// is reduced exactly in two passes while it is in cache (sum, then squared deviations from the
// block mean), and blocks are merged with Chan et al.'s parallel formula into per-thread (mean,
// m2, count), which merge the same way, in a fixed order. This is Welford's algorithm applied
// per block instead of per value: the same single pass over memory, with a handful of
// operations per block instead of a division chain per value. The values are shifted by the
// first value K of their channel (x - K): the merge carries the rounding of block means
// linearly, and means near 0 round finely, so float32 statistics stay as accurate as a global
// two-pass even for data far from 0 (tests/test_kernels.py checks it).
//
// Precision: float16/bfloat16 are read into float32 and every accumulation is in float32 (double
// for double). The fused activation is recomputed in backward from x with the same inline
// function as in forward (z = fma(x, scale, shift)), so the mask is bitwise the forward's.
#include "bn_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <mutex>
#include <new>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>
#ifdef __AVX__
#include <immintrin.h>
#endif
#include <cstdlib>
#ifdef __linux__
#include <sys/mman.h>
#endif

namespace bnlab {
namespace {

// _Pragma, not #pragma: some loops sit inside AT_DISPATCH macro arguments.
#define BNLAB_SIMD _Pragma("omp simd")

constexpr int64_t kGrain = 1 << 15;  // values per thread; below 2 * kGrain one thread does it
constexpr int64_t kBlock = 1 << 14;  // values per cache-resident block (64 KiB of float32)
constexpr int64_t kMinWidth = 64;    // rows narrower than this are grouped k at a time
constexpr int64_t kStreamBytes = int64_t(16) << 20;  // outputs at least this large bypass caches

struct Geom {
  bool rows;      // see the file comment
  int64_t C;      // channels
  int64_t S;      // planes: values per (n, c) plane
  int64_t numel;
  int64_t count;  // values per channel, m
  int64_t k;      // rows: rows read as one (L = k * C)
  at::MemoryFormat format;  // of x, dy and every full-size output
};

bool is_channels_last(const Tensor& x) {
  return (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
         (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d));
}

Geom geom(const Tensor& x) {
  TORCH_CHECK(x.dim() >= 2, "bnlab: expected an (N, C, *) tensor, got ", x.dim(), " dims");
  TORCH_CHECK(x.device().is_cpu(), "bnlab: the C++ kernels take CPU tensors, got ", x.device());
  TORCH_CHECK(x.numel() > 0, "bnlab: the compiled kernels need a non-empty input");
  Geom g;
  g.C = x.size(1);
  g.numel = x.numel();
  g.count = g.numel / g.C;
  g.S = g.count / x.size(0);
  g.format = at::MemoryFormat::Contiguous;
  if (x.is_contiguous()) {
    g.rows = x.dim() == 2 || g.S == 1;
  } else {
    TORCH_CHECK(is_channels_last(x), "bnlab: the compiled kernels need a contiguous or "
                "channels_last input; the dispatcher sends other strides to the torch path");
    g.rows = true;
    g.format = x.dim() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d;
  }
  g.k = g.rows && g.C < kMinWidth ? (kMinWidth + g.C - 1) / g.C : 1;
  return g;
}

// ---- memory for full-size outputs (y, dx) -----------------------------------------------------
//
// A fresh output is memory the OS must fault in and zero page by page before the kernel writes
// it, and whether an allocation is fresh is the allocator's lottery: glibc and jemalloc give
// multi-MB blocks back to the OS and map them again depending on thresholds that move with the
// allocation history. Measured on the 2-core VM (bench/bench_bn.py prints page faults per
// call): a (64, 64, 56, 56) batch norm faulted in 51 MB per call (62 ms of a 75 ms call with
// 4 KiB pages, 13 ms with 2 MiB pages); a (32, 256, 14, 14) channels_last forward+backward took
// 2.7 ms or 14 ms in the same benchmark depending on whether its 6.4 MB outputs were fresh.
//
// So outputs of kCacheMin bytes and more are blocks of 2 MiB multiples, 2 MiB-aligned and in
// transparent huge pages where the OS has them, and a freed block goes to a small cache that
// the next output of the same block size takes (a training loop asks for the same sizes every
// step): the faulting and zeroing happen once. The cache holds at most its limit (default
// 256 MiB; BNLAB_OUTPUT_CACHE_MB, or bnlab.kernels.set_output_cache_limit, 0 = off), least
// recently freed blocks first out. Written by hand: torch's CPU allocator caches nothing, and
// a process-wide malloc (jemalloc, tcmalloc) is the user's choice, not a library's.
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kCacheMin = size_t(1) << 20;
// With the cache off, outputs this large still get huge pages (freed at once): 2 MiB pages
// fault in at a fifth of the cost, and glibc maps blocks this large afresh anyway (its largest
// dynamic mmap threshold); smaller ones come from torch's allocator, which reuses heap blocks.
constexpr size_t kHugeOutput = size_t(32) << 20;

struct Block {
  void* p;
  size_t size;
};

class OutputCache {
 public:
  static OutputCache& get() {
    static OutputCache* cache = new OutputCache();  // never destroyed: tensors may outlive exit
    return *cache;
  }

  bool enabled() {
    std::lock_guard<std::mutex> lock(mu_);
    return limit_ > 0;
  }

  void* take(size_t size) {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = free_.size(); i-- > 0;) {  // the most recently freed first
      if (free_[i].size == size) {
        void* p = free_[i].p;
        bytes_ -= size;
        free_.erase(free_.begin() + i);
        return p;
      }
    }
    return nullptr;
  }

  void give(void* p, size_t size) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      free_.push_back({p, size});
      bytes_ += size;
      trim(drop);
    }
    for (void* q : drop) std::free(q);
  }

  // Sets the limit; returns the previous one. Blocks beyond it are freed now.
  int64_t set_limit(int64_t bytes) {
    std::vector<void*> drop;
    int64_t previous;
    {
      std::lock_guard<std::mutex> lock(mu_);
      previous = int64_t(limit_);
      limit_ = size_t(std::max<int64_t>(0, bytes));
      trim(drop);
    }
    for (void* q : drop) std::free(q);
    return previous;
  }

  int64_t bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return int64_t(bytes_);
  }

 private:
  void trim(std::vector<void*>& drop) {  // the least recently freed go first
    size_t n = 0, kept = bytes_;
    while (n < free_.size() && kept > limit_) kept -= free_[n++].size;
    for (size_t i = 0; i < n; ++i) drop.push_back(free_[i].p);
    free_.erase(free_.begin(), free_.begin() + n);
    bytes_ = kept;
  }

  std::mutex mu_;
  std::vector<Block> free_;
  size_t bytes_ = 0;
  size_t limit_ = size_t(256) << 20;
};

struct CachingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    if (n == 0) return c10::GetCPUAllocator()->allocate(0);  // a storage resized to nothing
    const size_t size = (n + kHugePage - 1) / kHugePage * kHugePage;
    void* p = OutputCache::get().take(size);
    if (p == nullptr) {
      if (posix_memalign(&p, kHugePage, size) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
      madvise(p, size, MADV_HUGEPAGE);  // a hint: ignored where THP is off
#endif
    }
    return {p, new Block{p, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }
  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    OutputCache::get().give(block->p, block->size);
    delete block;
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

// A tensor like x (same sizes and strides: x is dense here) for a kernel's full-size output.
Tensor empty_output(const Tensor& x) {
  const size_t bytes = size_t(x.numel()) * x.element_size();
  if (bytes >= kHugeOutput || (bytes >= kCacheMin && OutputCache::get().enabled())) {
    static CachingAllocator allocator;
    return at::detail::empty_strided_generic(x.sizes(), x.strides(), &allocator,
                                             c10::DispatchKeySet(c10::DispatchKey::CPU),
                                             x.scalar_type());
  }
  return at::empty_like(x);
}

// dy in x's layout (autograd may hand over an expanded or differently strided gradient).
Tensor like_x(const Tensor& t, const Tensor& x, const Geom& g) {
  Tensor out = t.scalar_type() == x.scalar_type() ? t : t.to(x.scalar_type());
  return out.is_contiguous(g.format) ? out : out.contiguous(g.format);
}

at::ScalarType stat_type(const Tensor& x) {
  auto t = x.scalar_type();
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// A (C,) parameter as a contiguous tensor of the statistics dtype (no copy when it is one).
Tensor per_channel(const Tensor& t, at::ScalarType dtype) {
  Tensor out = t.scalar_type() == dtype ? t : t.to(dtype);
  return out.is_contiguous() ? out : out.contiguous();
}

int64_t num_chunks(int64_t work, int64_t units) {
  int64_t n = std::min<int64_t>(at::get_num_threads(), work / kGrain);
  return std::max<int64_t>(1, std::min(n, units));
}

// Runs f(chunk) for chunk in [0, n), in parallel; f writes only its own chunk's state.
template <class F>
void for_chunks(int64_t n, const F& f) {
  if (n == 1) {
    f(0);
    return;
  }
  at::parallel_for(0, n, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f(i);
  });
}

// Calls f(i, len, j) over [0, numel) in pieces that lie in one plane (planes: j = channel) or
// in one grouped row (rows: j = column of the piece's first value), in parallel.
template <class F>
void for_each_piece(const Geom& g, const F& f) {
  const int64_t period = g.rows ? g.k * g.C : g.S;
  at::parallel_for(0, g.numel, kGrain, [&](int64_t begin, int64_t end) {
    const int64_t p = begin / period;  // divisions once per chunk, not per piece
    int64_t off = begin - p * period, c = g.rows ? 0 : p % g.C;
    for (int64_t i = begin; i < end;) {
      const int64_t len = std::min(period - off, end - i);
      f(i, len, g.rows ? off : c);
      i += len;
      off = 0;
      if (++c == g.C) c = 0;
    }
#ifdef __AVX__
    _mm_sfence();  // order this thread's non-temporal stores (write_piece) before the join
#endif
  });
}

// out[t] = f(t) for t in [0, len). With `stream` (float32 outputs larger than the caches), by
// non-temporal stores: a plain store first reads the line it writes (write-allocate), one more
// pass over memory than the output needs; y and dx are not read again here.
template <class T, class F>
inline void write_piece(T* out, int64_t len, bool stream, const F& f) {
#ifdef __AVX__
  if constexpr (std::is_same_v<T, float>) {
    if (stream) {
      int64_t t = 0;
      for (; t < len && (reinterpret_cast<std::uintptr_t>(out + t) & 31) != 0; ++t) out[t] = f(t);
      for (; t + 8 <= len; t += 8) {
        alignas(32) float v[8];
        BNLAB_SIMD
        for (int64_t jj = 0; jj < 8; ++jj) v[jj] = f(t + jj);
        _mm256_stream_ps(out + t, _mm256_load_ps(v));
      }
      for (; t < len; ++t) out[t] = f(t);
      return;
    }
  }
#endif
  BNLAB_SIMD
  for (int64_t t = 0; t < len; ++t) out[t] = f(t);
}

template <class A>
inline A affine(A x, A scale, A shift) {
#ifdef __FMA__
  return std::fma(x, scale, shift);  // one rounding, and the same in forward and backward
#else
  return x * scale + shift;
#endif
}

// ReLU and leaky ReLU are one variant (fewer instantiations, a shorter first compile): the
// rectifier with a runtime slope, where slope 0 selects an exact 0 (ReLU of -inf is 0, not NaN).
// Both arms are computed, then selected: the form GCC turns into vector blends.
template <class A>
struct Slope {
  A value;
  bool zero;
  explicit Slope(double s) : value(A(s)), zero(s == 0.0) {}
};

template <bool RECT, class A>
inline A act(A z, const Slope<A>& s) {
  if constexpr (RECT) {
    A neg = z * s.value;
    neg = s.zero ? A(0) : neg;
    return z < A(0) ? neg : z;  // NaN passes through, as in torch.relu
  } else {
    return z;
  }
}

// dz = dy * act'(z), with act'(0) = slope as torch's threshold_backward and leaky_relu_backward.
template <bool RECT, class A>
inline A act_grad(A z, A dy, const Slope<A>& s) {
  if constexpr (RECT) {
    A neg = dy * s.value;
    neg = s.zero ? A(0) : neg;
    return z > A(0) ? dy : neg;
  } else {
    return dy;
  }
}

template <class F>
void dispatch_act(int64_t a, const F& f) {
  TORCH_CHECK(a == kIdentity || a == kRelu || a == kLeakyRelu, "bnlab: unknown activation ", a);
  if (a == kIdentity) {
    f(std::false_type());
  } else {
    f(std::true_type());
  }
}

// (mA, qA, nA) += (mB, qB, nB): Chan, Golub & LeVeque's update of mean and sum of squared
// deviations for the union of two disjoint sets.
template <class A>
inline void chan_merge(A& mA, A& qA, int64_t nA, A mB, A qB, int64_t nB) {
  const int64_t n = nA + nB;
  const A d = mB - mA;
  mA += d * (A(nB) / A(n));
  qA += qB + d * d * (A(nA) * A(nB) / A(n));
}

// Per-column coefficients repeated k times (rows), or as they are (planes).
template <class A>
std::vector<A> repeat(const A* v, const Geom& g) {
  const int64_t width = g.rows ? g.k * g.C : g.C;
  std::vector<A> out(width);
  for (int64_t j = 0; j < width; j += g.C) std::copy(v, v + g.C, out.begin() + j);
  return out;
}

// In-cache reductions keep kStrip<A> partial sums in registers (4 vectors of 256 bits) while
// they walk rows, instead of a running sum in memory per column (a store per value).
template <class A>
constexpr int64_t kStrip = 128 / sizeof(A);

// Sum of f(t) for t in [0, len), kStrip<A> partial sums at a time (latency of the adds hidden).
template <class A, class F>
inline A strip_sum(int64_t len, const F& f) {
  constexpr int64_t W = kStrip<A>;
  A acc[W] = {};
  int64_t t = 0;
  for (; t + W <= len; t += W) {
    BNLAB_SIMD
    for (int64_t jj = 0; jj < W; ++jj) acc[jj] += f(t + jj);
  }
  const int64_t rest = len - t;  // the tail into the same partial sums, still vectorized
  BNLAB_SIMD
  for (int64_t jj = 0; jj < rest; ++jj) acc[jj] += f(t + jj);
  A total = 0;
  for (int64_t jj = 0; jj < W; ++jj) total += acc[jj];
  return total;
}

// ---- statistics -----------------------------------------------------------------------------

template <class T, class A>
void stats_planes(const T* x, const Geom& g, A* mean, A* m2) {
  const int64_t C = g.C;
  std::vector<A> shift(C);  // the first value of each channel (see stats())
  for (int64_t c = 0; c < C; ++c) shift[c] = A(x[c * g.S]);
  const int64_t nch = num_chunks(g.numel, g.numel);
  std::vector<A> cm(nch * C, A(0)), cq(nch * C, A(0));
  std::vector<int64_t> cn(nch * C, 0);
  for_chunks(nch, [&](int64_t ch) {
    const int64_t begin = g.numel * ch / nch, end = g.numel * (ch + 1) / nch;
    A* m = cm.data() + ch * C;
    A* q = cq.data() + ch * C;
    int64_t* n = cn.data() + ch * C;
    for (int64_t i = begin; i < end;) {
      const int64_t p = i / g.S, off = i - p * g.S;
      const int64_t len = std::min({g.S - off, end - i, kBlock});
      const int64_t c = p % C;
      const T* xp = x + i;
      const A K = shift[c];
      const A bm = strip_sum<A>(len, [&](int64_t t) { return A(xp[t]) - K; }) / A(len);
      const A bq = strip_sum<A>(len, [&](int64_t t) {
        const A d = (A(xp[t]) - K) - bm;
        return d * d;
      });
      if (n[c] == 0) {
        m[c] = bm;
        q[c] = bq;
      } else {
        chan_merge(m[c], q[c], n[c], bm, bq, len);
      }
      n[c] += len;
      i += len;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    A m = 0, q = 0;
    int64_t n = 0;
    for (int64_t ch = 0; ch < nch; ++ch) {
      const int64_t nb = cn[ch * C + c];
      if (nb == 0) continue;
      if (n == 0) {
        m = cm[ch * C + c];
        q = cq[ch * C + c];
      } else {
        chan_merge(m, q, n, cm[ch * C + c], cq[ch * C + c], nb);
      }
      n += nb;
    }
    mean[c] = shift[c] + m;
    m2[c] = q;
  }
}

// Merges `rows` rows of width `w` (stride w), less `shift`, into (m, q) of count n: two passes
// in cache.
template <class T, class A>
void merge_row_block(const T* x, int64_t rows, int64_t w, const A* shift, A* m, A* q, int64_t n,
                     A* bm, A* bq) {
  constexpr int64_t W = kStrip<A>;
  const A inv_rows = A(1) / A(rows);
  int64_t j0 = 0;
  for (; j0 + W <= w; j0 += W) {  // strips of W columns, partial sums in registers
    const A* k = shift + j0;
    A acc[W] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * w + j0;
      BNLAB_SIMD
      for (int64_t jj = 0; jj < W; ++jj) acc[jj] += A(xr[jj]) - k[jj];
    }
    A mb[W], qb[W] = {};
    BNLAB_SIMD
    for (int64_t jj = 0; jj < W; ++jj) mb[jj] = acc[jj] * inv_rows;
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * w + j0;
      BNLAB_SIMD
      for (int64_t jj = 0; jj < W; ++jj) {
        const A d = (A(xr[jj]) - k[jj]) - mb[jj];
        qb[jj] += d * d;
      }
    }
    std::copy(mb, mb + W, bm + j0);
    std::copy(qb, qb + W, bq + j0);
  }
  if (j0 < w) {  // the last columns: partial sums in memory
    std::fill(bm + j0, bm + w, A(0));
    std::fill(bq + j0, bq + w, A(0));
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * w;
      BNLAB_SIMD
      for (int64_t j = j0; j < w; ++j) bm[j] += A(xr[j]) - shift[j];
    }
    BNLAB_SIMD
    for (int64_t j = j0; j < w; ++j) bm[j] *= inv_rows;
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * w;
      BNLAB_SIMD
      for (int64_t j = j0; j < w; ++j) {
        const A d = (A(xr[j]) - shift[j]) - bm[j];
        bq[j] += d * d;
      }
    }
  }
  if (n == 0) {
    std::copy(bm, bm + w, m);
    std::copy(bq, bq + w, q);
    return;
  }
  const A fb = A(rows) / A(n + rows), fab = A(n) * A(rows) / A(n + rows);
  BNLAB_SIMD
  for (int64_t j = 0; j < w; ++j) {
    const A d = bm[j] - m[j];
    m[j] += d * fb;
    q[j] += bq[j] + d * d * fab;
  }
}

template <class T, class A>
void stats_rows(const T* x, const Geom& g, A* mean, A* m2) {
  const int64_t C = g.C, k = g.k, L = k * C;
  const int64_t Ms = g.count / k;             // grouped rows
  const int64_t tail = g.count - Ms * k;      // rows left over at the end
  const int64_t rb = std::max<int64_t>(4, kBlock / L);
  const int64_t nch = Ms > 0 ? num_chunks(Ms * L, Ms) : 0;
  std::vector<A> first(C);  // the first row (see stats())
  for (int64_t c = 0; c < C; ++c) first[c] = A(x[c]);
  const std::vector<A> shift = repeat(first.data(), g);
  std::vector<A> cm(nch * C), cq(nch * C);
  std::vector<int64_t> cn(nch, 0);
  for_chunks(std::max<int64_t>(nch, 1), [&](int64_t ch) {
    if (nch == 0) return;
    const int64_t r0 = Ms * ch / nch, r1 = Ms * (ch + 1) / nch;
    std::vector<A> m(L), q(L), bm(L), bq(L);
    int64_t n = 0;
    for (int64_t r = r0; r < r1; r += rb) {
      const int64_t rows = std::min(rb, r1 - r);
      merge_row_block(x + r * L, rows, L, shift.data(), m.data(), q.data(), n, bm.data(),
                      bq.data());
      n += rows;
    }
    // fold the k column groups: group i holds rows i, i + k, ... of channel c at column i*C + c
    for (int64_t i = 1; i < k; ++i)
      for (int64_t c = 0; c < C; ++c) chan_merge(m[c], q[c], i * n, m[i * C + c], q[i * C + c], n);
    std::copy(m.begin(), m.begin() + C, cm.begin() + ch * C);
    std::copy(q.begin(), q.begin() + C, cq.begin() + ch * C);
    cn[ch] = n * k;
  });
  std::vector<A> m(C, A(0)), q(C, A(0)), bm(C), bq(C);
  int64_t n = 0;
  for (int64_t ch = 0; ch < nch; ++ch) {
    for (int64_t c = 0; c < C; ++c) {
      if (n == 0) {
        m[c] = cm[ch * C + c];
        q[c] = cq[ch * C + c];
      } else {
        chan_merge(m[c], q[c], n, cm[ch * C + c], cq[ch * C + c], cn[ch]);
      }
    }
    n += cn[ch];
  }
  if (tail > 0)
    merge_row_block(x + Ms * L, tail, C, shift.data(), m.data(), q.data(), n, bm.data(), bq.data());
  for (int64_t c = 0; c < C; ++c) mean[c] = first[c] + m[c];
  std::copy(q.begin(), q.end(), m2);
}

// ---- backward sums: sum dz and sum dz * (x - mean) ------------------------------------------

template <bool ACT, class T, class A>
void reduce_planes(const T* dy, const T* x, const Geom& g, const A* mean, const A* scale,
                   const A* shift, const Slope<A>& slope, A* s0, A* s1) {
  const int64_t C = g.C;
  const int64_t nch = num_chunks(g.numel, g.numel);
  std::vector<A> c0(nch * C, A(0)), c1(nch * C, A(0));
  for_chunks(nch, [&](int64_t ch) {
    const int64_t begin = g.numel * ch / nch, end = g.numel * (ch + 1) / nch;
    for (int64_t i = begin; i < end;) {
      const int64_t p = i / g.S, off = i - p * g.S;
      const int64_t len = std::min({g.S - off, end - i, kBlock});
      const int64_t c = p % C;
      const A mu = mean[c], sc = scale[c], sh = shift[c];
      const T* xp = x + i;
      const T* dp = dy + i;
      constexpr int64_t W = kStrip<A>;  // two sums: 8 vectors of partial sums
      A p0[W] = {}, p1[W] = {};
      int64_t t = 0;
      for (; t + W <= len; t += W) {
        BNLAB_SIMD
        for (int64_t jj = 0; jj < W; ++jj) {
          const A xv = A(xp[t + jj]);
          const A dz = act_grad<ACT>(affine(xv, sc, sh), A(dp[t + jj]), slope);
          p0[jj] += dz;
          p1[jj] += dz * (xv - mu);
        }
      }
      const int64_t rest = len - t;  // the tail into the same partial sums
      BNLAB_SIMD
      for (int64_t jj = 0; jj < rest; ++jj) {
        const A xv = A(xp[t + jj]);
        const A dz = act_grad<ACT>(affine(xv, sc, sh), A(dp[t + jj]), slope);
        p0[jj] += dz;
        p1[jj] += dz * (xv - mu);
      }
      A a0 = 0, a1 = 0;
      for (int64_t jj = 0; jj < W; ++jj) {
        a0 += p0[jj];
        a1 += p1[jj];
      }
      c0[ch * C + c] += a0;
      c1[ch * C + c] += a1;
      i += len;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    A a0 = 0, a1 = 0;
    for (int64_t ch = 0; ch < nch; ++ch) {
      a0 += c0[ch * C + c];
      a1 += c1[ch * C + c];
    }
    s0[c] = a0;
    s1[c] = a1;
  }
}

// Adds the sums of `rows` rows of width w into (s0, s1) through a block partial (two-level
// summation: no running float32 sum over hundreds of thousands of rows).
template <bool ACT, class T, class A>
void reduce_row_block(const T* dy, const T* x, int64_t rows, int64_t w, const A* mu,
                      const A* sc, const A* sh, const Slope<A>& slope, A* s0, A* s1, A* b0, A* b1) {
  // two sums of W columns, plus the W means (and scale and shift with an activation), must fit
  // the 16 vector registers
  constexpr int64_t W = ACT ? kStrip<A> / 2 : kStrip<A>;
  int64_t j0 = 0;
  for (; j0 + W <= w; j0 += W) {  // strips of W columns, partial sums in registers
    A p0[W] = {}, p1[W] = {};
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * w + j0;
      const T* dr = dy + r * w + j0;
      BNLAB_SIMD
      for (int64_t jj = 0; jj < W; ++jj) {
        const A xv = A(xr[jj]);
        const A dz = act_grad<ACT>(affine(xv, sc[j0 + jj], sh[j0 + jj]), A(dr[jj]), slope);
        p0[jj] += dz;
        p1[jj] += dz * (xv - mu[j0 + jj]);
      }
    }
    BNLAB_SIMD
    for (int64_t jj = 0; jj < W; ++jj) {
      s0[j0 + jj] += p0[jj];
      s1[j0 + jj] += p1[jj];
    }
  }
  if (j0 == w) return;
  std::fill(b0 + j0, b0 + w, A(0));  // the last columns: partial sums in memory
  std::fill(b1 + j0, b1 + w, A(0));
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * w;
    const T* dr = dy + r * w;
    BNLAB_SIMD
    for (int64_t j = j0; j < w; ++j) {
      const A xv = A(xr[j]);
      const A dz = act_grad<ACT>(affine(xv, sc[j], sh[j]), A(dr[j]), slope);
      b0[j] += dz;
      b1[j] += dz * (xv - mu[j]);
    }
  }
  BNLAB_SIMD
  for (int64_t j = j0; j < w; ++j) {
    s0[j] += b0[j];
    s1[j] += b1[j];
  }
}

template <bool ACT, class T, class A>
void reduce_rows(const T* dy, const T* x, const Geom& g, const A* mean, const A* scale,
                 const A* shift, const Slope<A>& slope, A* s0, A* s1) {
  const int64_t C = g.C, k = g.k, L = k * C;
  const int64_t Ms = g.count / k, tail = g.count - Ms * k;
  const int64_t rb = std::max<int64_t>(4, kBlock / L);
  const int64_t nch = Ms > 0 ? num_chunks(Ms * L, Ms) : 0;
  const std::vector<A> mu = repeat(mean, g), sc = repeat(scale, g), sh = repeat(shift, g);
  std::vector<A> c0(nch * L, A(0)), c1(nch * L, A(0));
  for_chunks(std::max<int64_t>(nch, 1), [&](int64_t ch) {
    if (nch == 0) return;
    const int64_t r0 = Ms * ch / nch, r1 = Ms * (ch + 1) / nch;
    std::vector<A> b0(L), b1(L);
    for (int64_t r = r0; r < r1; r += rb) {
      const int64_t rows = std::min(rb, r1 - r);
      reduce_row_block<ACT>(dy + r * L, x + r * L, rows, L, mu.data(), sc.data(), sh.data(),
                            slope, c0.data() + ch * L, c1.data() + ch * L, b0.data(),
                            b1.data());
    }
  });
  std::vector<A> a0(C, A(0)), a1(C, A(0)), b0(C), b1(C);
  for (int64_t ch = 0; ch < nch; ++ch)
    for (int64_t j = 0; j < L; ++j) {
      a0[j % C] += c0[ch * L + j];
      a1[j % C] += c1[ch * L + j];
    }
  if (tail > 0)
    reduce_row_block<ACT>(dy + Ms * L, x + Ms * L, tail, C, mu.data(), sc.data(), sh.data(),
                          slope, a0.data(), a1.data(), b0.data(), b1.data());
  std::copy(a0.begin(), a0.end(), s0);
  std::copy(a1.begin(), a1.end(), s1);
}

// ---- per-channel coefficients ---------------------------------------------------------------

// The (C,) inputs of a kernel as contiguous tensors of the statistics dtype (no copy when they
// are already); weight and bias undefined when absent.
struct Channels {
  Tensor mean, inv_std, weight, bias;
  int64_t C;
};

Channels channels(const Tensor& x, const Tensor& mean, const Tensor& inv_std,
                  const OptTensor& weight, const OptTensor& bias) {
  const auto dtype = stat_type(x);
  TORCH_CHECK(mean.scalar_type() == dtype && inv_std.scalar_type() == dtype,
              "bnlab: mean and inv_std must be ", dtype, " for a ", x.scalar_type(), " input");
  TORCH_CHECK(mean.numel() == x.size(1) && inv_std.numel() == x.size(1),
              "bnlab: mean and inv_std must have one value per channel");
  return {per_channel(mean, dtype), per_channel(inv_std, dtype),
          weight ? per_channel(*weight, dtype) : Tensor(),
          bias ? per_channel(*bias, dtype) : Tensor(), x.size(1)};
}

template <class A>
const A* ptr(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<A>() : nullptr;
}

// scale = gamma * inv_std, shift = beta - mean * scale: z = x * scale + shift.
template <class A>
void affine_coefficients(const Channels& ch, std::vector<A>& scale, std::vector<A>& shift) {
  const A *mu = ptr<A>(ch.mean), *is = ptr<A>(ch.inv_std), *w = ptr<A>(ch.weight),
          *b = ptr<A>(ch.bias);
  scale.resize(ch.C);
  shift.resize(ch.C);
  for (int64_t c = 0; c < ch.C; ++c) {
    scale[c] = w ? w[c] * is[c] : is[c];
    shift[c] = (b ? b[c] : A(0)) - mu[c] * scale[c];
  }
}

}  // namespace

// ---- stages ---------------------------------------------------------------------------------

std::tuple<Tensor, Tensor> stats(const Tensor& x) {
  const Geom g = geom(x);
  const auto opts = x.options().dtype(stat_type(x));
  Tensor mean = at::empty({g.C}, opts), m2 = at::empty({g.C}, opts);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bnlab_stats", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    if (g.rows) {
      stats_rows(xp, g, mean.data_ptr<A>(), m2.data_ptr<A>());
    } else {
      stats_planes(xp, g, mean.data_ptr<A>(), m2.data_ptr<A>());
    }
  });
  return {mean, m2};
}

Tensor elemt(const Tensor& x, const Tensor& mean, const Tensor& inv_std, const OptTensor& weight,
             const OptTensor& bias, int64_t act_code, double slope) {
  const Geom g = geom(x);
  const Channels ch = channels(x, mean, inv_std, weight, bias);
  Tensor y = empty_output(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bnlab_elemt", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    std::vector<A> scale, shift;
    affine_coefficients(ch, scale, shift);
    const std::vector<A> sc = repeat(scale.data(), g), sh = repeat(shift.data(), g);
    const bool stream = g.numel * int64_t(sizeof(scalar_t)) >= kStreamBytes;
    const Slope<A> sl(slope);
    dispatch_act(act_code, [&](auto a) {
      constexpr bool ACT = decltype(a)::value;
      for_each_piece(g, [&](int64_t i, int64_t len, int64_t j) {
        const scalar_t* xi = xp + i;
        scalar_t* yi = yp + i;
        if (g.rows) {
          const A* s = sc.data() + j;
          const A* h = sh.data() + j;
          write_piece(yi, len, stream, [&](int64_t t) {
            return scalar_t(act<ACT>(affine(A(xi[t]), s[t], h[t]), sl));
          });
        } else {
          const A s = sc[j], h = sh[j];
          write_piece(yi, len, stream, [&](int64_t t) {
            return scalar_t(act<ACT>(affine(A(xi[t]), s, h), sl));
          });
        }
      });
    });
  });
  return y;
}

std::tuple<Tensor, Tensor> backward_reduce(const Tensor& dy_in, const Tensor& x,
                                           const Tensor& mean, const Tensor& inv_std,
                                           const OptTensor& weight, const OptTensor& bias,
                                           int64_t act_code, double slope) {
  const Geom g = geom(x);
  const Channels ch = channels(x, mean, inv_std, weight, bias);
  const Tensor dy = like_x(dy_in, x, g);
  Tensor s0 = at::empty({g.C}, ch.mean.options()), s1 = at::empty({g.C}, ch.mean.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bnlab_reduce", [&] {
    using A = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* dp = dy.const_data_ptr<scalar_t>();
    const A* mu = ptr<A>(ch.mean);
    std::vector<A> scale(g.C, A(0)), shift(g.C, A(0));  // z, for act'(z)
    if (act_code != kIdentity) affine_coefficients(ch, scale, shift);
    const A* sc = scale.data();
    const A* sh = shift.data();
    A* p0 = s0.data_ptr<A>();
    A* p1 = s1.data_ptr<A>();
    dispatch_act(act_code, [&](auto a) {
      constexpr bool ACT = decltype(a)::value;
      if (g.rows) {
        reduce_rows<ACT>(dp, xp, g, mu, sc, sh, Slope<A>(slope), p0, p1);
      } else {
        reduce_planes<ACT>(dp, xp, g, mu, sc, sh, Slope<A>(slope), p0, p1);
      }
    });
    const A* is = ptr<A>(ch.inv_std);
    for (int64_t c = 0; c < g.C; ++c) p1[c] *= is[c];  // sum dz * x_hat
  });
  return {s0, s1};
}

// With a = gamma * inv_std, S0 = sum dz, S1 = sum dz * x_hat over all m values of a channel:
//   dx = a / m * (m * dz - S0 - x_hat * S1) = a * dz + b * x + c,
//   b = -a * inv_std * S1 / m,  c = -a * S0 / m - b * mean.
// STATS = false is evaluation mode (fixed statistics): dx = a * dz.
template <bool STATS>
Tensor backward_elemt_impl(const Tensor& dy_in, const Tensor& x, const Tensor& mean,
                           const Tensor& inv_std, const OptTensor& weight, const Tensor& sum_dy,
                           const Tensor& sum_dy_xhat, int64_t count, const OptTensor& bias,
                           int64_t act_code, double slope) {
  const Geom g = geom(x);
  const Channels ch = channels(x, mean, inv_std, weight, bias);
  const Tensor dy = like_x(dy_in, x, g);
  const int64_t C = g.C;
  Tensor dx = empty_output(x);
  Tensor s0 = STATS ? per_channel(sum_dy, ch.mean.scalar_type()) : Tensor();
  Tensor s1 = STATS ? per_channel(sum_dy_xhat, ch.mean.scalar_type()) : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bnlab_bwd", [&] {
    using A = at::opmath_type<scalar_t>;
    const A *mu = ptr<A>(ch.mean), *is = ptr<A>(ch.inv_std), *wp = ptr<A>(ch.weight);
    const A *p0 = ptr<A>(s0), *p1 = ptr<A>(s1);
    std::vector<A> ca(C), cb(C, A(0)), cc(C, A(0));
    const A neg_inv_m = A(-1) / A(std::max<int64_t>(count, 1));
    for (int64_t c = 0; c < C; ++c) {
      ca[c] = wp ? wp[c] * is[c] : is[c];
      if constexpr (STATS) {
        cb[c] = ca[c] * p1[c] * is[c] * neg_inv_m;
        cc[c] = ca[c] * p0[c] * neg_inv_m - cb[c] * mu[c];
      }
    }
    const std::vector<A> ra = repeat(ca.data(), g), rb = repeat(cb.data(), g),
                         rc = repeat(cc.data(), g);
    std::vector<A> scale(C, A(0)), shift(C, A(0));  // z, for act'(z)
    if (act_code != kIdentity) affine_coefficients(ch, scale, shift);
    const std::vector<A> rsc = repeat(scale.data(), g), rsh = repeat(shift.data(), g);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* dp = dy.const_data_ptr<scalar_t>();
    scalar_t* op = dx.data_ptr<scalar_t>();
    const bool stream = g.numel * int64_t(sizeof(scalar_t)) >= kStreamBytes;
    const Slope<A> sl(slope);
    dispatch_act(act_code, [&](auto a) {
      constexpr bool ACT = decltype(a)::value;
      constexpr bool READ_X = STATS || ACT;
      for_each_piece(g, [&](int64_t i, int64_t len, int64_t j) {
        const scalar_t* xi = xp + i;
        const scalar_t* di = dp + i;
        scalar_t* oi = op + i;
        if (g.rows) {
          const A *pa = ra.data() + j, *pb = rb.data() + j, *pc = rc.data() + j;
          const A *ps = rsc.data() + j, *ph = rsh.data() + j;
          write_piece(oi, len, stream, [&](int64_t t) {
            if constexpr (READ_X) {
              const A xv = A(xi[t]);
              const A dz = act_grad<ACT>(affine(xv, ps[t], ph[t]), A(di[t]), sl);
              return scalar_t(STATS ? pa[t] * dz + pb[t] * xv + pc[t] : pa[t] * dz);
            } else {
              return scalar_t(pa[t] * A(di[t]));
            }
          });
        } else {
          const A va = ra[j], vb = rb[j], vc = rc[j], vs = rsc[j], vh = rsh[j];
          write_piece(oi, len, stream, [&](int64_t t) {
            if constexpr (READ_X) {
              const A xv = A(xi[t]);
              const A dz = act_grad<ACT>(affine(xv, vs, vh), A(di[t]), sl);
              return scalar_t(STATS ? va * dz + vb * xv + vc : va * dz);
            } else {
              return scalar_t(va * A(di[t]));
            }
          });
        }
      });
    });
  });
  return dx;
}

Tensor backward_elemt(const Tensor& dy, const Tensor& x, const Tensor& mean,
                      const Tensor& inv_std, const OptTensor& weight, const Tensor& sum_dy,
                      const Tensor& sum_dy_xhat, int64_t count, const OptTensor& bias,
                      int64_t act, double slope) {
  return backward_elemt_impl<true>(dy, x, mean, inv_std, weight, sum_dy, sum_dy_xhat, count,
                                   bias, act, slope);
}

// ---- one process ----------------------------------------------------------------------------

namespace {

// new = (1 - momentum) * old + momentum * batch, with the unbiased variance in running_var.
template <class A>
void update_running(const OptTensor& rm, const OptTensor& rv, const A* mean, const A* var,
                    int64_t C, int64_t count, double momentum) {
  const double unbias = double(count) / double(std::max<int64_t>(count - 1, 1));
  for (const auto& [buf, src, alpha] :
       {std::tuple{&rm, mean, momentum}, std::tuple{&rv, var, momentum * unbias}}) {
    if (!buf->has_value()) continue;
    Tensor r = buf->value();
    if (r.scalar_type() == c10::CppTypeToScalarType<A>::value && r.is_contiguous()) {
      A* p = r.data_ptr<A>();
      const A keep = A(1.0 - momentum), a = A(alpha);
      for (int64_t c = 0; c < C; ++c) p[c] = p[c] * keep + src[c] * a;
    } else {  // another dtype or strides: let ATen convert
      Tensor s = at::empty({C}, r.options().dtype(c10::CppTypeToScalarType<A>::value));
      std::copy(src, src + C, s.data_ptr<A>());
      r.mul_(1.0 - momentum).add_(s.to(r.scalar_type()), alpha);
    }
  }
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& x, const OptTensor& weight,
                                           const OptTensor& bias, const OptTensor& running_mean,
                                           const OptTensor& running_var, bool training,
                                           double momentum, double eps, int64_t act,
                                           double slope) {
  const auto dtype = stat_type(x);
  const int64_t C = x.size(1);
  Tensor mean, inv_std;
  if (training) {
    Tensor m2;
    std::tie(mean, m2) = stats(x);
    inv_std = m2;  // reused in place: var, then inv_std
    const int64_t count = x.numel() / C;
    AT_DISPATCH_FLOATING_TYPES(dtype, "bnlab_finalize", [&] {
      scalar_t* v = inv_std.data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) v[c] /= scalar_t(count);  // biased variance
      update_running(running_mean, running_var, mean.const_data_ptr<scalar_t>(), v, C, count,
                     momentum);
      for (int64_t c = 0; c < C; ++c) v[c] = scalar_t(1) / std::sqrt(v[c] + scalar_t(eps));
    });
  } else {
    TORCH_CHECK(running_mean && running_var, "bnlab: evaluation needs running statistics");
    mean = per_channel(*running_mean, dtype).clone();  // a copy: the buffer may change later
    Tensor rv = per_channel(*running_var, dtype);
    inv_std = at::empty({C}, mean.options());
    AT_DISPATCH_FLOATING_TYPES(dtype, "bnlab_eval_stats", [&] {
      const scalar_t* v = rv.const_data_ptr<scalar_t>();
      scalar_t* o = inv_std.data_ptr<scalar_t>();
      for (int64_t c = 0; c < C; ++c) o[c] = scalar_t(1) / std::sqrt(v[c] + scalar_t(eps));
    });
  }
  Tensor y = elemt(x, mean, inv_std, weight, bias, act, slope);
  return {y, mean, inv_std};
}

std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& dy, const Tensor& x,
                                            const OptTensor& weight, const OptTensor& bias,
                                            const Tensor& mean, const Tensor& inv_std,
                                            bool training, int64_t act, double slope,
                                            std::array<bool, 3> needs) {
  const auto [need_dx, need_dw, need_db] = needs;
  Tensor s0, s1, dx, dw, db;
  if (need_dw || need_db || (training && need_dx)) {
    std::tie(s0, s1) = backward_reduce(dy, x, mean, inv_std, weight, bias, act, slope);
  }
  if (need_dx) {
    const int64_t count = x.numel() / x.size(1);
    dx = training ? backward_elemt_impl<true>(dy, x, mean, inv_std, weight, s0, s1, count, bias,
                                              act, slope)
                  : backward_elemt_impl<false>(dy, x, mean, inv_std, weight, Tensor(), Tensor(),
                                               count, bias, act, slope);
  }
  if (need_dw && weight) dw = s1.to(weight->scalar_type());  // no copy when it is that dtype
  if (need_db && bias) db = s0.to(bias->scalar_type());
  return {dx, dw, db};
}

int64_t set_output_cache_limit(int64_t bytes) { return OutputCache::get().set_limit(bytes); }

int64_t output_cache_bytes() { return OutputCache::get().bytes(); }

}  // namespace bnlab
