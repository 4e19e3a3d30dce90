// quant_config: validate() accepts exactly the documented combinations, the derived quantities
// (group size, groups, qmax, mid, zero points) and the names of the enums.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <string>
#include <vector>

#include <int4q/quant.hpp>  // the only header of the single-include build

namespace {

using int4q::data_type;
using int4q::grouping;
using int4q::quant_config;
using int4q::rounding;
using int4q::scheme;

TEST(Config, Defaults) {
  const quant_config c;
  EXPECT_EQ(c.bits, 4);
  EXPECT_EQ(c.granularity, grouping::group);
  EXPECT_EQ(c.group_size, 128u);
  EXPECT_EQ(c.scheme, scheme::asymmetric);
  EXPECT_EQ(c.rounding, rounding::half_to_even);
  EXPECT_EQ(c.data_type, data_type::integer);
  EXPECT_EQ(c.scale_type, int4q::scale_type::native);
  EXPECT_EQ(c.zero_point_rounding, int4q::zero_point_rounding::after_rounding);
  EXPECT_EQ(c.scale_division, int4q::scale_division::multiply_reciprocal);  // config.hpp
  EXPECT_EQ(c.zero_range, int4q::zero_range_policy::unit_scale);
  EXPECT_TRUE(c.range_includes_zero);
  EXPECT_EQ(c.min_range, 0.0);
  EXPECT_EQ(c.clip_ratio, 1.0);
  EXPECT_NO_THROW(int4q::validate(c));
}

TEST(Config, ValidateAcceptsEveryDocumentedCombination) {
  int accepted = 0;
  for (int bits = 2; bits <= 8; ++bits)
    for (int s = 0; s < 4; ++s)
      for (int d = 0; d < 3; ++d)
        for (int st = 0; st < 3; ++st)
          for (int zr = 0; zr < 3; ++zr)
            for (grouping g : {grouping::group, grouping::per_channel}) {
              quant_config c;
              c.bits = bits;
              c.scheme = static_cast<scheme>(s);
              c.data_type = static_cast<data_type>(d);
              c.scale_type = static_cast<int4q::scale_type>(st);
              c.zero_range = static_cast<int4q::zero_range_policy>(zr);
              c.granularity = g;
              if (g == grouping::per_channel) c.group_size = 0;  // unused for per-channel
              const bool valid = d == 0 || bits == 4;
              if (valid) {
                EXPECT_NO_THROW(int4q::validate(c)) << bits << " " << s << " " << d;
                ++accepted;
              } else {
                EXPECT_THROW(int4q::validate(c), int4q::config_error) << bits << " " << d;
              }
            }
  EXPECT_EQ(accepted, (7 * 4 * 1 + 1 * 4 * 2) * 3 * 3 * 2);
  quant_config c;
  for (double r : {1.0, 0.5, 1e-9, std::nextafter(0.0, 1.0)}) {
    c.clip_ratio = r;
    EXPECT_NO_THROW(int4q::validate(c)) << r;
  }
  c = quant_config{};
  for (double m : {0.0, 1e-5, 1.0, 1e30}) {
    c.min_range = m;
    EXPECT_NO_THROW(int4q::validate(c)) << m;
  }
  c = quant_config{};
  c.group_size = 1;
  EXPECT_NO_THROW(int4q::validate(c));
}

/// validate throws config_error whose message names the field.
void expect_rejected(const quant_config& c, const std::string& field) {
  try {
    int4q::validate(c);
    ADD_FAILURE() << "accepted a config with a bad " << field;
  } catch (const int4q::config_error& e) {
    EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
  }
}

TEST(Config, ValidateRejectsWithTheFieldName) {
  for (int bits : {-1, 0, 1, 9, 16}) {
    quant_config c;
    c.bits = bits;
    expect_rejected(c, "bits");
  }
  quant_config c;
  c.group_size = 0;
  expect_rejected(c, "group_size");
  for (data_type d : {data_type::nf4, data_type::fp4}) {
    for (int bits : {2, 3, 5, 8}) {
      c = quant_config{};
      c.data_type = d;
      c.bits = bits;
      expect_rejected(c, int4q::to_string(d));
    }
  }
  for (double r :
       {0.0, -0.1, 1.5, 1.0000001, std::nan(""), std::numeric_limits<double>::infinity()}) {
    c = quant_config{};
    c.clip_ratio = r;
    expect_rejected(c, "clip_ratio");
  }
  for (double m : {-1e-9, -1.0, std::nan(""), std::numeric_limits<double>::infinity(), 1e31}) {
    c = quant_config{};
    c.min_range = m;
    expect_rejected(c, "min_range");
  }
  // config_error is an int4q::error is a std::runtime_error
  c = quant_config{};
  c.bits = 1;
  EXPECT_THROW(int4q::validate(c), int4q::error);
  EXPECT_THROW(int4q::validate(c), std::runtime_error);
}

TEST(Config, GroupsHandComputed) {
  quant_config c;
  struct g {
    std::size_t gs, k, groups;
  };
  const g cases[] = {{128, 0, 0},     {128, 1, 1}, {128, 127, 1}, {128, 128, 1}, {128, 129, 2},
                     {128, 4096, 32}, {1, 7, 7},   {3, 37, 13},   {32, 37, 2},   {7, 300, 43}};
  for (const g& x : cases) {
    c.group_size = x.gs;
    EXPECT_EQ(c.effective_group_size(x.k), x.gs);
    EXPECT_EQ(c.num_groups(x.k), x.groups) << x.gs << " " << x.k;
  }
  c.granularity = grouping::per_channel;
  c.group_size = 5;  // ignored
  for (std::size_t k : {1, 2, 37, 4096}) {
    EXPECT_EQ(c.effective_group_size(k), k);
    EXPECT_EQ(c.num_groups(k), 1u);
  }
  EXPECT_EQ(c.effective_group_size(0), 1u);
  EXPECT_EQ(c.num_groups(0), 0u);
}

TEST(Config, QmaxMidAndZeroPoints) {
  const int qmax[] = {3, 7, 15, 31, 63, 127, 255};
  const int mid[] = {2, 4, 8, 16, 32, 64, 128};
  quant_config c;
  for (int bits = 2; bits <= 8; ++bits) {
    c.bits = bits;
    EXPECT_EQ(c.qmax(), qmax[bits - 2]);
    EXPECT_EQ(c.mid(), mid[bits - 2]);
  }
  for (int s = 0; s < 4; ++s) {
    for (int d = 0; d < 3; ++d) {
      c.scheme = static_cast<scheme>(s);
      c.data_type = static_cast<data_type>(d);
      EXPECT_EQ(c.has_zero_points(), s == 0 && d == 0) << s << " " << d;
      EXPECT_EQ(c.is_symmetric(), s != 0) << s;
    }
  }
}

TEST(Config, EnumNames) {
  EXPECT_STREQ(int4q::to_string(scheme::asymmetric), "asymmetric");
  EXPECT_STREQ(int4q::to_string(scheme::symmetric), "symmetric");
  EXPECT_STREQ(int4q::to_string(scheme::symmetric_full_range), "symmetric_full_range");
  EXPECT_STREQ(int4q::to_string(scheme::symmetric_offset), "symmetric_offset");
  EXPECT_STREQ(int4q::to_string(rounding::half_to_even), "half_to_even");
  EXPECT_STREQ(int4q::to_string(rounding::half_away_from_zero), "half_away_from_zero");
  EXPECT_STREQ(int4q::to_string(data_type::integer), "int");
  EXPECT_STREQ(int4q::to_string(data_type::nf4), "nf4");
  EXPECT_STREQ(int4q::to_string(data_type::fp4), "fp4");
  EXPECT_STREQ(int4q::to_string(static_cast<scheme>(42)), "?");
  EXPECT_STREQ(int4q::to_string(static_cast<data_type>(42)), "?");
}

}  // namespace
