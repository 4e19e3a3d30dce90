// Internal to int4q::onnx: the executor's helpers (values, broadcasting, attributes) shared by
// the operator files executor*.cpp.
#ifndef INT4Q_ONNX_SRC_EXECUTOR_DETAIL_HPP
#define INT4Q_ONNX_SRC_EXECUTOR_DETAIL_HPP

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numeric>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <int4q/detail/blas.hpp>

#include <int4q/detail/parallel.hpp>
#include <int4q/onnx/executor.hpp>

#include <int4q/onnx/graph.hpp>

namespace int4q {
namespace onnx {
namespace exec {

using ::onnx::AttributeProto;
using ::onnx::NodeProto;
using ::onnx::TensorProto;
using shape_t = std::vector<std::int64_t>;

inline std::size_t numel(const shape_t& s) {
  std::size_t n = 1;
  for (const std::int64_t d : s) n *= static_cast<std::size_t>(d);
  return n;
}

inline shape_t strides_of(const shape_t& s) {
  shape_t st(s.size(), 1);
  for (std::size_t k = s.size(); k-- > 1;) st[k - 1] = st[k] * s[k];
  return st;
}

/// Runs a subgraph (an If branch, a Loop body) in the scope of the running node: names the
/// subgraph does not define resolve to the enclosing graphs' values. `args` bind to the
/// subgraph's inputs in order. Returns the subgraph's outputs in order.
using subgraph_runner = std::function<std::vector<value>(const ::onnx::GraphProto& graph,
                                                         const std::vector<const value*>& args)>;

/// Errors while running a node: model_error(invalid) naming the node.
struct node_context {
  const NodeProto& node;
  /// Set for nodes with graph attributes (If); nullptr otherwise.
  const subgraph_runner* subgraph = nullptr;
  /// For each input: the value itself when the executor frees it right after this node and the
  /// node reads it through no other input (an activation at its last reader); nullptr otherwise.
  const std::vector<value*>* dying = nullptr;
  [[noreturn]] void fail(const std::string& what) const {
    throw model_error(model_error::kind::invalid,
                      node.op_type() + " node '" + node.name() + "': " + what);
  }
  /// Input k when the operator may take it over (move its data into an output, overwrite it in
  /// place): it is the executor's value, freed after this node and read through no other input;
  /// nullptr otherwise. An operator that takes an input must not read in[k] afterwards except
  /// through the returned value.
  value* take_input(const std::vector<const value*>& in, std::size_t k) const {
    if (!dying || k >= dying->size() || k >= in.size()) return nullptr;
    value* v = (*dying)[k];
    return v && v == in[k] ? v : nullptr;
  }
};

// ---- Buffers -----------------------------------------------------------------------------------

/// The float buffers of values freed during a run, handed out again for new values. A fresh
/// allocation of a large vector comes from the system untouched: its first write faults in every
/// page (and std::vector zero-fills it first), which on a virtual machine costs more than the
/// arithmetic of most operators. A run's tensors repeat in size from layer to layer, so after
/// the first layer most outputs reuse a buffer of the same size.
///
/// Bounded: the buffers kept never exceed a limit in bytes (the executor sets it to the largest
/// bytes of live values seen in the run, so a run's peak is at most twice its activations) and
/// 64 buffers; the oldest go first. A session paused mid-graph keeps none, a finished run
/// leaves at most executor_options::kept_buffer_bytes to the next. A buffer serves requests of
/// n floats when its capacity is within [n, 2n] (a small tensor does not pin a large buffer).
class buffer_pool {
 public:
  /// n floats, contents unspecified (every element must be written).
  std::vector<float> floats(std::size_t n) {
    std::size_t best = kept_.size();
    for (std::size_t k = 0; k < kept_.size(); ++k) {
      const std::size_t cap = kept_[k].capacity();
      if (cap >= n && cap <= 2 * n && (best == kept_.size() || cap < kept_[best].capacity()))
        best = k;
    }
    std::vector<float> v;
    if (best < kept_.size()) {
      v = std::move(kept_[best]);
      kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(best));
      bytes_ -= v.capacity() * sizeof(float);
    }
    v.resize(n);  // shrinking is free; growing within the capacity fills the new part only
    return v;
  }
  /// Keeps v's buffer for a later request (v is left empty).
  void recycle(std::vector<float>& v) {
    const std::size_t bytes = v.capacity() * sizeof(float);
    if (bytes < kMinBytes || bytes > limit_) {
      std::vector<float>().swap(v);
      return;
    }
    kept_.push_back(std::move(v));
    v = std::vector<float>();
    bytes_ += bytes;
    trim();
  }
  /// Raises the bound to `bytes` if it is larger.
  void raise_limit(std::size_t bytes) { limit_ = std::max(limit_, bytes); }
  /// Lowers the bound to `bytes` if it is smaller, dropping the oldest buffers above it.
  void lower_limit(std::size_t bytes) {
    limit_ = std::min(limit_, bytes);
    trim();
  }
  /// Bytes of the buffers kept.
  std::size_t bytes() const noexcept { return bytes_; }
  /// Frees every buffer kept (the bound stays).
  void clear() noexcept {
    kept_.clear();
    bytes_ = 0;
  }

 private:
  void trim() {
    while (!kept_.empty() && (bytes_ > limit_ || kept_.size() > kMaxBuffers)) {
      bytes_ -= kept_.front().capacity() * sizeof(float);
      kept_.erase(kept_.begin());
    }
  }
  /// Smaller buffers come from malloc's free lists anyway.
  static constexpr std::size_t kMinBytes = std::size_t{64} << 10;
  static constexpr std::size_t kMaxBuffers = 64;
  std::vector<std::vector<float>> kept_;
  std::size_t bytes_ = 0;
  std::size_t limit_ = 0;
};

/// The pool of the run on this thread (nullptr outside a run, and on worker threads).
buffer_pool*& current_pool_slot() noexcept;

/// n floats for an output, contents unspecified (every element must be written): from the
/// run's pool when there is one.
inline std::vector<float> new_floats(std::size_t n) {
  buffer_pool* pool = current_pool_slot();
  return pool ? pool->floats(n) : std::vector<float>(n);
}

/// A float value of `shape` with unspecified contents (see new_floats).
inline value new_float_value(std::vector<std::int64_t> shape) {
  value r;
  r.type = value_type::float32;
  r.f = new_floats(numel(shape));
  r.shape = std::move(shape);
  return r;
}

/// A value to compute an elementwise result of input k into: the input itself when the operator
/// may take it (take_input), else a copy of it in a buffer from the run's pool.
inline value input_or_copy(const node_context& c, const std::vector<const value*>& in,
                           std::size_t k) {
  if (value* v = c.take_input(in, k)) return std::move(*v);
  const value& a = *in[k];
  if (a.type != value_type::float32) return a;
  value r = new_float_value(a.shape);
  std::copy(a.f.begin(), a.f.end(), r.f.begin());
  return r;
}

// Attribute and shape helpers of <int4q/onnx/graph.hpp> (model layer): detail::find_attr, attr_int,
// attr_float, dims_string.
using detail::attr_float;
using detail::attr_int;
using detail::dims_string;
using detail::find_attr;

inline shape_t attr_ints(const NodeProto& n, const std::string& name) {
  const AttributeProto* a = find_attr(n, name);
  return a ? shape_t(a->ints().begin(), a->ints().end()) : shape_t{};
}

/// The executor's type for an ONNX data type; false for types it cannot hold (strings,
/// complex, 8-bit floats, 4-bit integers).
inline bool value_type_of(int data_type, value_type& out) {
  switch (data_type) {
    case TensorProto::FLOAT:
    case TensorProto::FLOAT16:
    case TensorProto::BFLOAT16:
    case TensorProto::DOUBLE: out = value_type::float32; return true;
    case TensorProto::INT8:
    case TensorProto::INT16:
    case TensorProto::INT32:
    case TensorProto::INT64:
    case TensorProto::UINT8:
    case TensorProto::UINT16:
    case TensorProto::UINT32:
    case TensorProto::UINT64: out = value_type::int64; return true;
    case TensorProto::BOOL: out = value_type::boolean; return true;
    default: return false;
  }
}

/// Axis in [0, rank) from a possibly negative one.
inline std::int64_t normalize_axis(const node_context& c, std::int64_t axis, std::size_t rank) {
  const auto r = static_cast<std::int64_t>(rank);
  if (axis < -r || axis >= r)
    c.fail("axis " + std::to_string(axis) + " is out of range for rank " + std::to_string(rank));
  return axis < 0 ? axis + r : axis;
}

/// An index into a dimension of `dim` (negative counts from the end) as a non-negative one;
/// out of range: model_error naming the node.
inline std::int64_t checked_index(const node_context& c, std::int64_t ix, std::int64_t dim) {
  if (ix < -dim || ix >= dim)
    c.fail("index " + std::to_string(ix) + " is out of range for a dimension of " +
           std::to_string(dim));
  return ix < 0 ? ix + dim : ix;
}

/// Integer values of an int64 input (shape, axes, starts, ...).
inline shape_t int_list(const node_context& c, const value& v, const char* what) {
  if (v.type != value_type::int64) c.fail(std::string(what) + " must be an integer tensor");
  return v.i;
}

// ---- Broadcasting -----------------------------------------------------------------------------

inline shape_t broadcast_shapes(const node_context& c, const std::vector<const shape_t*>& shapes) {
  std::size_t rank = 0;
  for (const shape_t* s : shapes) rank = std::max(rank, s->size());
  shape_t out(rank, 1);
  for (const shape_t* s : shapes) {
    const std::size_t off = rank - s->size();
    for (std::size_t k = 0; k < s->size(); ++k) {
      const std::int64_t d = (*s)[k];
      std::int64_t& o = out[off + k];
      if (d == o || d == 1) continue;
      if (o == 1) {
        o = d;
        continue;
      }
      std::string all;
      for (const shape_t* t : shapes) all += (all.empty() ? "" : " and ") + dims_string(*t);
      c.fail("shapes " + all + " do not broadcast");
    }
  }
  return out;
}

/// For each element of `out_shape` (row-major), the flat index into a tensor of shape `s`
/// broadcast to it.
inline std::vector<std::size_t> broadcast_index(const shape_t& s, const shape_t& out_shape) {
  const std::size_t n = numel(out_shape);
  std::vector<std::size_t> idx(n);
  if (s == out_shape) {
    std::iota(idx.begin(), idx.end(), std::size_t(0));
    return idx;
  }
  const std::size_t rank = out_shape.size(), off = rank - s.size();
  shape_t st(rank, 0);
  const shape_t own = strides_of(s);
  for (std::size_t k = 0; k < s.size(); ++k) st[off + k] = s[k] == 1 ? 0 : own[k];
  shape_t counter(rank, 0);
  std::size_t pos = 0;
  for (std::size_t e = 0; e < n; ++e) {
    idx[e] = pos;
    for (std::size_t k = rank; k-- > 0;) {
      if (++counter[k] < out_shape[k]) {
        pos += static_cast<std::size_t>(st[k]);
        break;
      }
      pos -= static_cast<std::size_t>(st[k] * (out_shape[k] - 1));
      counter[k] = 0;
    }
  }
  return idx;
}

/// Walks `out_shape` (row-major) with N operands of the given shapes broadcast to it, in runs
/// along the last axis: run(o, pos, step, len) covers output elements o .. o+len-1, operand q
/// read at pos[q] + j*step[q] (step 1, or 0 along a broadcast axis). No index vectors: the
/// operands' offsets advance with per-axis counters once per run. Only runs [first, end) of the
/// numel / last-dimension runs are walked (a part of the walk for one thread).
template <std::size_t N, class Run>
void broadcast_walk(const shape_t& out_shape, const std::array<const shape_t*, N>& shapes, Run run,
                    std::size_t first = 0, std::size_t end = ~std::size_t(0)) {
  const std::size_t n = numel(out_shape);
  if (n == 0) return;
  const std::size_t rank = out_shape.size();
  std::array<std::size_t, N> pos{}, step{};
  if (rank == 0) {
    if (first == 0 && end > 0) run(std::size_t(0), pos, step, std::size_t(1));
    return;
  }
  // Strides of each operand aligned to the output's axes, 0 along broadcast axes.
  std::array<shape_t, N> st;
  for (std::size_t q = 0; q < N; ++q) {
    const shape_t& s = *shapes[q];
    st[q].assign(rank, 0);
    const shape_t own = strides_of(s);
    const std::size_t off = rank - s.size();
    for (std::size_t k = 0; k < s.size(); ++k) st[q][off + k] = s[k] == 1 ? 0 : own[k];
    step[q] = static_cast<std::size_t>(st[q][rank - 1]);
  }
  const auto len = static_cast<std::size_t>(out_shape[rank - 1]);
  end = std::min(end, n / len);
  if (first >= end) return;
  // The counters (and offsets) of run `first`.
  shape_t counter(rank, 0);
  for (std::size_t k = rank - 1, rest = first; k-- > 0;) {
    counter[k] = static_cast<std::int64_t>(rest % static_cast<std::size_t>(out_shape[k]));
    rest /= static_cast<std::size_t>(out_shape[k]);
    for (std::size_t q = 0; q < N; ++q) pos[q] += static_cast<std::size_t>(counter[k] * st[q][k]);
  }
  for (std::size_t o = first * len; o < end * len; o += len) {
    run(o, pos, step, len);
    for (std::size_t k = rank - 1; k-- > 0;) {
      if (++counter[k] < out_shape[k]) {
        for (std::size_t q = 0; q < N; ++q) pos[q] += static_cast<std::size_t>(st[q][k]);
        break;
      }
      for (std::size_t q = 0; q < N; ++q)
        pos[q] -= static_cast<std::size_t>(st[q][k] * (out_shape[k] - 1));
      counter[k] = 0;
    }
  }
}

/// broadcast_walk for two operands: run(o, pa, pb, len, da, db), runs [first, end).
template <class Run>
void broadcast_runs(const shape_t& out_shape, const shape_t& sa, const shape_t& sb, Run run,
                    std::size_t first = 0, std::size_t end = ~std::size_t(0)) {
  broadcast_walk<2>(
      out_shape, {&sa, &sb},
      [&](std::size_t o, const std::array<std::size_t, 2>& p, const std::array<std::size_t, 2>& d,
          std::size_t len) { run(o, p[0], p[1], len, d[0], d[1]); },
      first, end);
}

/// dst = the elements of src seen through a strided view: element j of `shape` (row-major) is
/// src[offset + sum_k j[k] * strides[k]]. Copies runs along the last axis (a plain copy when its
/// stride is 1), advancing the offset with per-axis counters.
template <class T>
void copy_view(const std::vector<T>& src, const shape_t& shape, const shape_t& strides,
               std::int64_t offset, std::vector<T>& dst) {
  const std::size_t n = numel(shape), rank = shape.size();
  dst.resize(n);
  if (n == 0) return;
  if (rank == 0) {
    dst[0] = src[static_cast<std::size_t>(offset)];
    return;
  }
  const auto len = static_cast<std::size_t>(shape[rank - 1]);
  const std::int64_t step = strides[rank - 1];
  shape_t j(rank, 0);
  std::int64_t pos = offset;
  T* o = dst.data();
  for (std::size_t e = 0; e < n; e += len) {
    const T* s = src.data() + pos;
    if (step == 1) {
      std::copy(s, s + len, o + e);
    } else {
      for (std::size_t q = 0; q < len; ++q) o[e + q] = s[static_cast<std::int64_t>(q) * step];
    }
    for (std::size_t k = rank - 1; k-- > 0;) {
      if (++j[k] < shape[k]) {
        pos += strides[k];
        break;
      }
      pos -= strides[k] * (shape[k] - 1);
      j[k] = 0;
    }
  }
}

/// Threads of the executor running on this thread (0 = all cores): executor::run sets it for
/// the duration of a run, the operators' parallel loops read it.
std::size_t& current_threads_slot() noexcept;
inline std::size_t current_threads() noexcept { return current_threads_slot(); }

/// Elements per work item of the executor's elementwise loops (rows of row-wise operators are
/// grouped to about this many elements): a constant, so the partition, and anything computed per
/// item, is the same for any thread count.
constexpr std::size_t kElementChunk = std::size_t{1} << 15;

/// fn(begin, end) over [0, count) in fixed items of `per_item`, the items spread over the run's
/// threads (one item: on the calling thread).
template <class F>
void parallel_ranges(std::size_t count, std::size_t per_item, F fn) {
  per_item = std::max<std::size_t>(per_item, 1);
  const std::size_t items = (count + per_item - 1) / per_item;
  if (items <= 1 || current_threads() == 1) {
    if (count > 0) fn(std::size_t(0), count);
    return;
  }
  int4q::detail::parallel_for(items, current_threads(), [&](std::size_t i) {
    fn(i * per_item, std::min(count, (i + 1) * per_item));
  });
}

/// Rows per item for rows of `len` elements (parallel_ranges over rows).
inline std::size_t rows_per_item(std::size_t len) {
  return std::max<std::size_t>(1, kElementChunk / std::max<std::size_t>(len, 1));
}

/// pr[e] = f(a[ia], b[ib]) over the broadcast of a (shape sa) and b (shape sb) to out_shape, with
/// plain loops for the common cases (same shape, a scalar operand, runs along the last axis) so
/// they vectorize, in fixed items over the run's threads. pr may be pa or pb when that operand
/// has the output's shape (each element is read before it is written).
template <class T, class F>
void broadcast_apply(const T* pa, const shape_t& sa, const T* pb, const shape_t& sb,
                     const shape_t& out_shape, T* pr, F f) {
  const std::size_t n = numel(out_shape);
  if (sa == out_shape && sb == out_shape) {
    parallel_ranges(n, kElementChunk, [&](std::size_t e0, std::size_t e1) {
      for (std::size_t e = e0; e < e1; ++e) pr[e] = f(pa[e], pb[e]);
    });
  } else if (sa == out_shape && numel(sb) == 1) {
    const T y = pb[0];
    parallel_ranges(n, kElementChunk, [&](std::size_t e0, std::size_t e1) {
      for (std::size_t e = e0; e < e1; ++e) pr[e] = f(pa[e], y);
    });
  } else if (sb == out_shape && numel(sa) == 1) {
    const T x = pa[0];
    parallel_ranges(n, kElementChunk, [&](std::size_t e0, std::size_t e1) {
      for (std::size_t e = e0; e < e1; ++e) pr[e] = f(x, pb[e]);
    });
  } else if (n > 0) {
    const std::size_t len = out_shape.empty() ? 1 : static_cast<std::size_t>(out_shape.back());
    auto part = [&](std::size_t first, std::size_t end) {
      broadcast_runs(
          out_shape, sa, sb,
          [&](std::size_t o, std::size_t ia, std::size_t ib, std::size_t l, std::size_t da,
              std::size_t db) {
            T* r = pr + o;
            const T* x = pa + ia;
            const T* y = pb + ib;
            if (da == 1 && db == 1) {
              for (std::size_t j = 0; j < l; ++j) r[j] = f(x[j], y[j]);
            } else if (da == 1) {
              const T yv = *y;
              for (std::size_t j = 0; j < l; ++j) r[j] = f(x[j], yv);
            } else if (db == 1) {
              const T xv = *x;
              for (std::size_t j = 0; j < l; ++j) r[j] = f(xv, y[j]);
            } else {
              const T v = f(*x, *y);
              for (std::size_t j = 0; j < l; ++j) r[j] = v;
            }
          },
          first, end);
    };
    parallel_ranges(n / len, rows_per_item(len), part);
  }
}

/// The same into a vector sized here.
template <class T, class F>
void broadcast_apply(const std::vector<T>& a, const shape_t& sa, const std::vector<T>& b,
                     const shape_t& sb, const shape_t& out_shape, std::vector<T>& r, F f) {
  r.resize(numel(out_shape));
  broadcast_apply(a.data(), sa, b.data(), sb, out_shape, r.data(), f);
}

/// Threads of the BLAS library (1 when it cannot be asked).
inline int blas_threads() noexcept { return int4q::detail::blas::threads(); }

/// Rows of C per block of exec::gemm: a constant, so that the blocks (and so the arithmetic) do
/// not depend on the thread count.
constexpr std::size_t kGemmBlockRows = 64;
/// Products below this many multiply-adds run as one BLAS call on the calling thread.
constexpr std::size_t kGemmParallelMin = std::size_t(1) << 20;

/// C[M, N] = alpha op(A) op(B) + beta C (row-major; op = transpose when ta / tb), computed in
/// blocks of kGemmBlockRows rows of C, one BLAS call per block, the blocks spread over threads.
/// Byte-identical results for any thread count need BLAS itself single-threaded (the int4q CLI
/// sets it so): OpenBLAS's multi-threaded sgemm rounds differently from its single-threaded one.
inline void gemm(bool ta, bool tb, std::size_t M, std::size_t N, std::size_t K, float alpha,
                 const float* A, std::size_t lda, const float* B, std::size_t ldb, float beta,
                 float* C, std::size_t ldc) {
  if (M == 0 || N == 0) return;
  auto call = [&](std::size_t r0, std::size_t rows) {
    int4q::detail::blas::gemm(ta, tb, rows, N, K, alpha, ta ? A + r0 : A + r0 * lda, lda, B, ldb,
                              beta, C + r0 * ldc, ldc);
  };
  // A multi-threaded BLAS does its own splitting (and must not be entered from several of our
  // threads at once): one call then.
  if (M <= kGemmBlockRows || M * N * K < kGemmParallelMin || blas_threads() > 1) {
    call(0, M);
    return;
  }
  const std::size_t blocks = (M + kGemmBlockRows - 1) / kGemmBlockRows;
  int4q::detail::parallel_for(blocks, current_threads(), [&](std::size_t b) {
    const std::size_t r0 = b * kGemmBlockRows;
    call(r0, std::min(kGemmBlockRows, M - r0));
  });
}

// ---- Operators ----------------------------------------------------------------------------------

using inputs_t = std::vector<const value*>;
using op_fn =
    std::function<void(const node_context&, const model&, const inputs_t&, std::vector<value>&)>;

inline const value& need(const node_context& c, const inputs_t& in, std::size_t k) {
  if (k >= in.size() || !in[k]) c.fail("input " + std::to_string(k) + " is missing");
  return *in[k];
}
inline const value* optional_input(const inputs_t& in, std::size_t k) {
  return k < in.size() ? in[k] : nullptr;
}

template <class F, class G>
void binary(const node_context& c, const inputs_t& in, std::vector<value>& out, F on_float,
            G on_int) {
  const value& a = need(c, in, 0);
  const value& b = need(c, in, 1);
  if (a.type != b.type) c.fail("inputs have different types");
  shape_t shape = broadcast_shapes(c, {&a.shape, &b.shape});
  value r;
  r.type = a.type;
  if (a.type == value_type::float32) {
    // Into an input of the output's shape that the executor frees after this node (in place),
    // else into a buffer from the run's pool. The data pointers survive the move, the shapes
    // are kept apart first (the moved-from input loses its own).
    const float* pa = a.f.data();
    const float* pb = b.f.data();
    const shape_t sa = a.shape, sb = b.shape;
    if (value* t = sa == shape ? c.take_input(in, 0) : nullptr) {
      r.f = std::move(t->f);
    } else if (value* u = sb == shape ? c.take_input(in, 1) : nullptr) {
      r.f = std::move(u->f);
    } else {
      r.f = new_floats(numel(shape));
    }
    broadcast_apply(pa, sa, pb, sb, shape, r.f.data(), on_float);
  } else {
    broadcast_apply(a.i, a.shape, b.i, b.shape, shape, r.i, on_int);
  }
  r.shape = std::move(shape);
  out.push_back(std::move(r));
}

/// A float value of input k's shape computed in chunks over the run's threads:
/// f(src, dst, count) writes dst[0 .. count) from src[0 .. count), where dst may be src (input k
/// taken over, see take_input; each element is read before it is written) or a pooled buffer.
template <class F>
value map_float_input(const node_context& c, const inputs_t& in, std::size_t k, F f) {
  const value& a = need(c, in, k);
  const float* src = a.f.data();
  value r;
  if (value* t = c.take_input(in, k)) {
    r = std::move(*t);
  } else {
    r = new_float_value(a.shape);
  }
  float* dst = r.f.data();
  parallel_ranges(r.f.size(), kElementChunk,
                  [&](std::size_t e0, std::size_t e1) { f(src + e0, dst + e0, e1 - e0); });
  return r;
}

/// A value of `shape` whose element e is a's element idx[e] (gathers, transposes, tiles).
inline value take(const value& a, shape_t shape, const std::vector<std::size_t>& idx) {
  value r;
  r.type = a.type;
  r.shape = std::move(shape);
  if (a.type == value_type::float32) {
    r.f.resize(idx.size());
    for (std::size_t e = 0; e < idx.size(); ++e) r.f[e] = a.f[idx[e]];
  } else {
    r.i.resize(idx.size());
    for (std::size_t e = 0; e < idx.size(); ++e) r.i[e] = a.i[idx[e]];
  }
  return r;
}

/// The default-domain opset of the model.
inline std::int64_t default_opset(const model& m) {
  for (const auto& o : m.proto.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") return o.version();
  return 1;
}

/// The layout Softmax (and LogSoftmax, Hardmax) normalizes a tensor of `shape` in: `outer`
/// groups of `len` elements `inner` apart along the `axis` attribute (opset >= 13: that one axis,
/// default -1; before: the input flattened to 2-D at the axis, default 1, so inner = 1).
struct softmax_layout {
  std::size_t outer = 1, len = 1, inner = 1;
};
inline softmax_layout softmax_layout_of(const node_context& c, const model& m,
                                        const shape_t& shape) {
  const std::int64_t opset = default_opset(m);
  const std::size_t rank = shape.size();
  if (rank == 0) c.fail("input must have rank >= 1");
  const auto axis = static_cast<std::size_t>(
      normalize_axis(c, attr_int(c.node, "axis", opset >= 13 ? -1 : 1), rank));
  softmax_layout l;
  for (std::size_t k = 0; k < axis; ++k) l.outer *= static_cast<std::size_t>(shape[k]);
  if (opset >= 13) {
    l.len = static_cast<std::size_t>(shape[axis]);
    for (std::size_t k = axis + 1; k < rank; ++k) l.inner *= static_cast<std::size_t>(shape[k]);
  } else {
    for (std::size_t k = axis; k < rank; ++k) l.len *= static_cast<std::size_t>(shape[k]);
  }
  return l;
}

/// numpy-style MatMul of two float values (batched, broadcast), BLAS sgemm per matrix.
void matmul_values(const node_context& c, const inputs_t& in, std::vector<value>& out);

/// The operators of executor_ops.cpp (elementwise math, comparisons, reductions, shapes).
void add_more_ops(std::unordered_map<std::string, op_fn>& ops);

/// The operators of executor_nn.cpp (convolution, pooling, normalization, resize, pad, scatter and
/// gather variants, activations).
void add_nn_ops(std::unordered_map<std::string, op_fn>& ops);

/// The registry key of a node: its op_type, prefixed with "<domain>::" outside the default
/// domain (com.microsoft::MatMulNBits).
std::string op_key(const NodeProto& n);

/// Every operator of the executor by registry key (built once; the executor and
/// stretch_gradient run nodes through it).
const std::unordered_map<std::string, op_fn>& registry();

/// The com.microsoft operators of executor_ms.cpp (fused normalizations, rotary embedding,
/// attention, GELU variants, GatherBlockQuantized), registered as "com.microsoft::<op>".
void add_ms_ops(std::unordered_map<std::string, op_fn>& ops);

}  // namespace exec
}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_SRC_EXECUTOR_DETAIL_HPP
