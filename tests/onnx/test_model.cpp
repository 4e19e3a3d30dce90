// Tests for int4q::onnx load_model / save_model / tensor payloads
// (adapters/onnx/model/src/model.cpp).
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <int4q/float16.hpp>
#include <int4q/onnx/model.hpp>

#include "onnx/graph_builder.hpp"

namespace {

namespace fs = std::filesystem;
using int4q::onnx::elem_type;
using int4q::onnx::external_data;
using int4q::onnx::model;
using int4q::onnx::model_error;
using int4q::onnx::save_options;
using ::onnx::TensorProto;
using kind = model_error::kind;

// ---- Helpers (local to this file) ---------------------------------------------------------------

// A fresh directory under the system temp directory, removed with its content at the end.
class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("int4q_test_model_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  std::set<std::string> files() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.insert(e.path().filename().string());
    return names;
  }

 private:
  fs::path path_;
};

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::uint8_t> bytes_of(const std::string& s) {
  return std::vector<std::uint8_t>(s.begin(), s.end());
}

// Deterministic pattern bytes, different per seed.
std::string pattern(std::size_t size, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(size, '\0');
  for (auto& c : s) c = static_cast<char>(rng() & 0xff);
  return s;
}

TensorProto raw_tensor(const std::string& name, int type, const std::vector<std::int64_t>& dims,
                       const std::string& bytes) {
  return int4q::onnx::make_tensor(name, type, dims, bytes.data(), bytes.size());
}

using int4q::test::set_external;

// y = MatMul(x, w0) + b, z = MatMul(y, w1): four float initializers of different sizes, one
// int64 (typed field) and a Constant node with a tensor value.
::onnx::ModelProto small_proto() {
  ::onnx::ModelProto p;
  p.set_ir_version(8);
  p.set_producer_name("int4q-test");
  auto* op = p.add_opset_import();
  op->set_domain("");
  op->set_version(17);
  auto* g = p.mutable_graph();
  g->set_name("g");
  *g->add_initializer() = raw_tensor("w0", TensorProto::FLOAT, {16, 32}, pattern(16 * 32 * 4, 1));
  *g->add_initializer() = raw_tensor("b", TensorProto::FLOAT, {32}, pattern(32 * 4, 2));
  *g->add_initializer() =
      raw_tensor("w1", TensorProto::FLOAT16, {32, 300}, pattern(32 * 300 * 2, 3));
  TensorProto shape;
  shape.set_name("shape");
  shape.set_data_type(TensorProto::INT64);
  shape.add_dims(2);
  shape.add_int64_data(-1);
  shape.add_int64_data(300);
  *g->add_initializer() = shape;
  auto* c = g->add_node();
  c->set_op_type("Constant");
  c->set_name("const0");
  c->add_output("c0");
  auto* a = c->add_attribute();
  a->set_name("value");
  a->set_type(::onnx::AttributeProto::TENSOR);
  *a->mutable_t() = raw_tensor("", TensorProto::FLOAT, {4}, pattern(16, 4));
  auto* n0 = g->add_node();
  n0->set_op_type("MatMul");
  n0->set_name("mm0");
  n0->add_input("x");
  n0->add_input("w0");
  n0->add_output("h");
  auto* n1 = g->add_node();
  n1->set_op_type("Add");
  n1->add_input("h");
  n1->add_input("b");
  n1->add_output("y");
  auto* n2 = g->add_node();
  n2->set_op_type("MatMul");
  n2->set_name("mm1");
  n2->add_input("y");
  n2->add_input("w1");
  n2->add_output("z");
  g->add_input()->set_name("x");
  g->add_output()->set_name("z");
  return p;
}

model in_memory(::onnx::ModelProto p) {
  model m;
  m.proto = std::move(p);
  return m;
}

const TensorProto& initializer(const model& m, const std::string& name) {
  for (const auto& t : m.proto.graph().initializer()) {
    if (t.name() == name) return t;
  }
  throw std::runtime_error("no initializer " + name);
}

std::string external_value(const TensorProto& t, const std::string& key) {
  for (const auto& e : t.external_data()) {
    if (e.key() == key) return e.value();
  }
  return "";
}

// Runs `f`, expects a model_error of kind `k` whose message contains `needle`.
void expect_model_error(const std::function<void()>& f, kind k, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no model_error thrown (expected one containing '" << needle << "')";
  } catch (const model_error& e) {
    EXPECT_EQ(static_cast<int>(e.what_kind()), static_cast<int>(k)) << e.what();
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message: " << e.what() << "\nexpected to contain: " << needle;
  }
}

// Every initializer of `a` has the same payload bytes in `b` (read through read_tensor_bytes).
void expect_same_payloads(const model& a, const model& b) {
  ASSERT_EQ(a.proto.graph().initializer_size(), b.proto.graph().initializer_size());
  for (int i = 0; i < a.proto.graph().initializer_size(); ++i) {
    const TensorProto& ta = a.proto.graph().initializer(i);
    const TensorProto& tb = b.proto.graph().initializer(i);
    EXPECT_EQ(ta.name(), tb.name());
    EXPECT_EQ(ta.data_type(), tb.data_type());
    EXPECT_EQ(int4q::onnx::read_tensor_bytes(a, ta), int4q::onnx::read_tensor_bytes(b, tb))
        << "initializer " << ta.name();
  }
}

save_options inline_only() {
  save_options o;
  o.mode = external_data::never;
  return o;
}

// ---- Element types and tensors ------------------------------------------------------------------

TEST(ModelElemType, NamesAndSizes) {
  using int4q::onnx::elem_type_of;
  EXPECT_EQ(elem_type_of(TensorProto::FLOAT), elem_type::float32);
  EXPECT_EQ(elem_type_of(TensorProto::FLOAT16), elem_type::float16);
  EXPECT_EQ(elem_type_of(TensorProto::BFLOAT16), elem_type::bfloat16);
  EXPECT_EQ(elem_type_of(TensorProto::DOUBLE), elem_type::float64);
  EXPECT_EQ(elem_type_of(TensorProto::INT8), elem_type::other);
  EXPECT_EQ(elem_type_of(22), elem_type::other);
  EXPECT_STREQ(int4q::onnx::to_string(elem_type::float32), "float32");
  EXPECT_STREQ(int4q::onnx::to_string(elem_type::float16), "float16");
  EXPECT_STREQ(int4q::onnx::to_string(elem_type::bfloat16), "bfloat16");
  EXPECT_STREQ(int4q::onnx::to_string(elem_type::float64), "float64");
  EXPECT_STREQ(int4q::onnx::to_string(elem_type::other), "other");
  EXPECT_EQ(int4q::onnx::elem_size(elem_type::float32), 4u);
  EXPECT_EQ(int4q::onnx::elem_size(elem_type::float16), 2u);
  EXPECT_EQ(int4q::onnx::elem_size(elem_type::bfloat16), 2u);
  EXPECT_EQ(int4q::onnx::elem_size(elem_type::float64), 8u);
  EXPECT_EQ(int4q::onnx::elem_size(elem_type::other), 0u);
}

TEST(ModelTensor, PayloadBytesFromDimsAndType) {
  TensorProto t;
  t.set_data_type(TensorProto::FLOAT);
  t.add_dims(3);
  t.add_dims(4);
  EXPECT_EQ(int4q::onnx::tensor_payload_bytes(t), 48u);
  t.set_data_type(22);  // INT4: two per byte, rounded up
  t.set_dims(1, 5);
  EXPECT_EQ(int4q::onnx::tensor_payload_bytes(t), 8u);
  t.set_data_type(TensorProto::STRING);
  EXPECT_FALSE(int4q::onnx::tensor_payload_bytes(t).has_value());
  t.set_data_type(TensorProto::FLOAT);
  t.set_dims(0, -1);
  EXPECT_FALSE(int4q::onnx::tensor_payload_bytes(t).has_value());
  t.clear_dims();  // a scalar
  EXPECT_EQ(int4q::onnx::tensor_payload_bytes(t), 4u);
}

TEST(ModelTensor, MakeTensorChecksTheSize) {
  const std::string bytes(12, '\1');
  const TensorProto t = int4q::onnx::make_tensor("t", TensorProto::FLOAT, {3}, bytes.data(), 12);
  EXPECT_EQ(t.name(), "t");
  EXPECT_EQ(t.raw_data(), bytes);
  ASSERT_EQ(t.dims_size(), 1);
  EXPECT_EQ(t.dims(0), 3);
  EXPECT_THROW(int4q::onnx::make_tensor("t", TensorProto::FLOAT, {4}, bytes.data(), 12),
               int4q::shape_error);
}

TEST(ModelTensor, MakeFloatTensorRoundTripsEveryFloatType) {
  // Values exact in fp16 and bf16.
  const std::vector<float> v = {0.5f, -1.25f, 3.0f, 1024.0f, 0.0f, -0.0078125f};
  const model m;
  for (const elem_type type :
       {elem_type::float32, elem_type::float16, elem_type::bfloat16, elem_type::float64}) {
    const TensorProto t = int4q::onnx::make_float_tensor("w", type, {2, 3}, v.data(), v.size());
    EXPECT_EQ(t.raw_data().size(), v.size() * int4q::onnx::elem_size(type));
    const auto w = int4q::onnx::read_matrix(m, t);
    ASSERT_EQ(w.shape()[0], 2u);
    ASSERT_EQ(w.shape()[1], 3u);
    for (std::size_t i = 0; i < v.size(); ++i) {
      EXPECT_EQ(w(i / 3, i % 3), v[i]) << int4q::onnx::to_string(type) << " index " << i;
    }
  }
  EXPECT_THROW(int4q::onnx::make_float_tensor("w", elem_type::other, {1}, v.data(), 1),
               int4q::error);
  EXPECT_THROW(int4q::onnx::make_float_tensor("w", elem_type::float32, {4}, v.data(), 3),
               int4q::shape_error);
}

// ---- Reading payloads ---------------------------------------------------------------------------

TEST(ModelRead, HalfBfloatAndDoubleRawDataAgainstHandValues) {
  const model m;
  // fp16: 1, -2, 0x3555 = 0.333251953125, smallest subnormal 2^-24, 65504, -inf.
  const std::uint16_t h[] = {0x3C00, 0xC000, 0x3555, 0x0001, 0x7BFF, 0xFC00};
  TensorProto th = int4q::onnx::make_tensor("h", TensorProto::FLOAT16, {2, 3}, h, sizeof h);
  const auto wh = int4q::onnx::read_matrix(m, th);
  EXPECT_EQ(wh(0, 0), 1.0f);
  EXPECT_EQ(wh(0, 1), -2.0f);
  EXPECT_EQ(wh(0, 2), 0.333251953125f);
  EXPECT_EQ(wh(1, 0), 5.9604644775390625e-8f);
  EXPECT_EQ(wh(1, 1), 65504.0f);
  EXPECT_EQ(wh(1, 2), -std::numeric_limits<float>::infinity());
  // bf16: 1, -3, 0x3E20 = 0.15625, 0x4049 = 3.140625.
  const std::uint16_t b[] = {0x3F80, 0xC040, 0x3E20, 0x4049};
  const auto wb = int4q::onnx::read_matrix(
      m, int4q::onnx::make_tensor("b", TensorProto::BFLOAT16, {2, 2}, b, sizeof b));
  EXPECT_EQ(wb(0, 0), 1.0f);
  EXPECT_EQ(wb(0, 1), -3.0f);
  EXPECT_EQ(wb(1, 0), 0.15625f);
  EXPECT_EQ(wb(1, 1), 3.140625f);
  // fp64: rounded to float.
  const double d[] = {0.1, -2.5};
  const auto wd = int4q::onnx::read_vector(
      m, int4q::onnx::make_tensor("d", TensorProto::DOUBLE, {2}, d, sizeof d));
  EXPECT_EQ(wd(0), 0.1f);
  EXPECT_EQ(wd(1), -2.5f);
}

TEST(ModelRead, TypedFields) {
  const model m;
  TensorProto f;  // float_data
  f.set_data_type(TensorProto::FLOAT);
  f.add_dims(1);
  f.add_dims(3);
  for (const float x : {1.5f, -2.0f, 0.25f}) f.add_float_data(x);
  const auto wf = int4q::onnx::read_matrix(m, f);
  EXPECT_EQ(wf(0, 0), 1.5f);
  EXPECT_EQ(wf(0, 1), -2.0f);
  EXPECT_EQ(wf(0, 2), 0.25f);
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, f).size(), 12u);

  TensorProto h;  // fp16 bits as uint16 in int32_data
  h.set_data_type(TensorProto::FLOAT16);
  h.add_dims(2);
  h.add_int32_data(0x3C00);
  h.add_int32_data(0xC400);  // -4
  const auto wh = int4q::onnx::read_vector(m, h);
  EXPECT_EQ(wh(0), 1.0f);
  EXPECT_EQ(wh(1), -4.0f);
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, h),
            (std::vector<std::uint8_t>{0x00, 0x3C, 0x00, 0xC4}));

  TensorProto bf;  // bf16 bits in int32_data
  bf.set_data_type(TensorProto::BFLOAT16);
  bf.add_dims(2);
  bf.add_int32_data(0x4000);  // 2
  bf.add_int32_data(0xBF00);  // -0.5
  const auto wbf = int4q::onnx::read_vector(m, bf);
  EXPECT_EQ(wbf(0), 2.0f);
  EXPECT_EQ(wbf(1), -0.5f);

  TensorProto d;  // double_data
  d.set_data_type(TensorProto::DOUBLE);
  d.add_dims(2);
  d.add_double_data(0.75);
  d.add_double_data(-8.0);
  const auto wd = int4q::onnx::read_vector(m, d);
  EXPECT_EQ(wd(0), 0.75f);
  EXPECT_EQ(wd(1), -8.0f);

  // Empty tensors (dims [0] and [0, 3], of every float type): empty results (found by
  // tests/fuzz: memcpy was given null pointers, undefined behaviour that UBSan reports).
  for (const auto type : {TensorProto::FLOAT, TensorProto::FLOAT16, TensorProto::DOUBLE}) {
    TensorProto e;
    e.set_data_type(type);
    e.add_dims(0);
    EXPECT_EQ(int4q::onnx::read_vector(m, e).size(), 0u);
    e.add_dims(3);
    EXPECT_EQ(int4q::onnx::read_matrix(m, e).size(), 0u);
  }

  TensorProto i8;  // int8 in int32_data: one byte each
  i8.set_data_type(TensorProto::INT8);
  i8.add_dims(3);
  i8.add_int32_data(-1);
  i8.add_int32_data(127);
  i8.add_int32_data(-128);
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, i8), (std::vector<std::uint8_t>{0xFF, 0x7F, 0x80}));

  TensorProto i32;
  i32.set_data_type(TensorProto::INT32);
  i32.add_dims(1);
  i32.add_int32_data(0x01020304);
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, i32),
            (std::vector<std::uint8_t>{0x04, 0x03, 0x02, 0x01}));

  TensorProto i64;
  i64.set_data_type(TensorProto::INT64);
  i64.add_dims(1);
  i64.add_int64_data(-2);
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, i64),
            std::vector<std::uint8_t>({0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF}));
}

TEST(ModelRead, InconsistentOrUnreadableTensors) {
  const model m;
  TensorProto f;
  f.set_name("short");
  f.set_data_type(TensorProto::FLOAT);
  f.add_dims(4);
  f.add_float_data(1.0f);
  expect_model_error([&] { int4q::onnx::read_tensor_bytes(m, f); }, kind::invalid, "'short'");

  TensorProto r;
  r.set_name("raw");
  r.set_data_type(TensorProto::FLOAT);
  r.add_dims(2);
  r.set_raw_data(std::string(7, '\0'));
  expect_model_error([&] { int4q::onnx::read_tensor_bytes(m, r); }, kind::invalid, "'raw'");

  TensorProto s;
  s.set_name("strings");
  s.set_data_type(TensorProto::STRING);
  s.add_dims(1);
  s.add_string_data("x");
  expect_model_error([&] { int4q::onnx::read_tensor_bytes(m, s); }, kind::unsupported, "'strings'");

  const float v[4] = {};
  const TensorProto w = int4q::onnx::make_float_tensor("vec", elem_type::float32, {4}, v, 4);
  expect_model_error([&] { int4q::onnx::read_matrix(m, w); }, kind::unsupported, "2-D");
  const std::int8_t q[4] = {};
  const TensorProto i8 = int4q::onnx::make_tensor("q", TensorProto::INT8, {2, 2}, q, 4);
  expect_model_error([&] { int4q::onnx::read_matrix(m, i8); }, kind::unsupported, "'q'");
}

// ---- Save and load ------------------------------------------------------------------------------

TEST(ModelSave, InlineRoundTripIsProtobufsOwnSerialization) {
  temp_dir dir;
  const model m = in_memory(small_proto());
  const std::string before = m.proto.SerializeAsString();
  int4q::onnx::save_model(m, dir / "m.onnx", inline_only());
  EXPECT_EQ(m.proto.SerializeAsString(), before) << "save_model changed its input";
  // The streaming writer puts every field where protobuf itself would.
  EXPECT_EQ(read_file(dir / "m.onnx"), before);
  EXPECT_EQ(dir.files(), (std::set<std::string>{"m.onnx"}));

  const model back = int4q::onnx::load_model(dir / "m.onnx");
  EXPECT_EQ(back.path, dir / "m.onnx");
  EXPECT_EQ(back.base_dir, dir.path());
  expect_same_payloads(m, back);

  // automatic: a small model stays inline.
  int4q::onnx::save_model(m, dir / "auto.onnx");
  EXPECT_EQ(read_file(dir / "auto.onnx"), before);
  EXPECT_FALSE(fs::exists(dir / "auto.onnx.data"));
}

TEST(ModelSave, ExternalAlwaysRoundTrip) {
  temp_dir dir;
  ::onnx::ModelProto p = small_proto();
  // A float_data initializer big enough to go external: converted to raw bytes on the way.
  TensorProto typed;
  typed.set_name("typed");
  typed.set_data_type(TensorProto::FLOAT);
  typed.add_dims(100);
  for (int i = 0; i < 100; ++i) typed.add_float_data(static_cast<float>(i) * 0.5f);
  *p.mutable_graph()->add_initializer() = typed;
  const model m = in_memory(p);
  save_options o;
  o.mode = external_data::always;
  o.external_min_bytes = 100;
  int4q::onnx::save_model(m, dir / "m.onnx", o);
  EXPECT_EQ(dir.files(), (std::set<std::string>{"m.onnx", "m.onnx.data"}));

  const model back = int4q::onnx::load_model(dir / "m.onnx");
  for (const std::string name : {"w0", "b", "w1", "typed"}) {
    const TensorProto& t = initializer(back, name);
    EXPECT_TRUE(int4q::onnx::is_external(t)) << name;
    EXPECT_FALSE(t.has_raw_data()) << name;
    EXPECT_EQ(t.float_data_size(), 0) << name;
    EXPECT_EQ(external_value(t, "location"), "m.onnx.data");
    EXPECT_EQ(std::stoull(external_value(t, "offset")) % 64, 0u) << name;
    EXPECT_EQ(std::stoull(external_value(t, "length")), *int4q::onnx::tensor_payload_bytes(t));
  }
  EXPECT_FALSE(int4q::onnx::is_external(initializer(back, "shape")));  // 16 bytes < 100
  // The Constant node's tensor is not an initializer: it stays inline.
  EXPECT_EQ(back.proto.graph().node(0).attribute(0).t().raw_data(),
            m.proto.graph().node(0).attribute(0).t().raw_data());
  expect_same_payloads(m, back);

  // Saved again inline from the external copy: byte-identical to the original (typed aside).
  const model m2 = in_memory(small_proto());
  int4q::onnx::save_model(int4q::onnx::load_model(dir / "m.onnx"), dir / "inline.onnx",
                          inline_only());
  const model back2 = int4q::onnx::load_model(dir / "inline.onnx");
  for (const std::string name : {"w0", "b", "w1"}) {
    EXPECT_EQ(initializer(back2, name).raw_data(), initializer(m2, name).raw_data()) << name;
    EXPECT_FALSE(int4q::onnx::is_external(initializer(back2, name)));
  }
}

TEST(ModelSave, CustomDataFileAndLargeTensorAlignment) {
  temp_dir dir;
  ::onnx::ModelProto p = small_proto();
  *p.mutable_graph()->add_initializer() =
      raw_tensor("big", TensorProto::UINT8, {(1 << 20) + 3}, pattern((1 << 20) + 3, 9));
  const model m = in_memory(p);
  save_options o;
  o.mode = external_data::always;
  o.data_file = "weights.bin";
  int4q::onnx::save_model(m, dir / "m.onnx", o);
  EXPECT_EQ(dir.files(), (std::set<std::string>{"m.onnx", "weights.bin"}));
  const model back = int4q::onnx::load_model(dir / "m.onnx");
  EXPECT_EQ(external_value(initializer(back, "big"), "location"), "weights.bin");
  EXPECT_EQ(std::stoull(external_value(initializer(back, "big"), "offset")) % 65536, 0u);
  expect_same_payloads(m, back);

  o.data_file = "../escape.bin";
  expect_model_error([&] { int4q::onnx::save_model(m, dir / "m2.onnx", o); }, kind::unsupported,
                     "escape.bin");
  o.data_file = "m3.onnx";
  expect_model_error([&] { int4q::onnx::save_model(m, dir / "m3.onnx", o); }, kind::unsupported,
                     "m3.onnx");
}

TEST(ModelSave, SubgraphInitializersGoExternalToo) {
  temp_dir dir;
  ::onnx::ModelProto p = small_proto();
  auto* n = p.mutable_graph()->add_node();
  n->set_op_type("If");
  n->set_name("if");
  n->add_input("cond");
  n->add_output("r");
  auto* a = n->add_attribute();
  a->set_name("then_branch");
  a->set_type(::onnx::AttributeProto::GRAPH);
  *a->mutable_g()->add_initializer() =
      raw_tensor("inner", TensorProto::FLOAT, {64}, pattern(256, 11));
  const model m = in_memory(p);
  save_options o;
  o.mode = external_data::always;
  o.external_min_bytes = 200;
  int4q::onnx::save_model(m, dir / "m.onnx", o);
  const model back = int4q::onnx::load_model(dir / "m.onnx");
  ASSERT_EQ(back.proto.graph().node_size(), 5);
  const TensorProto& inner = back.proto.graph().node(4).attribute(0).g().initializer(0);
  EXPECT_TRUE(int4q::onnx::is_external(inner));
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(back, inner), bytes_of(pattern(256, 11)));
}

// The real devgpt model (../shared/models): saved inline, the file is byte for byte the input
// (torch wrote it with protobuf's own serializer); saved with external data, every payload
// comes back.
TEST(ModelSave, DevgptRoundTrips) {
  const fs::path path =
      fs::path(INT4Q_SOURCE_DIR) / ".." / "shared" / "models" / "devgpt" / "devgpt_fp32.onnx";
  if (!fs::exists(path)) GTEST_SKIP() << path << " not found";
  temp_dir dir;
  const model m = int4q::onnx::load_model(path);
  int4q::onnx::save_model(m, dir / "inline.onnx");
  EXPECT_TRUE(read_file(dir / "inline.onnx") == read_file(path));
  save_options o;
  o.mode = external_data::always;
  int4q::onnx::save_model(m, dir / "ext.onnx", o);
  const model ext = int4q::onnx::load_model(dir / "ext.onnx");
  int external = 0;
  for (const auto& t : ext.proto.graph().initializer()) external += int4q::onnx::is_external(t);
  EXPECT_GT(external, 17);
  EXPECT_LT(fs::file_size(dir / "ext.onnx"), 200u * 1024);
  expect_same_payloads(m, ext);
}

// A model whose tensors already live in a hand-written data file: out of order, with gaps,
// one without a length, one in a subdirectory.
struct external_fixture {
  temp_dir dir;
  std::string w0 = pattern(16 * 32 * 4, 1), b = pattern(32 * 4, 2), w1 = pattern(32 * 300 * 2, 3),
              c = pattern(16, 4);
  std::string data;  // the bytes of "in.data"

  external_fixture() {
    ::onnx::ModelProto p = small_proto();
    auto* g = p.mutable_graph();
    // in.data: [0,8) junk, b at 8, gap, w0 at 1000, w1 at 1000 + |w0| + 5; c (Constant) at end.
    data = "JUNKJUNK" + b;
    data += std::string(1000 - data.size(), '\x5a');
    data += w0 + "XXXXX";
    const std::size_t w1_offset = data.size();
    data += w1;
    const std::size_t c_offset = data.size();
    data += c;
    write_file(dir / "in.data", data);
    set_external(*g->mutable_initializer(0), "in.data", 1000, static_cast<std::int64_t>(w0.size()));
    set_external(*g->mutable_initializer(1), "in.data", 8, -1);  // no length
    fs::create_directories(dir / "sub");
    write_file(dir / "sub" / "w1.bin", std::string(3, '\0') + w1);
    set_external(*g->mutable_initializer(2), "sub/w1.bin", 3, static_cast<std::int64_t>(w1.size()));
    (void)w1_offset;
    set_external(*g->mutable_node(0)->mutable_attribute(0)->mutable_t(), "in.data",
                 static_cast<std::int64_t>(c_offset), -1);
    write_file(dir / "in.onnx", p.SerializeAsString());
  }
};

TEST(ModelExternal, LoadsHandWrittenOffsetsAndCopiesThemOnSave) {
  external_fixture fx;
  const model m = int4q::onnx::load_model(fx.dir / "in.onnx");
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, initializer(m, "w0")), bytes_of(fx.w0));
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, initializer(m, "b")), bytes_of(fx.b));
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, initializer(m, "w1")), bytes_of(fx.w1));
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, m.proto.graph().node(0).attribute(0).t()),
            bytes_of(fx.c));
  const std::string model_before = read_file(fx.dir / "in.onnx");

  // To a new directory with external data: every external payload copied into out.onnx.data.
  fs::create_directories(fx.dir / "out");
  save_options o;
  o.mode = external_data::always;
  o.external_min_bytes = 100;  // b has 128 bytes
  int4q::onnx::save_model(m, fx.dir / "out" / "out.onnx", o);
  const model out = int4q::onnx::load_model(fx.dir / "out" / "out.onnx");
  for (const std::string name : {"w0", "b", "w1"}) {
    EXPECT_EQ(external_value(initializer(out, name), "location"), "out.onnx.data") << name;
  }
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(out, initializer(out, "w0")), bytes_of(fx.w0));
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(out, initializer(out, "b")), bytes_of(fx.b));
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(out, initializer(out, "w1")), bytes_of(fx.w1));
  // The Constant's external tensor comes back inline (attribute tensors stay in the model).
  const TensorProto& c = out.proto.graph().node(0).attribute(0).t();
  EXPECT_FALSE(int4q::onnx::is_external(c));
  EXPECT_EQ(c.raw_data(), fx.c);
  EXPECT_EQ(c.external_data_size(), 0);

  // Inline: every payload read into the model.
  int4q::onnx::save_model(m, fx.dir / "out" / "inline.onnx", inline_only());
  const model in = int4q::onnx::load_model(fx.dir / "out" / "inline.onnx");
  EXPECT_EQ(initializer(in, "w0").raw_data(), fx.w0);
  EXPECT_EQ(initializer(in, "b").raw_data(), fx.b);
  EXPECT_EQ(initializer(in, "w1").raw_data(), fx.w1);
  for (const auto& t : in.proto.graph().initializer()) {
    EXPECT_FALSE(int4q::onnx::is_external(t)) << t.name();
  }

  // The input is untouched.
  EXPECT_EQ(read_file(fx.dir / "in.onnx"), model_before);
  EXPECT_EQ(read_file(fx.dir / "in.data"), fx.data);
}

TEST(ModelSave, RefusesToOverwriteItsInput) {
  external_fixture fx;
  const model m = int4q::onnx::load_model(fx.dir / "in.onnx");
  const std::string model_before = read_file(fx.dir / "in.onnx");
  expect_model_error([&] { int4q::onnx::save_model(m, fx.dir / "in.onnx"); }, kind::io,
                     "is the input model");
  // The same file by another spelling.
  expect_model_error([&] { int4q::onnx::save_model(m, fx.dir / "sub" / ".." / "in.onnx"); },
                     kind::io, "is the input model");
  // The input's external data file, as the output model or as the output's data file.
  expect_model_error([&] { int4q::onnx::save_model(m, fx.dir / "in.data"); }, kind::io, "in.data");
  save_options o;
  o.mode = external_data::always;
  o.data_file = "in.data";
  expect_model_error([&] { int4q::onnx::save_model(m, fx.dir / "other.onnx", o); }, kind::io,
                     "in.data");
  EXPECT_EQ(read_file(fx.dir / "in.onnx"), model_before);
  EXPECT_EQ(read_file(fx.dir / "in.data"), fx.data);
  EXPECT_EQ(fx.dir.files(), (std::set<std::string>{"in.onnx", "in.data", "sub"}));
}

TEST(ModelSave, FailuresLeaveNoPartialFiles) {
  external_fixture fx;
  const model m = int4q::onnx::load_model(fx.dir / "in.onnx");
  fs::create_directories(fx.dir / "out");
  // The input's data disappears after loading: the copy fails half way.
  fs::remove(fx.dir / "sub" / "w1.bin");
  save_options o;
  o.mode = external_data::always;
  expect_model_error([&] { int4q::onnx::save_model(m, fx.dir / "out" / "out.onnx", o); }, kind::io,
                     "w1.bin");
  expect_model_error([&] { int4q::onnx::save_model(m, fx.dir / "out" / "inline.onnx"); }, kind::io,
                     "w1.bin");
  EXPECT_TRUE(fx.dir.files().count("out"));
  EXPECT_TRUE(fs::is_empty(fx.dir / "out"));

  // A missing output directory.
  expect_model_error([&] { int4q::onnx::save_model(m, fx.dir / "nowhere" / "m.onnx"); }, kind::io,
                     "nowhere");
}

TEST(ModelSave, WriteErrorLeavesNoPartialFiles) {
  // A file size limit makes write() fail with EFBIG half way, like a full disk.
  temp_dir dir;
  ::onnx::ModelProto p = small_proto();
  *p.mutable_graph()->add_initializer() =
      raw_tensor("big", TensorProto::UINT8, {1 << 20}, pattern(1 << 20, 5));
  const model m = in_memory(p);
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 256 * 1024;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  save_options ext;
  ext.mode = external_data::always;
  expect_model_error([&] { int4q::onnx::save_model(m, dir / "ext.onnx", ext); }, kind::io,
                     "ext.onnx.data");
  expect_model_error([&] { int4q::onnx::save_model(m, dir / "inline.onnx"); }, kind::io,
                     "inline.onnx");
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);
  EXPECT_TRUE(dir.files().empty()) << *dir.files().begin();
}

TEST(ModelSave, ExternalDataDecision) {
  using int4q::onnx::stores_external_data;
  constexpr std::uint64_t gib = std::uint64_t{1} << 30;
  save_options o;  // automatic
  EXPECT_FALSE(stores_external_data(o, 1 * gib, 1 * gib));
  EXPECT_FALSE(stores_external_data(o, int4q::onnx::automatic_external_bytes,
                                    int4q::onnx::automatic_external_bytes + 4096));
  EXPECT_TRUE(stores_external_data(o, int4q::onnx::automatic_external_bytes + 1, 2 * gib));
  EXPECT_TRUE(stores_external_data(o, 1 * gib, int4q::onnx::protobuf_max_bytes + 1));
  EXPECT_TRUE(stores_external_data(o, 8 * gib, 8 * gib));
  o.mode = external_data::always;
  EXPECT_TRUE(stores_external_data(o, 0, 100));
  o.mode = external_data::never;
  EXPECT_FALSE(stores_external_data(o, 1 * gib, int4q::onnx::protobuf_max_bytes));
  expect_model_error([&] { stores_external_data(o, 3 * gib, 3 * gib); }, kind::unsupported,
                     "2 GiB");
  EXPECT_LT(int4q::onnx::automatic_external_bytes, int4q::onnx::protobuf_max_bytes);
  EXPECT_EQ(int4q::onnx::protobuf_max_bytes, 2147483647u);
}

// ---- Load errors --------------------------------------------------------------------------------

TEST(ModelLoad, MissingDirectoryEmptyTruncatedAndForeignFiles) {
  temp_dir dir;
  expect_model_error([&] { int4q::onnx::load_model(dir / "missing.onnx"); }, kind::io,
                     "missing.onnx");
  expect_model_error([&] { int4q::onnx::load_model(dir.path()); }, kind::io, "directory");

  write_file(dir / "empty.onnx", "");
  expect_model_error([&] { int4q::onnx::load_model(dir / "empty.onnx"); }, kind::invalid,
                     "empty.onnx");

  const std::string full = small_proto().SerializeAsString();
  write_file(dir / "cut.onnx", full.substr(0, full.size() / 2));
  expect_model_error([&] { int4q::onnx::load_model(dir / "cut.onnx"); }, kind::invalid,
                     "cut.onnx' is not an ONNX model");
  // Cut right after the graph: parses, but the opset_import that follows it is gone.
  ::onnx::ModelProto p = small_proto();
  p.clear_opset_import();
  write_file(dir / "no_opset.onnx", p.SerializeAsString());
  expect_model_error([&] { int4q::onnx::load_model(dir / "no_opset.onnx"); }, kind::invalid,
                     "no_opset.onnx");

  write_file(dir / "random.onnx", pattern(4096, 77));
  expect_model_error([&] { int4q::onnx::load_model(dir / "random.onnx"); }, kind::invalid,
                     "random.onnx");
  write_file(dir / "text.onnx", "{\"not\": \"a model\"}\n");
  expect_model_error([&] { int4q::onnx::load_model(dir / "text.onnx"); }, kind::invalid,
                     "text.onnx");

  ::onnx::ModelProto no_graph;
  no_graph.set_ir_version(8);
  no_graph.add_opset_import()->set_version(17);
  write_file(dir / "nograph.onnx", no_graph.SerializeAsString());
  expect_model_error([&] { int4q::onnx::load_model(dir / "nograph.onnx"); }, kind::invalid,
                     "no graph");

  ::onnx::ModelProto bad_raw = small_proto();
  bad_raw.mutable_graph()->mutable_initializer(1)->mutable_raw_data()->resize(5);
  write_file(dir / "bad_raw.onnx", bad_raw.SerializeAsString());
  expect_model_error([&] { int4q::onnx::load_model(dir / "bad_raw.onnx"); }, kind::invalid, "'b'");
}

TEST(ModelLoad, BadExternalData) {
  temp_dir dir;
  write_file(dir / "w.data", pattern(4096, 1));
  const auto write_with = [&](const std::string& file, const std::string& location,
                              std::int64_t offset, std::int64_t length) {
    ::onnx::ModelProto p = small_proto();
    set_external(*p.mutable_graph()->mutable_initializer(1), location, offset, length);
    write_file(dir / file, p.SerializeAsString());
    return dir / file;
  };
  // b is [32] float = 128 bytes.
  EXPECT_NO_THROW(int4q::onnx::load_model(write_with("ok.onnx", "w.data", 4096 - 128, 128)));
  expect_model_error([&] { int4q::onnx::load_model(write_with("past.onnx", "w.data", 4000, 128)); },
                     kind::invalid, "w.data");
  expect_model_error([&] { int4q::onnx::load_model(write_with("past2.onnx", "w.data", 5000, -1)); },
                     kind::invalid, "w.data");
  expect_model_error([&] { int4q::onnx::load_model(write_with("len.onnx", "w.data", 0, 64)); },
                     kind::invalid, "length 64");
  expect_model_error(
      [&] { int4q::onnx::load_model(write_with("missing.onnx", "gone.data", 0, 128)); }, kind::io,
      "gone.data");
  expect_model_error(
      [&] { int4q::onnx::load_model(write_with("abs.onnx", (dir / "w.data").string(), 0, 128)); },
      kind::invalid, "relative");
  expect_model_error([&] { int4q::onnx::load_model(write_with("up.onnx", "../w.data", 0, 128)); },
                     kind::invalid, "relative");
  expect_model_error([&] { int4q::onnx::load_model(write_with("noloc.onnx", "", 0, 128)); },
                     kind::invalid, "location");
}

TEST(ModelLoad, ReadAfterDataFileRemoved) {
  temp_dir dir;
  ::onnx::ModelProto p = small_proto();
  write_file(dir / "w.data", pattern(128, 1));
  set_external(*p.mutable_graph()->mutable_initializer(1), "w.data", 0, 128);
  write_file(dir / "m.onnx", p.SerializeAsString());
  const model m = int4q::onnx::load_model(dir / "m.onnx");
  EXPECT_EQ(int4q::onnx::read_tensor_bytes(m, initializer(m, "b")), bytes_of(pattern(128, 1)));
  fs::remove(dir / "w.data");
  expect_model_error([&] { int4q::onnx::read_tensor_bytes(m, initializer(m, "b")); }, kind::io,
                     "w.data");
}

}  // namespace
