// Conversion of user expressions at the API boundary: any 2-D xtensor expression of float,
// double, float16_t or bfloat16_t becomes a contiguous row-major matrix of the compute type
// (float, or double for double), without a copy when it already is one.
#ifndef INT4Q_DETAIL_INPUT_HPP
#define INT4Q_DETAIL_INPUT_HPP

#include <cstddef>
#include <string>
#include <type_traits>

#include <xtensor/xexpression.hpp>
#include <xtensor/xtensor.hpp>

#include <int4q/error.hpp>
#include <int4q/float16.hpp>

namespace int4q {

/// The arithmetic type used for a weight of element type V: double for double, else float.
template <class V>
using compute_type_t =
    std::conditional_t<std::is_same<std::decay_t<V>, double>::value, double, float>;

namespace detail {

template <class V>
struct is_weight_type
    : std::integral_constant<
          bool, std::is_same<V, float>::value || std::is_same<V, double>::value ||
                    std::is_same<V, float16_t>::value || std::is_same<V, bfloat16_t>::value> {};

template <class E, class = void>
struct has_contiguous_data : std::false_type {};
template <class E>
struct has_contiguous_data<E, std::void_t<decltype(std::declval<const E&>().data()),
                                          decltype(std::declval<const E&>().strides()),
                                          decltype(std::declval<const E&>().layout())>>
    : std::is_base_of<xt::xcontainer<E>, E> {};

/// A read-only [rows, cols] row-major view of T, owning a converted copy when needed.
template <class T>
struct matrix_input {
  const T* data = nullptr;
  std::size_t rows = 0;
  std::size_t cols = 0;
  xt::xtensor<T, 2> owned;
};

template <class T, class E>
matrix_input<T> as_matrix(const xt::xexpression<E>& expr, const char* what) {
  const E& e = expr.derived_cast();
  using V = std::decay_t<typename E::value_type>;
  static_assert(is_weight_type<V>::value,
                "int4q: weights must be float, double, int4q::float16_t or int4q::bfloat16_t");
  if (e.dimension() != 2) {
    throw shape_error(std::string(what) + " must be 2-D [K, N], got " +
                      std::to_string(e.dimension()) + " dimensions: reshape it first");
  }
  matrix_input<T> m;
  m.rows = e.shape()[0];
  m.cols = e.shape()[1];
  if constexpr (std::is_same<V, T>::value && has_contiguous_data<E>::value) {
    if (e.layout() == xt::layout_type::row_major) {
      m.data = e.data();
      return m;
    }
  }
  m.owned = xt::xtensor<T, 2>::from_shape({m.rows, m.cols});
  std::size_t i = 0;
  for (auto it = e.template begin<xt::layout_type::row_major>();
       it != e.template end<xt::layout_type::row_major>(); ++it, ++i) {
    m.owned.data()[i] = static_cast<T>(static_cast<compute_type_t<V>>(*it));
  }
  m.data = m.owned.data();
  return m;
}

}  // namespace detail
}  // namespace int4q

#endif  // INT4Q_DETAIL_INPUT_HPP
