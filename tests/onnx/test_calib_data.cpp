// Calibration/evaluation data (calib_data.hpp): the readers on bytes written here from the
// published formats (NumPy's .npy format description, PKWARE's APPNOTE for ZIP, RFC 1951 deflate
// through zlib), ONNX test data folders (made by the tests), token files, random inputs, the
// defaults for language-model inputs, and the error messages.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>
#include <unistd.h>

#include <int4q/onnx/calib_data.hpp>
#include <int4q/onnx/executor.hpp>
#include <int4q/onnx/model.hpp>

#include "onnx/add_test_data.hpp"
#include "onnx/graph_builder.hpp"
#include "onnx/npy_files.hpp"
#include "onnx/scratch_dir.hpp"

namespace {

namespace fs = std::filesystem;
namespace ox = int4q::onnx;
using int4q::test::graph_builder;

using int4q::test::npy;
using int4q::test::npy_dict;
using int4q::test::put16;
using int4q::test::raw;
using int4q::test::zip;
using int4q::test::zip64;

// ---- Files ------------------------------------------------------------------------------------

class CalibTest : public int4q::test::scratch_dir_test {
 protected:
  fs::path write(const std::string& name, const std::string& bytes) {
    const fs::path p = dir_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream out(p, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return p;
  }
};

/// Runs `fn`, expects a model_error of kind `k` whose message holds every one of `parts`.
template <class F>
void expect_error(F fn, ox::model_error::kind k, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one mentioning " << parts.at(0);
  } catch (const ox::model_error& e) {
    EXPECT_EQ(static_cast<int>(e.what_kind()), static_cast<int>(k)) << e.what();
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "'" << p << "' in: " << e.what();
  }
}

std::vector<std::int64_t> iota_ids(std::size_t n, std::int64_t from = 0) {
  std::vector<std::int64_t> v(n);
  for (std::size_t k = 0; k < n; ++k) v[k] = from + static_cast<std::int64_t>(k);
  return v;
}

/// A small language-model-like graph: input_ids [d0, d1] -> Gather(embedding [vocab, 8]) ->
/// hidden [d0, d1, 8]; attention_mask, position_ids, past_key_values.0.{key,value}
/// [d0, 4, d2, 8], use_cache_branch [1] are inputs it does not read.
ox::model lm_model(std::int64_t vocab = 10) {
  graph_builder g;
  g.input("input_ids", int4q::test::onnx_int64, {-1, -1});
  g.input("attention_mask", int4q::test::onnx_int64, {-1, -1});
  g.input("position_ids", int4q::test::onnx_int64, {-1, -1});
  g.input("past_key_values.0.key", int4q::test::onnx_float, {-1, 4, -1, 8});
  g.input("past_key_values.0.value", int4q::test::onnx_float16, {-1, 4, -1, 8});
  g.input("use_cache_branch", int4q::test::onnx_bool, {1});
  g.initializer("embedding", int4q::test::onnx_float, {vocab, 8},
                int4q::test::random_values(static_cast<std::size_t>(vocab) * 8, 7));
  g.node("Gather", {"embedding", "input_ids"}, {"hidden"}, "embed");
  g.output("hidden", int4q::test::onnx_float, {-1, -1, 8});
  return g.model();
}

// ---- .npy ---------------------------------------------------------------------------------------

TEST_F(CalibTest, NpyReadsEveryDtype) {
  // Half bits: 0x3C00 = 1, 0xC000 = -2, 0x3555 = 0.333251953125 (fp16 nearest to 1/3).
  const std::string f2 =
      npy(npy_dict("<f2", "(3,)"), raw(std::vector<std::uint16_t>{0x3C00, 0xC000, 0x3555}));
  ox::value v = ox::npy_to_value(f2, "f2");
  EXPECT_EQ(v.type, ox::value_type::float32);
  EXPECT_EQ(v.shape, (std::vector<std::int64_t>{3}));
  EXPECT_EQ(v.f, (std::vector<float>{1.0f, -2.0f, 0.333251953125f}));

  v = ox::npy_to_value(
      npy(npy_dict("<f4", "(2, 3)"), raw(std::vector<float>{1, 2, 3, 4, 5, -6.5f})), "f4");
  EXPECT_EQ(v.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(v.f, (std::vector<float>{1, 2, 3, 4, 5, -6.5f}));
  v = ox::npy_to_value(npy(npy_dict("<f8", "(2,)"), raw(std::vector<double>{0.1, -1e300})), "f8");
  EXPECT_EQ(v.f, (std::vector<float>{0.1f, -INFINITY}));

  auto ints = [](const std::string& descr, const std::string& data) {
    const ox::value r = ox::npy_to_value(npy(npy_dict(descr, "(2,)"), data), descr);
    EXPECT_EQ(r.type, ox::value_type::int64) << descr;
    return r.i;
  };
  using I = std::vector<std::int64_t>;
  EXPECT_EQ(ints("|i1", raw(std::vector<std::int8_t>{-5, 127})), (I{-5, 127}));
  EXPECT_EQ(ints("<i2", raw(std::vector<std::int16_t>{-300, 32767})), (I{-300, 32767}));
  EXPECT_EQ(ints("<i4", raw(std::vector<std::int32_t>{-70000, 5})), (I{-70000, 5}));
  EXPECT_EQ(ints("<i8", raw(std::vector<std::int64_t>{-(std::int64_t(1) << 40), 9})),
            (I{-(std::int64_t(1) << 40), 9}));
  EXPECT_EQ(ints("|u1", raw(std::vector<std::uint8_t>{200, 0})), (I{200, 0}));
  EXPECT_EQ(ints("<u2", raw(std::vector<std::uint16_t>{60000, 1})), (I{60000, 1}));
  EXPECT_EQ(ints("<u4", raw(std::vector<std::uint32_t>{4000000000u, 2})), (I{4000000000ll, 2}));
  EXPECT_EQ(ints("<u8", raw(std::vector<std::uint64_t>{std::uint64_t(1) << 62, 3})),
            (I{std::int64_t(1) << 62, 3}));

  v = ox::npy_to_value(npy(npy_dict("|b1", "(2, 2)"), std::string("\x01\x00\x00\x01", 4)), "b1");
  EXPECT_EQ(v.type, ox::value_type::boolean);
  EXPECT_EQ(v.i, (I{1, 0, 0, 1}));

  // Versions 2.0 and 3.0: a 4-byte header length; a scalar; an empty array.
  for (int major : {2, 3}) {
    v = ox::npy_to_value(npy(npy_dict("<i8", "()"), raw(std::vector<std::int64_t>{42}), major),
                         "v2");
    EXPECT_TRUE(v.shape.empty());
    EXPECT_EQ(v.i, (I{42}));
  }
  v = ox::npy_to_value(npy(npy_dict("<f4", "(0, 4)"), ""), "empty");
  EXPECT_EQ(v.shape, (std::vector<std::int64_t>{0, 4}));
  // Keys in another order, double quotes, no trailing comma: still a NumPy header.
  v = ox::npy_to_value(npy("{\"shape\": (1,), \"fortran_order\": False, \"descr\": \"<i4\"}",
                           raw(std::vector<std::int32_t>{7})),
                       "order");
  EXPECT_EQ(v.i, (I{7}));
}

TEST_F(CalibTest, NpyRefusesWhatItCannotRead) {
  using K = ox::model_error::kind;
  const std::string data = raw(std::vector<float>{1, 2, 3, 4});
  expect_error([&] { ox::npy_to_value(npy(npy_dict("<f4", "(2, 2)", true), data), "'f.npy'"); },
               K::unsupported, {"'f.npy'", "Fortran order", "C order"});
  expect_error([&] { ox::npy_to_value(npy(npy_dict(">f4", "(4,)"), data), "'b.npy'"); },
               K::unsupported, {"'b.npy'", "big-endian"});
  expect_error([&] { ox::npy_to_value(npy(npy_dict("<c8", "(2,)"), data), "'c.npy'"); },
               K::unsupported, {"'c.npy'", "<c8"});
  expect_error([&] { ox::npy_to_value(npy(npy_dict("<f4", "(5,)"), data), "'t.npy'"); }, K::invalid,
               {"'t.npy'", "truncated"});
  expect_error([&] { ox::npy_to_value("PK\x03\x04 not numpy", "'x.npy'"); }, K::invalid,
               {"'x.npy'", "not a .npy"});
  expect_error([&] { ox::npy_to_value(npy(npy_dict("<f4", "(4,)"), data, 4), "'v.npy'"); },
               K::unsupported, {"version 4.0"});
  expect_error(
      [&] {
        ox::npy_to_value(
            npy(npy_dict("<u8", "(1,)"), raw(std::vector<std::uint64_t>{~std::uint64_t(0)})),
            "'u.npy'");
      },
      K::invalid, {"'u.npy'", "int64"});
  expect_error([&] { ox::read_npy(dir_ / "missing.npy"); }, K::io, {"missing.npy"});
  const fs::path f = write("fortran.npy", npy(npy_dict("<f4", "(2, 2)", true), data));
  expect_error([&] { ox::read_npy(f); }, K::unsupported, {"fortran.npy", "Fortran"});
}

TEST_F(CalibTest, NpyWriterWritesTheFormatsBytes) {
  // '<f4' [2, 3]: the dict is 59 characters; 10 + 59 + 1 = 70, padded to 128: header length 118.
  const std::string dict_text = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  ASSERT_EQ(dict_text.size(), 59u);
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  std::string expected = std::string("\x93NUMPY\x01\x00", 8) + std::string("\x76\x00", 2) +
                         dict_text + std::string(58, ' ') + "\n" + raw(values);
  ASSERT_EQ(expected.size(), 128u + 24u);
  EXPECT_EQ(ox::npy_bytes(ox::value::floats({2, 3}, values)), expected);

  // '<i8' (4,) and '|b1' (): 1-D shapes are written "(4,)", scalars "()". Dicts of 57 and 55
  // characters: both padded to 128 bytes before the data.
  const std::string magic = std::string("\x93NUMPY\x01\x00", 8) + std::string("\x76\x00", 2);
  EXPECT_EQ(ox::npy_bytes(ox::value::ints({4}, {1, -2, 3, 1ll << 40})),
            magic + "{'descr': '<i8', 'fortran_order': False, 'shape': (4,), }" +
                std::string(60, ' ') + "\n" + raw(std::vector<std::int64_t>{1, -2, 3, 1ll << 40}));
  EXPECT_EQ(ox::npy_bytes(ox::value::ints({}, {1}, ox::value_type::boolean)),
            magic + "{'descr': '|b1', 'fortran_order': False, 'shape': (), }" +
                std::string(62, ' ') + "\n" + std::string("\x01", 1));

  const fs::path p = dir_ / "out.npy";
  ox::write_npy(p, ox::value::floats({2, 3}, values));
  std::ifstream in(p, std::ios::binary);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), expected);
  const ox::value back = ox::read_npy(p);
  EXPECT_EQ(back.f, values);
  EXPECT_EQ(back.shape, (std::vector<std::int64_t>{2, 3}));
}

// ---- .npz -------------------------------------------------------------------------------------

TEST_F(CalibTest, NpzStoredDeflatedAndZip64) {
  const std::string ids =
      npy(npy_dict("<i8", "(2, 3)"), raw(std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}));
  // Compressible enough that deflate does shrink it.
  std::vector<float> big(1000);
  for (std::size_t k = 0; k < big.size(); ++k) big[k] = static_cast<float>(k % 7);
  const std::string x = npy(npy_dict("<f4", "(10, 100)"), raw(big));
  for (const zip64 z : {zip64::none, zip64::local_only, zip64::full}) {
    for (const bool deflate : {false, true}) {
      SCOPED_TRACE(std::string(deflate ? "deflate" : "stored") + " zip64 " +
                   std::to_string(int(z)));
      const std::string bytes = zip({{"input_ids.npy", ids, deflate}, {"x.npy", x, deflate}}, z);
      if (deflate) {
        EXPECT_LT(bytes.size(), ids.size() + x.size());
      }
      const fs::path p = write("a.npz", bytes);
      const auto arrays = ox::read_npz(p);
      ASSERT_EQ(arrays.size(), 2u);
      EXPECT_EQ(arrays.at("input_ids").i, (std::vector<std::int64_t>{1, 2, 3, 4, 5, 6}));
      EXPECT_EQ(arrays.at("input_ids").shape, (std::vector<std::int64_t>{2, 3}));
      EXPECT_EQ(arrays.at("x").f, big);
      EXPECT_EQ(arrays.at("x").shape, (std::vector<std::int64_t>{10, 100}));
    }
  }
}

TEST_F(CalibTest, NpzErrors) {
  using K = ox::model_error::kind;
  const std::string ids = npy(npy_dict("<i8", "(1, 2)"), raw(std::vector<std::int64_t>{1, 2}));
  fs::path p = write("crc.npz", zip({{"input_ids.npy", ids, false}}, zip64::none, 0xFFFF, true));
  expect_error([&] { ox::read_npz(p); }, K::invalid, {"crc.npz", "input_ids.npy", "CRC"});
  p = write("crc2.npz", zip({{"input_ids.npy", ids, true}}, zip64::none, 0xFFFF, true));
  expect_error([&] { ox::read_npz(p); }, K::invalid, {"crc2.npz", "CRC"});
  p = write("bzip.npz", zip({{"input_ids.npy", ids, false}}, zip64::none, 12));
  expect_error([&] { ox::read_npz(p); }, K::unsupported, {"bzip.npz", "method 12"});
  p = write("other.npz", zip({{"readme.txt", "hello", false}}));
  expect_error([&] { ox::read_npz(p); }, K::invalid, {"other.npz", "readme.txt"});
  std::string cut = zip({{"input_ids.npy", ids, false}});
  p = write("cut.npz", cut.substr(0, cut.size() - 30));
  expect_error([&] { ox::read_npz(p); }, K::invalid, {"cut.npz"});
  p = write("notzip.npz", std::string(100, 'x'));
  expect_error([&] { ox::read_npz(p); }, K::invalid, {"notzip.npz", "end of central directory"});
}

TEST_F(CalibTest, FilesLaidOutAsNumPyWritesThem) {
  // Fixed bytes, laid out as numpy.save / savez / savez_compressed write them (numpy/lib/
  // format.py): the dict as Python's repr, shapes "(3,)" and "()", old NumPy padding the
  // preamble + header to 16 bytes, newer NumPy to 64 plus spaces that let the first axis grow
  // in place, version 2.0 / 3.0 for long or UTF-8 headers, object arrays ('|O'), which int4q
  // refuses by design, and archives whose members are arr_0.npy, arr_1.npy, written with
  // ZIP64 local headers (zipfile's force_zip64), stored or deflated. None is read from the
  // machine, so the test does not depend on what else is installed.
  using I = std::vector<std::int64_t>;
  auto numpy_file = [](const std::string& dict_text, const std::string& data, std::size_t align,
                       std::size_t growth_spaces,
                       int major) { return npy(dict_text, data, major, align, growth_spaces); };
  // Old NumPy: 16-byte alignment. '<f4' (2, 3): 10 + 59 + 1 = 70 -> 80 bytes before the data.
  const std::string f4_old =
      numpy_file(npy_dict("<f4", "(2, 3)"), raw(std::vector<float>{1, 2, 3, 4, 5, 6}), 16, 0, 1);
  ASSERT_EQ(f4_old.size(), 80u + 24u);
  ox::value v = ox::npy_to_value(f4_old, "old");
  EXPECT_EQ(v.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(v.f, (std::vector<float>{1, 2, 3, 4, 5, 6}));
  // Newer NumPy: 64-byte alignment after 21 - len(repr(shape[0])) growth spaces.
  const std::string i8_new = numpy_file(
      npy_dict("<i8", "(3,)"), raw(std::vector<std::int64_t>{-1, 0, 1ll << 50}), 64, 20, 1);
  v = ox::npy_to_value(i8_new, "new");
  EXPECT_EQ(v.shape, (std::vector<std::int64_t>{3}));
  EXPECT_EQ(v.i, (I{-1, 0, 1ll << 50}));
  const std::string u1 =
      numpy_file(npy_dict("|u1", "(2, 2)"), std::string("\x00\x7f\x80\xff", 4), 64, 20, 1);
  EXPECT_EQ(ox::npy_to_value(u1, "u1").i, (I{0, 127, 128, 255}));
  const std::string b1 = numpy_file(npy_dict("|b1", "()"), std::string("\x01", 1), 64, 0, 1);
  v = ox::npy_to_value(b1, "b1");
  EXPECT_TRUE(v.shape.empty());
  EXPECT_EQ(v.type, ox::value_type::boolean);
  EXPECT_EQ(v.i, (I{1}));
  // Versions 2.0 (a 4-byte header length) and 3.0 (the same, the header in UTF-8).
  for (int major : {2, 3}) {
    const std::string f8 =
        numpy_file(npy_dict("<f8", "(2,)"), raw(std::vector<double>{0.5, -2}), 64, 20, major);
    EXPECT_EQ(ox::npy_to_value(f8, "v" + std::to_string(major)).f, (std::vector<float>{0.5f, -2}));
  }
  // An object array (pickled Python objects): refused, naming the dtype.
  expect_error(
      [&] {
        ox::npy_to_value(numpy_file(npy_dict("|O", "(2,)"), std::string(16, '\0'), 64, 20, 1),
                         "'objects.npy'");
      },
      ox::model_error::kind::unsupported, {"'objects.npy'", "|O"});
  // np.savez (stored) and np.savez_compressed (deflated): arr_0.npy, arr_1.npy, ZIP64 locals.
  for (const bool deflate : {false, true}) {
    SCOPED_TRACE(deflate ? "savez_compressed" : "savez");
    const fs::path p = write(
        deflate ? "compressed.npz" : "stored.npz",
        zip({{"arr_0.npy", i8_new, deflate}, {"arr_1.npy", f4_old, deflate}}, zip64::local_only));
    const auto arrays = ox::read_npz(p);
    ASSERT_EQ(arrays.size(), 2u);
    EXPECT_EQ(arrays.at("arr_0").i, (I{-1, 0, 1ll << 50}));
    EXPECT_EQ(arrays.at("arr_1").f, (std::vector<float>{1, 2, 3, 4, 5, 6}));
    EXPECT_EQ(arrays.at("arr_1").shape, (std::vector<std::int64_t>{2, 3}));
  }
}

// ---- calib_data: .npy / .npz
// ---------------------------------------------------------------------

TEST_F(CalibTest, NpzFeedsALanguageModelAndFillsTheRest) {
  // 3 samples of 5 tokens as int32: attention_mask, position_ids, past and use_cache_branch are
  // filled; the samples are read by rows.
  std::vector<std::int32_t> tokens(15);
  for (std::size_t k = 0; k < tokens.size(); ++k) tokens[k] = static_cast<std::int32_t>(k % 10);
  const fs::path p =
      write("lm.npz", zip({{"input_ids.npy", npy(npy_dict("<i4", "(3, 5)"), raw(tokens)), false}}));
  const ox::model m = lm_model();
  ox::calib_options o;
  o.path = p;
  const auto data = ox::calib_data::open(m, o);
  EXPECT_EQ(data.format(), ox::data_format::npz);
  EXPECT_EQ(data.samples(), 3u);
  EXPECT_EQ(data.max_batch(), 3u);
  EXPECT_TRUE(data.warnings().empty());
  EXPECT_EQ(data.given_inputs(), (std::vector<std::string>{"input_ids"}));
  const auto feeds = data.batch(1, 2);
  ASSERT_EQ(feeds.size(), 6u);
  EXPECT_EQ(feeds.at("input_ids").shape, (std::vector<std::int64_t>{2, 5}));
  EXPECT_EQ(feeds.at("input_ids").i, (std::vector<std::int64_t>{5, 6, 7, 8, 9, 0, 1, 2, 3, 4}));
  EXPECT_EQ(feeds.at("attention_mask").shape, (std::vector<std::int64_t>{2, 5}));
  EXPECT_EQ(feeds.at("attention_mask").i, std::vector<std::int64_t>(10, 1));
  EXPECT_EQ(feeds.at("position_ids").i, (std::vector<std::int64_t>{0, 1, 2, 3, 4, 0, 1, 2, 3, 4}));
  for (const char* past : {"past_key_values.0.key", "past_key_values.0.value"}) {
    EXPECT_EQ(feeds.at(past).shape, (std::vector<std::int64_t>{2, 4, 0, 8})) << past;
    EXPECT_EQ(feeds.at(past).type, ox::value_type::float32);
    EXPECT_TRUE(feeds.at(past).f.empty());
  }
  EXPECT_EQ(feeds.at("use_cache_branch").type, ox::value_type::boolean);
  EXPECT_EQ(feeds.at("use_cache_branch").shape, (std::vector<std::int64_t>{1}));
  EXPECT_EQ(feeds.at("use_cache_branch").i, (std::vector<std::int64_t>{0}));
  // Ready for the executor.
  const auto out = ox::executor(m).run(feeds);
  EXPECT_EQ(out.at("hidden").shape, (std::vector<std::int64_t>{2, 5, 8}));

  // --samples caps: the first ones.
  o.samples = 2;
  EXPECT_EQ(ox::calib_data::open(m, o).samples(), 2u);
  EXPECT_THROW(data.batch(2, 2), int4q::shape_error);
}

TEST_F(CalibTest, DefaultsWithNamedDimensionsAndGivenMask) {
  // Named symbolic dimensions: the past's batch comes from input_ids' 'batch', its length
  // ('past_sequence_length') is 0, the heads are fixed; a float attention mask of past + sequence.
  graph_builder g;
  g.input("input_ids", int4q::test::onnx_int64, {-1, -1});
  g.input("attention_mask", int4q::test::onnx_float, {-1, -1});
  g.input("position_ids", int4q::test::onnx_int64, {-1});
  g.input("past_key.3", int4q::test::onnx_float, {-1, -1, 2, 4});
  g.input("token_type_ids", int4q::test::onnx_int64, {-1, -1});
  g.input("cache_position", int4q::test::onnx_int64, {-1});
  g.input("seqlens_k", int4q::test::onnx_int32, {-1});
  g.input("total_sequence_length", int4q::test::onnx_int32, {});
  auto& inputs = *g.graph().mutable_input();
  inputs[0].mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(0)->set_dim_param(
      "batch");
  auto* past = inputs[3].mutable_type()->mutable_tensor_type()->mutable_shape();
  past->mutable_dim(0)->set_dim_param("batch");
  past->mutable_dim(1)->set_dim_param("past_sequence_length");
  const ox::model m = g.model();
  const fs::path p = write("ids.npy", npy(npy_dict("<i8", "(4, 3)"), raw(iota_ids(12, 100))));
  ox::calib_options o;
  o.path = p;
  const auto data = ox::calib_data::open(m, o);
  EXPECT_EQ(data.format(), ox::data_format::npy);
  EXPECT_EQ(data.samples(), 4u);
  const auto f = data.batch(2, 2);
  EXPECT_EQ(f.at("input_ids").i, (std::vector<std::int64_t>{106, 107, 108, 109, 110, 111}));
  EXPECT_EQ(f.at("attention_mask").type, ox::value_type::float32);
  EXPECT_EQ(f.at("attention_mask").f, std::vector<float>(6, 1.0f));
  EXPECT_EQ(f.at("position_ids").i, (std::vector<std::int64_t>{0, 1, 2}));
  EXPECT_EQ(f.at("past_key.3").shape, (std::vector<std::int64_t>{2, 0, 2, 4}));
  EXPECT_EQ(f.at("token_type_ids").i, std::vector<std::int64_t>(6, 0));
  EXPECT_EQ(f.at("cache_position").i, (std::vector<std::int64_t>{0, 1, 2}));
  EXPECT_EQ(f.at("seqlens_k").i, (std::vector<std::int64_t>{2, 2}));
  EXPECT_TRUE(f.at("total_sequence_length").shape.empty());
  EXPECT_EQ(f.at("total_sequence_length").i, (std::vector<std::int64_t>{3}));
}

TEST_F(CalibTest, FixedFirstDimensionMeansRowsPerSample) {
  // openWakeWord's input is [1, 25, 96]: an array [4, 25, 96] is 4 samples of one row each.
  graph_builder g;
  g.input("features", int4q::test::onnx_float, {1, 2, 3});
  const ox::model m = g.model();
  std::vector<float> x(4 * 6);
  for (std::size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>(k);
  ox::calib_options o;
  o.path = write("data.npy", npy(npy_dict("<f4", "(4, 2, 3)"), raw(x)));
  const auto data = ox::calib_data::open(m, o);
  EXPECT_EQ(data.samples(), 4u);
  EXPECT_EQ(data.max_batch(), 1u);
  const auto f = data.batch(3, 1);
  EXPECT_EQ(f.at("features").shape, (std::vector<std::int64_t>{1, 2, 3}));
  EXPECT_EQ(f.at("features").f, std::vector<float>(x.begin() + 18, x.end()));
  EXPECT_THROW(data.batch(0, 2), int4q::shape_error);
  EXPECT_THROW(data.batch(4, 1), int4q::shape_error);

  // A fixed first dimension of 2: rows come in pairs.
  graph_builder g2;
  g2.input("features", int4q::test::onnx_float, {2, 3});
  ox::calib_options o2;
  o2.path = write("pairs.npy", npy(npy_dict("<f4", "(4, 3)"),
                                   raw(std::vector<float>(x.begin(), x.begin() + 12))));
  const auto pairs = ox::calib_data::open(g2.model(), o2);
  EXPECT_EQ(pairs.samples(), 2u);
  EXPECT_EQ(pairs.batch(1, 1).at("features").f, std::vector<float>(x.begin() + 6, x.begin() + 12));
  o2.path = write("odd.npy", npy(npy_dict("<f4", "(3, 3)"), raw(std::vector<float>(9))));
  expect_error([&] { ox::calib_data::open(g2.model(), o2); }, ox::model_error::kind::invalid,
               {"odd.npy", "'features'", "whole number of samples"});
}

TEST_F(CalibTest, ErrorsNameTheFileTheInputAndTheWayOut) {
  using K = ox::model_error::kind;
  const ox::model m = lm_model();
  ox::calib_options o;
  const std::string ids = npy(npy_dict("<i8", "(2, 3)"), raw(iota_ids(6)));
  // A name that is not an input: the real ones listed.
  o.path = write("typo.npz", zip({{"input_id.npy", ids, false}}));
  expect_error([&] { ox::calib_data::open(m, o); }, K::invalid,
               {"typo.npz", "'input_id'", "'input_ids' int64 [d0, d1]", "'attention_mask'"});
  // Float data for the token ids.
  o.path = write(
      "float.npz",
      zip({{"input_ids.npy", npy(npy_dict("<f4", "(2, 3)"), raw(std::vector<float>(6))), false}}));
  expect_error([&] { ox::calib_data::open(m, o); }, K::invalid,
               {"float.npz", "'input_ids'", "<f4", "integer", "astype"});
  // Rank.
  o.path = write("rank.npz",
                 zip({{"input_ids.npy", npy(npy_dict("<i8", "(6,)"), raw(iota_ids(6))), false}}));
  expect_error([&] { ox::calib_data::open(m, o); }, K::invalid,
               {"rank.npz", "'input_ids'", "rank 2"});
  // A fixed dimension.
  graph_builder g;
  g.input("x", int4q::test::onnx_float, {-1, 4});
  o.path = write("x.npy", npy(npy_dict("<f4", "(2, 5)"), raw(std::vector<float>(10))));
  expect_error([&] { ox::calib_data::open(g.model(), o); }, K::invalid,
               {"x.npy", "[2, 5]", "'x'", "dimension 1 fixed at 4"});
  // Samples that disagree.
  o.path =
      write("count.npz",
            zip({{"input_ids.npy", ids, false},
                 {"attention_mask.npy", npy(npy_dict("<i8", "(3, 3)"), raw(iota_ids(9))), false}}));
  expect_error([&] { ox::calib_data::open(m, o); }, K::invalid,
               {"count.npz", "different numbers of samples"});
  // An input without a default left out.
  graph_builder g2;
  g2.input("input_ids", int4q::test::onnx_int64, {-1, -1});
  g2.input("pixel_values", int4q::test::onnx_float, {-1, 3});
  o.path = write("ids.npz", zip({{"input_ids.npy", ids, false}}));
  expect_error([&] { ox::calib_data::open(g2.model(), o); }, K::invalid,
               {"ids.npz", "'pixel_values'"});
  // A .npy named after no input, for a model with two inputs without defaults.
  o.path = write("data.npy", ids);
  expect_error([&] { ox::calib_data::open(g2.model(), o); }, K::invalid,
               {"data.npy", "'input_ids'", "'pixel_values'", "name the file"});
  // A past whose head count is symbolic and named nowhere else.
  graph_builder g3;
  g3.input("input_ids", int4q::test::onnx_int64, {-1, -1});
  g3.input("past_value.0", int4q::test::onnx_float, {-1, -1, -1, 8});
  g3.graph()
      .mutable_input(1)
      ->mutable_type()
      ->mutable_tensor_type()
      ->mutable_shape()
      ->mutable_dim(1)
      ->set_dim_param("num_heads");
  o.path = write("input_ids.npy", ids);
  expect_error([&] { ox::calib_data::open(g3.model(), o); }, K::invalid,
               {"'past_value.0'", "'num_heads'", "give it in the data"});
  // A token file for a model without token ids.
  o.path = write("tokens.u8", std::string(64, 'a'));
  expect_error([&] { ox::calib_data::open(g.model(), o); }, K::invalid,
               {"tokens.u8", "token", "'x' float32"});
  // Missing file.
  o.path = dir_ / "missing.npz";
  expect_error([&] { ox::calib_data::open(m, o); }, K::io, {"missing.npz"});
}

// ---- calib_data: ONNX test data ----------------------------------------------------------------

ox::value pb_value(const fs::path& p) {
  ::onnx::TensorProto t;
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(t.ParseFromIstream(&in)) << p;
  return ox::to_value(ox::model{}, t);
}

TEST_F(CalibTest, OnnxTestDataFolders) {
  const fs::path onnx_test_add = int4q::test::write_add_test(dir_ / "test_add");
  const ox::model m = ox::load_model(onnx_test_add / "model.onnx");
  const fs::path set0 = onnx_test_add / "test_data_set_0";
  for (const fs::path& p : {set0, onnx_test_add}) {  // one set, or a folder of sets
    ox::calib_options o;
    o.path = p;
    const auto data = ox::calib_data::open(m, o);
    EXPECT_EQ(data.format(), ox::data_format::onnx_pb);
    ASSERT_EQ(data.samples(), 1u);
    const auto feeds = data.batch(0, 1);
    EXPECT_EQ(feeds.at("x").f, pb_value(set0 / "input_0.pb").f);
    EXPECT_EQ(feeds.at("y").f, pb_value(set0 / "input_1.pb").f);
    // ONNX's expected output, exactly (one float addition per element).
    const auto out = ox::executor(m).run(feeds);
    EXPECT_EQ(out.at("sum").f, pb_value(set0 / "output_0.pb").f);
  }

  // Two sets; in the second the tensors carry names, in the opposite order of the files.
  ::onnx::TensorProto x, y;
  {
    std::ifstream a(set0 / "input_0.pb", std::ios::binary),
        b(set0 / "input_1.pb", std::ios::binary);
    ASSERT_TRUE(x.ParseFromIstream(&a) && y.ParseFromIstream(&b));
  }
  fs::create_directories(dir_ / "sets" / "test_data_set_0");
  fs::copy(set0 / "input_0.pb", dir_ / "sets" / "test_data_set_0" / "input_0.pb");
  fs::copy(set0 / "input_1.pb", dir_ / "sets" / "test_data_set_0" / "input_1.pb");
  x.set_name("x");
  y.set_name("y");
  write("sets/test_data_set_1/input_0.pb", y.SerializeAsString());
  write("sets/test_data_set_1/input_1.pb", x.SerializeAsString());
  ox::calib_options o;
  o.path = dir_ / "sets";
  const auto data = ox::calib_data::open(m, o);
  ASSERT_EQ(data.samples(), 2u);
  EXPECT_EQ(data.max_batch(), 1u) << "x and y have a fixed first dimension";
  EXPECT_EQ(data.batch(1, 1).at("x").f, pb_value(set0 / "input_0.pb").f);
  EXPECT_EQ(data.batch(1, 1).at("y").f, pb_value(set0 / "input_1.pb").f);

  // A name that is not an input; a type that does not fit.
  x.set_name("z");
  write("bad/input_0.pb", x.SerializeAsString());
  o.path = dir_ / "bad";
  expect_error([&] { ox::calib_data::open(m, o); }, ox::model_error::kind::invalid,
               {"input_0.pb", "'z'", "'x' float32 [3, 4, 5]", "'y' float32"});
  ::onnx::TensorProto ints;
  ints.set_data_type(::onnx::TensorProto::INT64);
  for (int d : {3, 4, 5}) ints.add_dims(d);
  for (int k = 0; k < 60; ++k) ints.add_int64_data(k);
  write("ints/input_0.pb", ints.SerializeAsString());
  write("ints/input_1.pb", y.SerializeAsString());
  o.path = dir_ / "ints";
  expect_error([&] { ox::calib_data::open(m, o); }, ox::model_error::kind::invalid,
               {"input_0.pb", "int64", "'x'", "float"});
}

// ---- calib_data: token files and random inputs --------------------------------------------------

TEST_F(CalibTest, TokenFilesCutIntoEvenlySpacedWindows) {
  // 100 tokens 0..99 (mod 50); 4 windows of 10 start at floor(i * 90 / 3) = 0, 30, 60, 90.
  std::string u8(100, '\0'), u16;
  for (int k = 0; k < 100; ++k) {
    u8[k] = static_cast<char>(k % 50);
    put16(u16, static_cast<std::uint32_t>(k % 50));
  }
  const ox::model m = lm_model(50);
  ox::calib_options o;
  o.seq_len = 10;
  o.samples = 4;
  for (const bool wide : {false, true}) {
    o.path = write(wide ? "t.u16" : "t.u8", wide ? u16 : u8);
    o.tokens = wide ? ox::token_dtype::u16 : ox::token_dtype::u8;
    const auto data = ox::calib_data::open(m, o);
    EXPECT_EQ(data.format(), ox::data_format::tokens);
    EXPECT_EQ(data.samples(), 4u);
    const auto f = data.batch(1, 3);
    std::vector<std::int64_t> expected;
    for (int start : {30, 60, 90})
      for (int t = 0; t < 10; ++t) expected.push_back((start + t) % 50);
    EXPECT_EQ(f.at("input_ids").shape, (std::vector<std::int64_t>{3, 10}));
    EXPECT_EQ(f.at("input_ids").i, expected);
    EXPECT_EQ(f.at("attention_mask").shape, (std::vector<std::int64_t>{3, 10}));
  }
  // Tokens beyond the vocabulary (here 40: window 3 starts at 90, token 40) are an error naming
  // the file and the position.
  o.path = dir_ / "t.u8";
  o.tokens = ox::token_dtype::u8;
  const auto small = ox::calib_data::open(lm_model(40), o);
  expect_error([&] { small.batch(3, 1); }, ox::model_error::kind::invalid,
               {"t.u8", "token 40", "position 90"});
  // A length that is not a whole number of tokens; a file shorter than a window.
  o.path = write("odd.i32", std::string(10, '\0'));
  o.tokens = ox::token_dtype::i32;
  expect_error([&] { ox::calib_data::open(m, o); }, ox::model_error::kind::invalid,
               {"odd.i32", "i32"});
  o.path = write("short.u8", std::string(5, '\1'));
  o.tokens = ox::token_dtype::u8;
  expect_error([&] { ox::calib_data::open(m, o); }, ox::model_error::kind::invalid,
               {"short.u8", "5 tokens"});
  EXPECT_EQ(ox::parse_token_dtype("uint16"), ox::token_dtype::u16);
  EXPECT_THROW(ox::parse_token_dtype("f32"), int4q::config_error);
}

TEST_F(CalibTest, RandomInputsWarnAndAreReproducible) {
  graph_builder g;
  g.input("x", int4q::test::onnx_float, {-1, 3, -1});
  const ox::model m = g.model();
  ox::calib_options o;
  o.samples = 3;
  o.seq_len = 5;
  o.seed = 7;
  const auto data = ox::calib_data::open(m, o);
  EXPECT_EQ(data.format(), ox::data_format::random);
  ASSERT_EQ(data.warnings().size(), 1u);
  EXPECT_NE(data.warnings()[0].find("random"), std::string::npos) << data.warnings()[0];
  const auto all = data.batch(0, 3).at("x");
  EXPECT_EQ(all.shape, (std::vector<std::int64_t>{3, 3, 5}));
  // The same samples whatever the batching, and again for the same seed; another seed differs.
  const auto one = data.batch(1, 1).at("x");
  EXPECT_EQ(one.f, std::vector<float>(all.f.begin() + 15, all.f.begin() + 30));
  EXPECT_EQ(ox::calib_data::open(m, o).batch(0, 3).at("x").f, all.f);
  o.seed = 8;
  EXPECT_NE(ox::calib_data::open(m, o).batch(0, 3).at("x").f, all.f);
  // Roughly N(0, 1): mean and variance over 45 values (loose: a sanity check, not a test of
  // the generator).
  double sum = 0, sq = 0;
  for (float v : all.f) sum += v, sq += double(v) * v;
  EXPECT_LT(std::fabs(sum / 45), 0.5);
  EXPECT_GT(sq / 45, 0.4);
  EXPECT_LT(sq / 45, 2.0);

  // A language model: token ids uniform below the vocabulary of the Gather table (13), the
  // other inputs filled.
  const auto lm = ox::calib_data::open(lm_model(13), o);
  ASSERT_EQ(lm.warnings().size(), 1u);
  EXPECT_NE(lm.warnings()[0].find("[0, 13)"), std::string::npos) << lm.warnings()[0];
  const auto f = lm.batch(0, 3);
  EXPECT_EQ(f.at("input_ids").shape, (std::vector<std::int64_t>{3, 5}));
  std::int64_t lo = 99, hi = -1;
  for (auto t : f.at("input_ids").i) lo = std::min(lo, t), hi = std::max(hi, t);
  EXPECT_GE(lo, 0);
  EXPECT_LT(hi, 13);
  EXPECT_GT(hi, lo);
  EXPECT_EQ(f.at("attention_mask").shape, (std::vector<std::int64_t>{3, 5}));
  EXPECT_NO_THROW(ox::executor(lm_model(13)).run(f));
}

TEST_F(CalibTest, RandomInputsLargerThanTheLimitAreRefusedBeforeAnything) {
  // x [-1, 3, -1] with seq_len 5: one sample is [1, 3, 5] floats, 60 bytes.
  graph_builder g;
  g.input("x", int4q::test::onnx_float, {-1, 3, -1});
  const ox::model m = g.model();
  ox::calib_options o;
  o.samples = 2;
  o.seq_len = 5;
  o.max_sample_bytes = 60;
  EXPECT_NO_THROW((void)ox::calib_data::open(m, o));
  o.max_sample_bytes = 59;
  try {
    (void)ox::calib_data::open(m, o);
    ADD_FAILURE() << "60 bytes per sample passed a limit of 59";
  } catch (const int4q::config_error& e) {
    const std::string what = e.what();
    for (const char* part : {"'x'", "[1, 3, 5]", "sequence length, 5"})
      EXPECT_NE(what.find(part), std::string::npos) << part << " not in: " << what;
  }
  // A sequence length whose byte count passes 64 bits is refused, not wrapped around.
  o.max_sample_bytes = std::uint64_t(1) << 40;
  o.seq_len = std::size_t(1) << 62;
  EXPECT_THROW((void)ox::calib_data::open(m, o), int4q::config_error);
  // Token ids of a language model: 8 bytes each.
  o.seq_len = 4;
  o.max_sample_bytes = 31;
  EXPECT_THROW((void)ox::calib_data::open(lm_model(13), o), int4q::config_error);
  o.max_sample_bytes = 32;
  EXPECT_NO_THROW((void)ox::calib_data::open(lm_model(13), o));
}

}  // namespace
