// Fused Chebyshev heat-kernel diffusion for CPUs: an XLA FFI custom call.
//
// Computes, for every cell b of a batch and every column of Q,
//   out = passthrough ? Q : (graph ? f(L) (graph * Q) : 0),   f(L) = c0/2 + sum_k c_k T_k(L - I),
// exactly as the pure-JAX `grn_jax.graphs.diffuse` does (same masks, same expansion), but
// in one pass over Q and the output:
//   * the cell's stored Laplacian entries (BCOO: data/rows/cols, duplicates add) are
//     bucketed into CSR by a counting sort, once per cell (zero-valued slots skipped);
//   * Q is processed in column tiles of TW floats, so the three working vectors of the
//     Clenshaw recurrence (q, b1, b2: 3 * S * TW * sizeof(T)) stay in L2 for all K steps;
//   * Clenshaw's recurrence b_k = c_k q + 2 (L - I) b_{k+1} - b_{k+2} (k = K..1),
//     y = c0/2 q + (L - I) b_1 - b_2, updates b_{k+2} in place (row i of the update
//     reads b_{k+2}[i] only), so no vector is copied between steps;
//   * (cell, tile) work items are shared out over XLA's intra-op thread pool; the calling
//     thread takes items too and only waits for items already running, so it never
//     deadlocks on a busy pool.
// Accumulation is in T (float for float32 input, double for float64).
// Why hand-written: XLA:CPU splits the sparse products of an unrolled or looped
// recurrence into one materialised gather per slot, ~10x slower than this loop nest
// (benchmarks/results/diffusion.md); no library provides a batched CSR heat kernel.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include <immintrin.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

template <typename T>
struct CellCsr {
  std::vector<int32_t> ptr;  // [S + 1] row starts of the off-diagonal entries
  std::vector<int32_t> col;  // [nnz]
  std::vector<T> val;        // [nnz]
  std::vector<T> dshift;  // [S]: L_ii - 1 (sum of the stored diagonal entries, minus one)
};

// Counting sort of one cell's off-diagonal COO entries by row; entries with value 0 are
// skipped (masked edge slots), which changes no sum. Diagonal entries go to `dshift`.
template <typename T>
void build_csr(const T* data, const int32_t* rows, const int32_t* cols, int64_t n, int64_t s,
               CellCsr<T>* out) {
  out->ptr.assign(s + 1, 0);
  out->dshift.assign(s, T(-1));
  for (int64_t e = 0; e < n; ++e) {
    if (rows[e] == cols[e]) {
      out->dshift[rows[e]] += data[e];
    } else if (data[e] != T(0)) {
      out->ptr[rows[e] + 1]++;
    }
  }
  for (int64_t i = 0; i < s; ++i) out->ptr[i + 1] += out->ptr[i];
  const int64_t nnz = out->ptr[s];
  out->col.resize(nnz);
  out->val.resize(nnz);
  std::vector<int32_t> fill(out->ptr.begin(), out->ptr.end() - 1);
  for (int64_t e = 0; e < n; ++e) {
    if (rows[e] == cols[e] || data[e] == T(0)) continue;
    const int32_t k = fill[rows[e]]++;
    out->col[k] = cols[e];
    out->val[k] = data[e];
  }
}

// One Clenshaw step over all rows of a tile (row stride `tw`):
//   dst[i] = ck * q[i] + two * ((L - I) src)[i] - dst[i],
//   ((L - I) src)[i] = (L_ii - 1) src[i] + sum_{e in row i} val_e * src[col_e].
// Vectorised over the tile's columns with GCC vector types (64-byte vectors; TW columns
// = NV whole vectors), so each stored entry costs NV loads and NV FMAs on contiguous data.
template <typename T, int TW>
void clenshaw_step_vec(const CellCsr<T>& m, int64_t s, T ck, T two, const T* q, const T* src, T* dst) {
  typedef T V __attribute__((vector_size(64)));
  constexpr int kLanes = 64 / sizeof(T);
  constexpr int kNv = TW / kLanes;
  static_assert(kNv >= 1 && kNv * kLanes == TW, "tile must be whole 64-byte vectors");
  const int32_t* ptr = m.ptr.data();
  const int32_t* col = m.col.data();
  const T* val = m.val.data();
  for (int64_t i = 0; i < s; ++i) {
    V acc[kNv];
    const T dsh = m.dshift[i];
    const T* si = src + i * TW;
    for (int v = 0; v < kNv; ++v) {
      V x;
      std::memcpy(&x, si + v * kLanes, sizeof(V));
      acc[v] = x * dsh;
    }
    for (int32_t e = ptr[i]; e < ptr[i + 1]; ++e) {
      const T w = val[e];
      const T* xj = src + static_cast<int64_t>(col[e]) * TW;
      for (int v = 0; v < kNv; ++v) {
        V x;
        std::memcpy(&x, xj + v * kLanes, sizeof(V));
        acc[v] += x * w;
      }
    }
    const T* qi = q + i * TW;
    T* di = dst + i * TW;
    for (int v = 0; v < kNv; ++v) {
      V qv, dv;
      std::memcpy(&qv, qi + v * kLanes, sizeof(V));
      std::memcpy(&dv, di + v * kLanes, sizeof(V));
      dv = qv * ck + acc[v] * two - dv;
      std::memcpy(di + v * kLanes, &dv, sizeof(V));
    }
  }
}

// Any tile width (the remainder tile of a width that no vector tile divides).
template <typename T>
void clenshaw_step_any(const CellCsr<T>& m, int64_t s, int64_t tw, T ck, T two, const T* q, const T* src,
                       T* dst) {
  std::vector<T> acc(tw);
  const int32_t* ptr = m.ptr.data();
  const int32_t* col = m.col.data();
  const T* val = m.val.data();
  for (int64_t i = 0; i < s; ++i) {
    const T dsh = m.dshift[i];
    for (int64_t c = 0; c < tw; ++c) acc[c] = dsh * src[i * tw + c];
    for (int32_t e = ptr[i]; e < ptr[i + 1]; ++e) {
      const T w = val[e];
      const T* xj = src + static_cast<int64_t>(col[e]) * tw;
      for (int64_t c = 0; c < tw; ++c) acc[c] += w * xj[c];
    }
    for (int64_t c = 0; c < tw; ++c) dst[i * tw + c] = ck * q[i * tw + c] + two * acc[c] - dst[i * tw + c];
  }
}

template <typename T, int TW>
void clenshaw_step(const CellCsr<T>& m, int64_t s, int64_t w, T ck, T two, const T* q, const T* src, T* dst) {
  if constexpr (TW > 0 && (TW * sizeof(T)) % 64 == 0) {
    clenshaw_step_vec<T, TW>(m, s, ck, two, q, src, dst);
  } else {
    clenshaw_step_any<T>(m, s, w, ck, two, q, src, dst);
  }
}

// Copy n values to the output with non-temporal (streaming) stores where the
// destination is 64-byte aligned: the result is written once and not read again here,
// so it should not evict the working set from cache nor be read for ownership first.
template <typename T>
inline void store_stream(T* dst, const T* src, int64_t n) {
  int64_t bytes = n * static_cast<int64_t>(sizeof(T));
#if defined(__AVX512F__)
  if ((reinterpret_cast<uintptr_t>(dst) & 63) == 0 && bytes % 64 == 0) {
    for (int64_t o = 0; o < bytes; o += 64) {
      _mm512_stream_si512(reinterpret_cast<__m512i*>(reinterpret_cast<char*>(dst) + o),
                          _mm512_loadu_si512(reinterpret_cast<const char*>(src) + o));
    }
    return;
  }
#elif defined(__AVX__)
  if ((reinterpret_cast<uintptr_t>(dst) & 31) == 0 && bytes % 32 == 0) {
    for (int64_t o = 0; o < bytes; o += 32) {
      _mm256_stream_si256(reinterpret_cast<__m256i*>(reinterpret_cast<char*>(dst) + o),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(reinterpret_cast<const char*>(src) + o)));
    }
    return;
  }
#endif
  std::memcpy(dst, src, bytes);
}

template <typename T, int TW>
void run_tile(const CellCsr<T>& m, int64_t s, int64_t d, int64_t col0, int64_t w, const T* q_cell,
              const bool* graph, const bool* pass, const T* coeffs, int64_t order, T* out_cell,
              std::vector<T>* scratch) {
  const int64_t tw = w;
  scratch->resize(3 * s * tw);
  T* q = scratch->data();
  T* b1 = q + s * tw;
  T* b2 = b1 + s * tw;
  // Load the tile (zero outside the graph) and start Clenshaw in the same pass:
  // b1 = b_K = c_K q, b2 = b_{K+1} = 0 (order 0: b1 = c_0/2 q is the result).
  const T half_c0 = T(0.5) * coeffs[0];
  const T first = order == 0 ? half_c0 : coeffs[order];
  for (int64_t i = 0; i < s; ++i) {
    const T* src = q_cell + i * d + col0;
    T* qi = q + i * tw;
    T* b1i = b1 + i * tw;
    if (graph[i]) {
      for (int64_t c = 0; c < tw; ++c) {
        qi[c] = src[c];
        b1i[c] = first * src[c];
      }
    } else {
      std::fill(qi, qi + tw, T(0));
      std::fill(b1i, b1i + tw, T(0));
    }
    std::fill(b2 + i * tw, b2 + (i + 1) * tw, T(0));
  }
  if (order > 0) {
    for (int64_t k = order - 1; k >= 1; --k) {
      clenshaw_step<T, TW>(m, s, tw, coeffs[k], T(2), q, b1, b2);  // b2 <- b_k
      std::swap(b1, b2);                                            // b1 = b_k, b2 = b_{k+1}
    }
    // y = c0/2 q + (L - I) b1 - b2  ==  one step with ck = c0/2, factor 1 instead of 2.
    clenshaw_step<T, TW>(m, s, tw, half_c0, T(1), q, b1, b2);
    b1 = b2;
  }
  for (int64_t i = 0; i < s; ++i) {
    T* dst = out_cell + i * d + col0;
    const T* src = pass[i] ? q_cell + i * d + col0 : b1 + i * tw;
    if (pass[i] || graph[i]) {
      store_stream(dst, src, tw);
    } else {
      std::fill(dst, dst + tw, T(0));
    }
  }
#if defined(__SSE2__)
  _mm_sfence();  // order the streaming stores before the call returns
#endif
}

template <typename T>
void run_item(const CellCsr<T>& m, int64_t s, int64_t d, int64_t tile, int64_t j, const T* q_cell,
              const bool* graph, const bool* pass, const T* coeffs, int64_t order, T* out_cell,
              std::vector<T>* scratch) {
  const int64_t col0 = j * tile;
  const int64_t w = std::min(tile, d - col0);
  switch (w) {
    case 64: return run_tile<T, 64>(m, s, d, col0, w, q_cell, graph, pass, coeffs, order, out_cell, scratch);
    case 32: return run_tile<T, 32>(m, s, d, col0, w, q_cell, graph, pass, coeffs, order, out_cell, scratch);
    case 16: return run_tile<T, 16>(m, s, d, col0, w, q_cell, graph, pass, coeffs, order, out_cell, scratch);
    case 8: return run_tile<T, 8>(m, s, d, col0, w, q_cell, graph, pass, coeffs, order, out_cell, scratch);
    default: return run_tile<T, 0>(m, s, d, col0, w, q_cell, graph, pass, coeffs, order, out_cell, scratch);
  }
}

// Runs fn(item) for item in [0, n) on the pool and the calling thread.
template <typename F>
void parallel_items(ffi::ThreadPool& pool, int64_t n, F fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto st = std::make_shared<State>();
  auto work = [st, n, fn]() {
    for (int64_t it = st->next.fetch_add(1); it < n; it = st->next.fetch_add(1)) {
      fn(it);
      st->done.fetch_add(1, std::memory_order_release);
    }
  };
  // The calling thread is one worker: schedule num_threads - 1 helpers so the workers match the cores.
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t h = 0; h < helpers; ++h) {
    auto copy = work;  // Schedule takes ownership of a moved-from callable
    pool.Schedule(std::move(copy));
  }
  work();
  while (st->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

template <ffi::DataType DT>
ffi::Error diffuse_impl(ffi::ThreadPool pool, ffi::Buffer<DT> q, ffi::Buffer<DT> data,
                        ffi::Buffer<ffi::S32> rows, ffi::Buffer<ffi::S32> cols, ffi::Buffer<ffi::PRED> graph,
                        ffi::Buffer<ffi::PRED> pass, ffi::Buffer<DT> coeffs, ffi::ResultBuffer<DT> out,
                        int64_t tile) {
  using T = ffi::NativeType<DT>;
  auto qd = q.dimensions();
  auto nd = data.dimensions();
  if (qd.size() != 3 || nd.size() != 2 || nd[0] != qd[0]) {
    return ffi::Error::InvalidArgument("grn_cpu_diffuse: q must be [B, S, D] and data [B, N]");
  }
  const int64_t b = qd[0], s = qd[1], d = qd[2], n = nd[1];
  const int64_t order = coeffs.element_count() - 1;
  if (tile < 1 || order < 0) return ffi::Error::InvalidArgument("grn_cpu_diffuse: bad tile or coefficients");
  const int64_t tiles = (d + tile - 1) / tile;
  const T* qp = q.typed_data();
  const T* dp = data.typed_data();
  const int32_t* rp = rows.typed_data();
  const int32_t* cp = cols.typed_data();
  for (int64_t e = 0; e < b * n; ++e) {
    if (rp[e] < 0 || rp[e] >= s || cp[e] < 0 || cp[e] >= s) {
      return ffi::Error::InvalidArgument("grn_cpu_diffuse: Laplacian index out of range [0, S)");
    }
  }
  std::vector<CellCsr<T>> csr(b);
  parallel_items(pool, b, [&](int64_t c) { build_csr<T>(dp + c * n, rp + c * n, cp + c * n, n, s, &csr[c]); });
  const bool* gp = graph.typed_data();
  const bool* pp = pass.typed_data();
  const T* co = coeffs.typed_data();
  T* op = out->typed_data();
  parallel_items(pool, b * tiles, [&](int64_t it) {
    thread_local std::vector<T> scratch;
    const int64_t c = it / tiles, j = it % tiles;
    run_item<T>(csr[c], s, d, tile, j, qp + c * s * d, gp + c * s, pp + c * s, co, order, op + c * s * d,
                &scratch);
  });
  return ffi::Error::Success();
}

}  // namespace

#define GRN_BIND(DT)                          \
  ffi::Ffi::Bind()                            \
      .Ctx<ffi::ThreadPool>()                 \
      .Arg<ffi::Buffer<DT>>()                 \
      .Arg<ffi::Buffer<DT>>()                 \
      .Arg<ffi::Buffer<ffi::S32>>()           \
      .Arg<ffi::Buffer<ffi::S32>>()           \
      .Arg<ffi::Buffer<ffi::PRED>>()          \
      .Arg<ffi::Buffer<ffi::PRED>>()          \
      .Arg<ffi::Buffer<DT>>()                 \
      .Ret<ffi::Buffer<DT>>()                 \
      .Attr<int64_t>("tile")

XLA_FFI_DEFINE_HANDLER_SYMBOL(GrnCpuDiffuseF32, diffuse_impl<ffi::F32>, GRN_BIND(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(GrnCpuDiffuseF64, diffuse_impl<ffi::F64>, GRN_BIND(ffi::F64));
