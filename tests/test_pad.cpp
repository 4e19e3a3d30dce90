// pad / unpad / padded_rows, and the invariant that zero padding to whole groups never changes
// the quantization of the original rows for grids whose range includes zero.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <int4q/quant.hpp>

#include "test_util.hpp"

namespace {

using int4q::data_type;
using int4q::quant_config;
using int4q::scheme;
using int4q_test::all_equal;
using int4q_test::describe;
using int4q_test::dist;
using int4q_test::random_weight;

TEST(Pad, PaddedRowsHandComputed) {
  struct c {
    std::size_t k, gs, want;
  };
  const c cases[] = {{0, 4, 0}, {1, 4, 4},       {3, 4, 4},       {4, 4, 4},     {5, 4, 8},
                     {7, 1, 7}, {130, 128, 256}, {128, 128, 128}, {1, 128, 128}, {300, 7, 301}};
  for (const c& x : cases) {
    EXPECT_EQ(int4q::padded_rows(x.k, x.gs), x.want) << x.k << " / " << x.gs;
  }
  EXPECT_THROW(int4q::padded_rows(5, 0), int4q::config_error);
}

TEST(Pad, ShapesValuesAndFill) {
  const auto w = random_weight<float>(10, 7, dist::uniform, 3);
  for (std::size_t gs : {1, 3, 4, 10, 16}) {
    const std::size_t Kp = (10 + gs - 1) / gs * gs;
    for (float fill : {0.0f, -2.5f}) {
      const auto p = fill == 0.0f ? int4q::pad(w, gs) : int4q::pad(w, gs, fill);
      ASSERT_EQ(p.shape()[0], Kp) << gs;
      ASSERT_EQ(p.shape()[1], 7u);
      for (std::size_t k = 0; k < Kp; ++k) {
        for (std::size_t n = 0; n < 7; ++n) {
          ASSERT_EQ(p(k, n), k < 10 ? w(k, n) : fill)
              << "gs " << gs << " [" << k << ", " << n << "]";
        }
      }
      const auto u = int4q::unpad(p, 10);
      EXPECT_TRUE(all_equal(w, u, "unpad(pad(w)) gs " + std::to_string(gs)));
    }
  }
  // Element type follows the input: double, fp16 (bits kept), uint8 codes.
  const auto wd = random_weight<double>(5, 3, dist::normal, 1);
  const auto pd = int4q::pad(wd, 4);
  static_assert(std::is_same<std::decay_t<decltype(pd)>::value_type, double>::value, "double");
  EXPECT_EQ(pd.shape()[0], 8u);
  EXPECT_EQ(pd(4, 2), wd(4, 2));
  xt::xtensor<int4q::float16_t, 2> h = xt::xtensor<int4q::float16_t, 2>::from_shape({3, 2});
  for (std::size_t i = 0; i < h.size(); ++i) h.data()[i] = int4q::float16_t(0.5f * i);
  const auto ph = int4q::pad(h, 2, int4q::float16_t(7.0f));
  ASSERT_EQ(ph.shape()[0], 4u);
  for (std::size_t i = 0; i < h.size(); ++i) EXPECT_EQ(ph.data()[i].bits, h.data()[i].bits);
  EXPECT_EQ(static_cast<float>(ph(3, 1)), 7.0f);
  const xt::xtensor<std::uint8_t, 2> codes = {{1, 2}, {3, 4}, {5, 6}};
  const auto pc = int4q::pad(codes, 2);
  EXPECT_EQ(pc(3, 0), 0);
  EXPECT_EQ(pc(2, 1), 6);
  // A strided view pads like its copy.
  const auto big = random_weight<float>(20, 9, dist::normal, 2);
  auto view = xt::view(big, xt::range(1, 20, 2), xt::range(0, 9, 4));
  const xt::xtensor<float, 2> copy = view;
  EXPECT_TRUE(all_equal(int4q::pad(copy, 4), int4q::pad(view, 4), "pad of a view"));
  // Empty tensors.
  const xt::xtensor<float, 2> empty = xt::zeros<float>({0, 4});
  EXPECT_EQ(int4q::pad(empty, 8).shape()[0], 0u);
  EXPECT_EQ(int4q::unpad(w, 0).shape()[0], 0u);
}

TEST(Pad, Errors) {
  const auto w = random_weight<float>(6, 2, dist::normal, 1);
  EXPECT_THROW((void)int4q::pad(w, 0), int4q::config_error);
  EXPECT_THROW((void)int4q::unpad(w, 7), int4q::shape_error);
  const xt::xarray<float> one_d = xt::zeros<float>({5});
  EXPECT_THROW((void)int4q::pad(one_d, 4), int4q::shape_error);
  EXPECT_THROW((void)int4q::unpad(one_d, 2), int4q::shape_error);
}

// ---- Padding invariance
// -----------------------------------------------------------------------------

/// Zero rows added to the last group change neither its min/max-through-zero, its amax nor its
/// signed extreme, so codes[:K], scales and zero points are unchanged, for every grid whose
/// range includes zero: all but asymmetric with range_includes_zero = false.
template <class T>
void check_padding_invariance() {
  const std::vector<dist> dists = {dist::normal,   dist::uniform,   dist::outliers,  dist::positive,
                                   dist::negative, dist::fp16_grid, dist::small_ints};
  for (int kind = 0; kind < 6; ++kind) {
    for (int bits : {2, 4, 8}) {
      if (kind >= 4 && bits != 4) continue;
      for (int m = 0; m < 8; ++m) {
        for (std::size_t gs : {std::size_t(3), std::size_t(16), std::size_t(128)}) {
          for (dist d : dists) {
            quant_config c;
            c.bits = bits;
            c.group_size = gs;
            const scheme schemes[] = {scheme::asymmetric, scheme::symmetric,
                                      scheme::symmetric_full_range, scheme::symmetric_offset};
            c.scheme = kind < 4 ? schemes[kind] : scheme::asymmetric;
            if (kind == 4) c.data_type = data_type::nf4;
            if (kind == 5) c.data_type = data_type::fp4;
            c.rounding =
                (m & 1) ? int4q::rounding::half_away_from_zero : int4q::rounding::half_to_even;
            c.zero_point_rounding = (m & 2) ? int4q::zero_point_rounding::before_rounding
                                            : int4q::zero_point_rounding::after_rounding;
            c.scale_division = (m & 4) ? int4q::scale_division::multiply_reciprocal
                                       : int4q::scale_division::divide;
            c.scale_type = static_cast<int4q::scale_type>(m % 3);
            c.zero_range = static_cast<int4q::zero_range_policy>((m / 2) % 3);
            c.clip_ratio = (m == 3) ? 0.8 : 1.0;
            const std::size_t K = 37, N = 19;
            const std::uint32_t seed = 40u + static_cast<std::uint32_t>(d);
            const auto w = random_weight<T>(K, N, d, seed);
            const auto padded = int4q::pad(w, gs);
            const std::string where = describe(c) + " type=" + int4q_test::type_name<T>() +
                                      " data=" + int4q_test::to_string(d) +
                                      " seed=" + std::to_string(seed);
            const auto q = int4q::quant_tensor(w, c);
            const auto qp = int4q::quant_tensor(padded, c);
            ASSERT_TRUE(all_equal(q.scales, qp.scales, where + " [scales]"));
            ASSERT_TRUE(all_equal(q.zero_points, qp.zero_points, where + " [zero points]"));
            ASSERT_TRUE(all_equal(q.codes, int4q::unpad(qp.codes, K), where + " [codes]"));
            ASSERT_TRUE(all_equal(int4q::qdq(w, c), int4q::unpad(int4q::qdq(padded, c), K),
                                  where + " [qdq]"));
          }
        }
      }
    }
  }
}

TEST(PadInvariance, ZeroPaddingNeverChangesTheUnpaddedResultFloat) {
  check_padding_invariance<float>();
}
TEST(PadInvariance, ZeroPaddingNeverChangesTheUnpaddedResultDouble) {
  check_padding_invariance<double>();
}

TEST(PadInvariance, RawRangeIsTheExceptionThatProvesTheRule) {
  // asymmetric with range_includes_zero = false: a positive ragged group [3, 5] becomes [0, 5]
  // once padded with zeros, so its scale changes (2/15 -> 5/15). This is why the invariant above
  // is stated for grids whose range includes zero.
  const xt::xtensor<float, 2> w = {{3.0f}, {5.0f}};
  quant_config c;
  c.group_size = 4;
  c.range_includes_zero = false;
  EXPECT_EQ(int4q::quant_tensor(w, c).scales(0, 0), 2.0f / 15.0f);
  EXPECT_EQ(int4q::quant_tensor(int4q::pad(w, 4), c).scales(0, 0), 5.0f / 15.0f);
}

}  // namespace
