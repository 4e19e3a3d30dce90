// <int4q/onnx/option_error.hpp>: check_quantize_options throws option_error naming the field at
// fault (and the override), with messages that name quantize_options' fields, never CLI flags.
#include <string>

#include <gtest/gtest.h>

#include <int4q/onnx/auto_quantize.hpp>
#include <int4q/onnx/option_error.hpp>

namespace {

namespace ox = int4q::onnx;

/// The option_error check_quantize_options throws for `q` (fails when none).
ox::option_error refusal(const ox::quantize_options& q) {
  try {
    ox::check_quantize_options(q);
  } catch (const ox::option_error& e) {
    EXPECT_EQ(std::string(e.what()).find("--"), std::string::npos) << e.what();
    return e;
  }
  ADD_FAILURE() << "no option_error";
  return ox::option_error(ox::model_error::kind::unsupported, "", "");
}

ox::quantize_options options(ox::output_format f, int bits, std::size_t group) {
  ox::quantize_options q;
  q.format = f;
  q.config.bits = bits;
  q.config.group_size = group;
  return q;
}

TEST(OptionError, NamesTheFieldAtFault) {
  const auto mnb = ox::output_format::matmulnbits, qdq = ox::output_format::qdq;
  ox::option_error e = refusal(options(mnb, 4, 48));
  EXPECT_EQ(e.field(), "config.group_size");
  EXPECT_EQ(e.what_kind(), ox::model_error::kind::unsupported);
  EXPECT_EQ(std::string(e.what()),
            "`config.group_size = 48` cannot be stored by MatMulNBits (power of two 16..256): "
            "use `format = qdq` or a group size of 32/64/128");
  EXPECT_FALSE(e.override_index());
  EXPECT_EQ(refusal(options(mnb, 3, 32)).field(), "config.bits");
  EXPECT_EQ(refusal(options(qdq, 2, 32)).field(), "config.bits");

  auto acc = options(qdq, 4, 32);
  acc.accuracy_level = 4;
  EXPECT_EQ(refusal(acc).field(), "accuracy_level");

  auto regex = options(mnb, 4, 32);
  regex.exclude = {"a("};
  e = refusal(regex);
  EXPECT_EQ(e.field(), "exclude");
  EXPECT_EQ(e.what_kind(), ox::model_error::kind::invalid);

  auto act = options(qdq, 4, 32);
  act.gptq.act_order = true;
  act.gptq.static_groups = false;
  EXPECT_EQ(refusal(act).field(), "gptq.static_groups");
  act.config.granularity = int4q::grouping::per_channel;
  EXPECT_NO_THROW(ox::check_quantize_options(act));
}

TEST(OptionError, AnOverrideIsNamedByIndexAndLabel) {
  auto q = options(ox::output_format::matmulnbits, 4, 32);
  q.overrides.resize(2);
  q.overrides[0].match = "a";
  q.overrides[1].match = "mlp";
  q.overrides[1].bits = 3;
  const ox::option_error e = refusal(q);
  EXPECT_EQ(e.field(), "config.bits");
  ASSERT_TRUE(e.override_index());
  EXPECT_EQ(*e.override_index(), 1u);
  EXPECT_EQ(e.where(), "override #1 ('mlp'): ");
  EXPECT_EQ(std::string(e.what()), e.where() + e.message());
  q.overrides[1].skip = true;  // a skipped weight has no grid to check
  EXPECT_NO_THROW(ox::check_quantize_options(q));
}

TEST(OptionError, AutoCandidatesAreCheckedLikeTheOptions) {
  auto q = options(ox::output_format::qdq, 4, 32);
  ox::auto_options a;
  a.effective_bits = 4.5;
  a.candidates = {ox::parse_candidate("int2-g32")};
  try {
    ox::check_auto_options(q, a);
    FAIL() << "no error";
  } catch (const ox::option_error& e) {
    EXPECT_EQ(e.field(), "candidates");
    EXPECT_NE(std::string(e.what()).find("`candidates` 'int2-g32': `config.bits = 2`"),
              std::string::npos)
        << e.what();
  }
  a.candidates = {ox::parse_candidate("int8-channel"), ox::parse_candidate("none")};
  EXPECT_NO_THROW(ox::check_auto_options(q, a));
}

}  // namespace
