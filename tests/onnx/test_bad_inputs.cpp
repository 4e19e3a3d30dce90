// Bad inputs, table-driven: every row runs the int4q executable (INT4Q_CLI_PATH) once, in a fresh
// scratch folder that its setup fills with a broken model, broken data or nothing, and checks:
//
//   - the exit code (README's table: 2 usage, 3 file cannot be read/written, 4 invalid model or
//     data, 5 a form int4q cannot handle; 0 for the few rows that expect only a warning);
//   - stderr: exactly one `int4q: error: ...` line, last, after any `int4q: warning: ...` lines
//     (for exit 0: warning lines only); that line names each offending thing of the row (the file,
//     the node, the tensor, the option; "a|b" = either) and holds none of its `absent` strings;
//   - the folder afterwards: no new file (no OUT, no OUT.data, no .tmp-/.spill- scratch files;
//     for exit 0 exactly the rows' outputs) and every file present before byte-identical
//     (hidden files, sub-folders, links and special files included).
//
// Each row is its own CTest test: BadInputs/BadInput.Case/<row name>. The `owner` column says
// whose behaviour a row checks: "today" (what the README documents and int4q does), "validate"
// (the whole-model validation pass of issue 13), "options" (option errors of issues 13 and 18),
// "cleanup" (temp files on failure, issue 18), "unassigned" (expected behaviour decided here;
// see the comment on the row).
//
// The process runs with `ulimit -v` 4 GiB (in an ASan build: ASan's hard_rss_limit_mb) and
// `ulimit -f` 1 GiB (a row may set less) and a 60 s timeout, so that a row that asks for absurd
// memory or output fails fast instead of taking the machine with it.
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include "onnx/bad_models.hpp"
#include "onnx/cli_runner.hpp"
#include "onnx/graph_builder.hpp"
#include "onnx/sanitizer.hpp"
#include "onnx/scratch_dir.hpp"

#ifndef INT4Q_CLI_PATH
#error "INT4Q_CLI_PATH (the built int4q executable) must be defined by the build"
#endif

namespace {

namespace fs = std::filesystem;
namespace tb = int4q::test::bad;
using int4q::test::cli_result;
using int4q::test::describe;
using int4q::test::read_text;
using int4q::test::shell_quote;

// ---- Running, with limits ----------------------------------------------------------------------

/// The 4 GiB memory limit of a run. AddressSanitizer reserves terabytes of address space for
/// its shadow memory, so an ASan build (scripts/test's second build) cannot run under
/// `ulimit -v`: there ASan's own limit stops a run whose resident memory passes 4 GiB.
#ifdef INT4Q_TEST_ASAN
const std::string memory_limit =
    "export ASAN_OPTIONS=\"${ASAN_OPTIONS:+$ASAN_OPTIONS:}hard_rss_limit_mb=4096\"";
#else
const std::string memory_limit = "ulimit -v 4194304";
#endif

/// The command prefix that runs a program as user nobody (65534) when the tests run as root
/// (util-linux setpriv), else "".
std::string as_nobody_if_root() {
  return ::geteuid() == 0 ? "setpriv --reuid=65534 --regid=65534 --clear-groups " : "";
}

/// `int4q args...` in `cwd` under `ulimit -v` (4 GiB), `ulimit -f` (`file_limit_kb`, 1 GiB by
/// default) and a 60 s timeout (exit 124 when it runs out). A run ended by a signal has status
/// 128 + the signal's number, as a shell shows it, and `sig` set.
cli_result run_limited(const fs::path& cwd, const std::vector<std::string>& args,
                       std::uint64_t file_limit_kb, int& sig, bool unprivileged = false) {
  static std::atomic<int> counter{0};
  const fs::path capture =
      fs::temp_directory_path() /
      ("int4q_bad_capture_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  fs::create_directories(capture);
  std::string command = memory_limit + "; ulimit -f " + std::to_string(file_limit_kb) + "; cd " +
                        shell_quote(cwd.string()) + " && exec timeout -k 5 60 " +
                        (unprivileged ? as_nobody_if_root() : std::string()) +
                        shell_quote(INT4Q_CLI_PATH);
  for (const auto& a : args) command += " " + shell_quote(a);
  command += " >" + shell_quote((capture / "out").string()) + " 2>" +
             shell_quote((capture / "err").string()) + " </dev/null";
  const int raw = std::system(command.c_str());
  cli_result r;
  sig = raw != -1 && WIFSIGNALED(raw) ? WTERMSIG(raw) : 0;
  r.status = raw == -1 ? -1 : WIFEXITED(raw) ? WEXITSTATUS(raw) : 128 + sig;
  r.out = read_text(capture / "out");
  r.err = read_text(capture / "err");
  fs::remove_all(capture);
  return r;
}

// ---- Folder snapshots --------------------------------------------------------------------------

struct entry {
  char type = '?';  ///< f file, d folder, l link, p FIFO, c character device, ? other
  std::uint64_t size = 0;
  std::uint64_t hash = 0;  ///< FNV-1a of the bytes (files over 64 MiB: first and last MiB)
  std::string target;      ///< a link's target
  bool operator==(const entry& o) const {
    return type == o.type && size == o.size && hash == o.hash && target == o.target;
  }
};

std::uint64_t fnv1a(const std::string& bytes, std::uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

std::uint64_t hash_file(const fs::path& p, std::uint64_t size) {
  constexpr std::uint64_t whole = 64ull << 20, edge = 1ull << 20;
  std::ifstream in(p, std::ios::binary);
  if (size <= whole) {
    return fnv1a(
        std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()));
  }
  std::string head(edge, '\0'), tail(edge, '\0');
  in.read(&head[0], static_cast<std::streamsize>(edge));
  in.seekg(static_cast<std::streamoff>(size - edge));
  in.read(&tail[0], static_cast<std::streamsize>(edge));
  return fnv1a(tail, fnv1a(head));
}

/// Every entry under `root` (not following links), by relative path.
std::map<std::string, entry> snapshot(const fs::path& root) {
  std::map<std::string, entry> s;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    entry e;
    const fs::file_status st = it->symlink_status();
    switch (st.type()) {
      case fs::file_type::regular:
        e.type = 'f';
        e.size = fs::file_size(it->path());
        e.hash = hash_file(it->path(), e.size);
        break;
      case fs::file_type::directory: e.type = 'd'; break;
      case fs::file_type::symlink:
        e.type = 'l';
        e.target = fs::read_symlink(it->path()).string();
        break;
      case fs::file_type::fifo: e.type = 'p'; break;
      case fs::file_type::character: e.type = 'c'; break;
      default: break;
    }
    s[fs::relative(it->path(), root).string()] = e;
  }
  return s;
}

/// What changed from `before` to `after`, one line each ("" = nothing), ignoring the new
/// entries named in `expected_new`.
std::string changes(const std::map<std::string, entry>& before,
                    const std::map<std::string, entry>& after,
                    const std::set<std::string>& expected_new) {
  std::string out;
  for (const auto& [name, e] : after) {
    const auto it = before.find(name);
    if (it == before.end()) {
      if (!expected_new.count(name))
        out += "  new: " + name + " (" + std::to_string(e.size) + " bytes)\n";
    } else if (!(it->second == e)) {
      out += "  changed: " + name + "\n";
    }
  }
  for (const auto& [name, e] : before)
    if (!after.count(name)) out += "  removed: " + name + "\n";
  for (const auto& name : expected_new)
    if (!after.count(name) || before.count(name)) out += "  not written: " + name + "\n";
  return out;
}

// ---- The table ---------------------------------------------------------------------------------

using setup_fn = std::function<void(const fs::path&)>;

struct bad_case {
  std::string name;  ///< the test's name: subcommand_what
  std::string owner;
  std::vector<std::string> args;
  setup_fn setup;
  int code = 0;
  /// Each must be in the error line (for exit 0: in a warning); "a|b" = a or b.
  std::vector<std::string> mentions;
  std::vector<std::string> absent = {};   ///< must not be on stderr
  std::vector<std::string> outputs = {};  ///< exit 0: the files the run writes
  std::uint64_t file_limit_kb = 1 << 20;  ///< ulimit -f of the run, KiB
  /// Run as user nobody when the tests run as root (root writes into read-only folders).
  bool unprivileged = false;
};

void PrintTo(const bad_case& c, std::ostream* os) {
  *os << c.name << " [" << c.owner << "]: int4q";
  for (const auto& a : c.args) *os << " " << a;
}

// Setups, composable.

setup_fn all(std::initializer_list<setup_fn> steps) {
  std::vector<setup_fn> list(steps);
  return [list](const fs::path& d) {
    for (const auto& s : list) s(d);
  };
}
setup_fn nothing() {
  return [](const fs::path&) {};
}
setup_fn file(const std::string& name, const std::string& bytes) {
  return [name, bytes](const fs::path& d) { tb::write_bytes(d / name, bytes); };
}
setup_fn folder(const std::string& name) {
  return [name](const fs::path& d) { fs::create_directories(d / name); };
}
setup_fn fifo(const std::string& name) {
  return [name](const fs::path& d) { ASSERT_EQ(::mkfifo((d / name).c_str(), 0600), 0) << name; };
}
/// A model made by `make` (in the scratch folder `d`, for external data) as `name`.
setup_fn model(std::function<::onnx::ModelProto(const fs::path&)> make,
               const std::string& name = "m.onnx") {
  return [make, name](const fs::path& d) { tb::write_model(make(d), d / name); };
}
setup_fn model(std::function<::onnx::ModelProto()> make, const std::string& name = "m.onnx") {
  return [make, name](const fs::path& d) { tb::write_model(make(), d / name); };
}
/// A previous output that a failed run must leave as it is.
setup_fn previous(const std::string& name = "out.onnx") {
  return file(name, "a previous output, to be kept\n");
}

/// Four samples of x [64] for the small model (calibration and eval data).
std::string x_samples() { return tb::f32_bytes(int4q::test::random_values(4 * 64, 7)); }
setup_fn calib_npy() { return file("calib.npy", tb::npy_array("<f4", "(4, 64)", x_samples())); }
/// 64 byte tokens below the lm_model's vocabulary of 16.
setup_fn tokens() {
  std::string t;
  for (int i = 0; i < 64; ++i) t += static_cast<char>((i * 7) % 16);
  return file("tokens.bin", t);
}

::onnx::ModelProto small() { return tb::small_model(); }
::onnx::ModelProto lm() { return tb::lm_model(); }

/// The small model with `change` applied.
std::function<::onnx::ModelProto()> small_with(std::function<void(::onnx::ModelProto&)> change) {
  return [change] {
    auto m = tb::small_model();
    change(m);
    return m;
  };
}
/// The small model with `change(m, scratch folder)` applied (external data).
std::function<::onnx::ModelProto(const fs::path&)> small_with_files(
    std::function<void(::onnx::ModelProto&, const fs::path&)> change) {
  return [change](const fs::path& d) {
    auto m = tb::small_model();
    change(m, d);
    return m;
  };
}

std::string half_of_small_model() {
  const std::string bytes = tb::serialized(tb::small_model());
  return bytes.substr(0, bytes.size() / 2);
}

/// x -> Add add_cycle (h, loop_b) -> loop_a -> Relu relu_cycle -> loop_b: a cycle.
::onnx::ModelProto cycle_model() {
  int4q::test::graph_builder g;
  g.input("x", int4q::test::onnx_float, {-1, 64});
  g.initializer("w0", int4q::test::onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 1));
  g.matmul("mm0", "x", "w0", "h");
  g.node("Add", {"h", "loop_b"}, {"loop_a"}, "add_cycle");
  g.node("Relu", {"loop_a"}, {"loop_b"}, "relu_cycle");
  g.node("Relu", {"loop_a"}, {"y"}, "relu_out");
  g.output("y", int4q::test::onnx_float, {-1, 32});
  return g.build();
}

/// x[*, 64] -> Gemm gemm_t (wt[64, 48], transB = 1): B' is [48, 64], so K = 48 against x's 64.
::onnx::ModelProto gemm_bad_trans_b() {
  int4q::test::graph_builder g;
  g.input("x", int4q::test::onnx_float, {-1, 64});
  g.initializer("wt", int4q::test::onnx_float, {64, 48}, int4q::test::random_values(64 * 48, 4));
  int4q::test::gemm_attrs a;
  a.trans_b = true;
  g.gemm("gemm_t", "x", "wt", "", "h", a);
  g.node("Relu", {"h"}, {"y"}, "relu");
  g.output("y", int4q::test::onnx_float, {-1, 64});
  return g.build();
}

/// x[*, 2^20] -> MatMul mm_big (w_big [2^20, 2^20] float, 4 TiB, in a sparse external file)
/// -> Relu: consistent, and more than any test machine's memory.
constexpr std::int64_t big_k = 1 << 20;
::onnx::ModelProto big_model(const fs::path& d) {
  int4q::test::graph_builder g;
  g.input("x", int4q::test::onnx_float, {-1, big_k});
  ::onnx::TensorProto w;
  w.set_name("w_big");
  w.set_data_type(int4q::test::onnx_float);
  w.add_dims(big_k);
  w.add_dims(big_k);
  const std::uint64_t bytes = std::uint64_t(big_k) * std::uint64_t(big_k) * 4;
  { std::ofstream(d / "w_big.bin", std::ios::binary); }
  fs::resize_file(d / "w_big.bin", bytes);  // sparse: no disk space used
  w.set_data_location(::onnx::TensorProto::EXTERNAL);
  auto* e = w.add_external_data();
  e->set_key("location");
  e->set_value("w_big.bin");
  e = w.add_external_data();
  e->set_key("length");
  e->set_value(std::to_string(bytes));
  g.initializer(w);
  g.matmul("mm_big", "x", "w_big", "h");
  g.node("Relu", {"h"}, {"y"}, "relu");
  g.output("y", int4q::test::onnx_float, {-1, big_k});
  return g.build();
}

/// x[*, 64] -MatMul mm0 (wc, from a Constant node 'wc_const')-> h -Relu-> y, with `change`
/// applied to the Constant's tensor.
std::function<::onnx::ModelProto()> constant_weight(
    std::function<void(::onnx::TensorProto&)> change) {
  return [change] {
    int4q::test::graph_builder g;
    g.input("x", int4q::test::onnx_float, {-1, 64});
    g.constant("wc", int4q::test::onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 5));
    change(*tb::node(g.proto(), "wc_const").mutable_attribute(0)->mutable_t());
    g.matmul("mm0", "x", "wc", "h");
    g.node("Relu", {"h"}, {"y"}, "relu");
    g.output("y", int4q::test::onnx_float, {-1, 32});
    return g.build();
  };
}

/// A one-node branch graph: Relu `node` (in) -> out, out a float [*, 32] output.
::onnx::GraphProto relu_branch(const std::string& name, const std::string& in,
                               const std::string& out) {
  ::onnx::GraphProto b;
  b.set_name(name);
  auto* n = b.add_node();
  n->set_op_type("Relu");
  n->set_name("relu_" + name);
  n->add_input(in);
  n->add_output(out);
  auto* o = b.add_output();
  o->set_name(out);
  auto* tt = o->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(int4q::test::onnx_float);
  tt->mutable_shape()->add_dim()->set_dim_param("d0");
  tt->mutable_shape()->add_dim()->set_dim_value(32);
  return b;
}

/// x -> MatMul mm0 -> h -> If (cond) { Relu(h) } else { Relu(ghost_inner) }: the else branch
/// reads a name that nothing in it or around it defines.
::onnx::ModelProto subgraph_dangling() {
  int4q::test::graph_builder g;
  g.input("x", int4q::test::onnx_float, {-1, 64});
  g.input("cond", int4q::test::onnx_bool, {});
  g.initializer("w0", int4q::test::onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 1));
  g.matmul("mm0", "x", "w0", "h");
  auto& n = g.node("If", {"cond"}, {"y"}, "if_node");
  for (const auto& [attr, branch] :
       {std::make_pair("then_branch", relu_branch("then", "h", "t")),
        std::make_pair("else_branch", relu_branch("else", "ghost_inner", "e"))}) {
    auto& a = int4q::test::add_attr(n, attr);
    a.set_type(::onnx::AttributeProto::GRAPH);
    *a.mutable_g() = branch;
  }
  g.output("y", int4q::test::onnx_float, {-1, 32});
  return g.build();
}

/// Opset 10 with a Resize: --format qdq would need opset 21, which changes Resize (exit 5).
::onnx::ModelProto opset10_resize() {
  int4q::test::graph_builder g(10);
  g.input("x", int4q::test::onnx_float, {1, 64});
  g.initializer("w", int4q::test::onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 4));
  g.initializer("scales", int4q::test::onnx_float, {2}, {1.0f, 2.0f});
  g.matmul("mm", "x", "w", "h");
  g.node("Resize", {"h", "scales"}, {"y"}, "resize");
  g.output("y", int4q::test::onnx_float, {1, 64});
  return g.build();
}

const float nan_value = std::numeric_limits<float>::quiet_NaN();
const float inf_value = std::numeric_limits<float>::infinity();

std::vector<std::string> quantize(std::initializer_list<std::string> extra,
                                  const std::string& in = "m.onnx") {
  std::vector<std::string> a = {"quantize", in, "-o", "out.onnx"};
  a.insert(a.end(), extra);
  return a;
}
/// quantize with GPTQ on the good calibration data (calib.npy, see calib_npy()).
std::vector<std::string> gptq(std::initializer_list<std::string> extra) {
  std::vector<std::string> a = quantize(
      {"--method", "gptq", "--calib", "calib.npy", "--group-size", "32", "--format", "qdq"});
  a.insert(a.end(), extra);
  return a;
}

const std::string no_huge_range = "1797693";  // the 309-digit "range" of issue 13

std::vector<bad_case> cases() {
  using tb::set_dims;
  using tb::set_value;
  using tb::tensor;
  std::vector<bad_case> c;
  const std::string today = "today", validate = "validate", options = "options",
                    cleanup = "cleanup", unassigned = "unassigned";

  // ---- quantize: files that cannot be read, or are not ONNX (today) -----------------------------
  c.push_back(
      {"quantize_missing_input", today, quantize({}, "nope.onnx"), nothing(), 3, {"nope.onnx"}});
  c.push_back(
      {"quantize_input_is_a_folder", today, quantize({}, "adir"), folder("adir"), 3, {"adir"}});
  c.push_back({"quantize_input_is_a_fifo",
               today,
               quantize({}, "in.fifo"),
               fifo("in.fifo"),
               3,
               {"in.fifo"}});
  c.push_back({"quantize_empty_file", today, quantize({}), file("m.onnx", ""), 4, {"m.onnx"}});
  c.push_back({"quantize_not_onnx",
               today,
               quantize({}),
               file("m.onnx", "not a protobuf at all\n"),
               4,
               {"m.onnx"}});
  c.push_back({"quantize_truncated_model",
               today,
               quantize({"--format", "fake"}),
               file("m.onnx", half_of_small_model()),
               4,
               {"m.onnx"}});
  c.push_back({"quantize_no_graph",
               today,
               quantize({}),
               model([] {
                 ::onnx::ModelProto m;
                 m.set_ir_version(8);
                 m.add_opset_import()->set_version(17);
                 return m;
               }),
               4,
               {"m.onnx"}});
  c.push_back({"quantize_no_opset_import",
               today,
               quantize({}),
               model(small_with([](auto& m) { m.clear_opset_import(); })),
               4,
               {"m.onnx"}});
  c.push_back({"quantize_raw_data_short",
               today,
               quantize({"--format", "qdq", "--group-size", "32"}),
               model(small_with([](auto& m) {
                 auto& t = tensor(m, "w0");
                 t.set_raw_data(t.raw_data().substr(4));
               })),
               4,
               {"m.onnx", "w0"}});
  c.push_back({"quantize_raw_data_long_not_quantized",
               today,
               quantize({}),
               model(small_with([](auto& m) {
                 auto& t = tensor(m, "b1");
                 t.set_raw_data(t.raw_data() + std::string(4, '\0'));
               })),
               4,
               {"m.onnx", "b1"}});

  // ---- quantize: external data (today) --------------------------------------------------------
  c.push_back({"quantize_external_data_missing",
               today,
               quantize({}),
               model(small_with_files([](auto& m, const fs::path& d) {
                 tb::to_external(tensor(m, "w0"), d, "weights.bin");
                 fs::remove(d / "weights.bin");
               })),
               3,
               {"weights.bin"}});
  c.push_back({"quantize_external_data_truncated",
               today,
               quantize({"--format", "fake"}),
               model(small_with_files([](auto& m, const fs::path& d) {
                 tb::to_external(tensor(m, "w0"), d, "weights.bin");
                 fs::resize_file(d / "weights.bin", 1000);
               })),
               4,
               {"w0", "weights.bin"}});
  c.push_back({"quantize_external_length_mismatch",
               today,
               quantize({}),
               model(small_with_files([](auto& m, const fs::path& d) {
                 tb::to_external(tensor(m, "w0"), d, "weights.bin");
                 tb::set_external_key(tensor(m, "w0"), "length", "100");
               })),
               4,
               {"w0"}});
  c.push_back({"quantize_external_offset_not_a_number",
               today,
               quantize({}),
               model(small_with_files([](auto& m, const fs::path& d) {
                 tb::to_external(tensor(m, "w0"), d, "weights.bin");
                 tb::set_external_key(tensor(m, "w0"), "offset", "abc");
               })),
               4,
               {"w0", "abc"}});
  c.push_back({"quantize_external_no_location",
               today,
               quantize({}),
               model(small_with_files([](auto& m, const fs::path& d) {
                 tb::to_external(tensor(m, "w0"), d, "weights.bin");
                 tb::set_external_key(tensor(m, "w0"), "location", "");
               })),
               4,
               {"w0"}});
  c.push_back({"quantize_external_dotdot",
               today,
               quantize({}, "sub/m.onnx"),
               model(small_with_files([](auto& m, const fs::path& d) {
                       tb::to_external(tensor(m, "w0"), d / "sub", "../w0.bin", d / "w0.bin");
                     }),
                     "sub/m.onnx"),
               4,
               {"w0", "../w0.bin"}});
  c.push_back({"quantize_external_absolute",
               today,
               quantize({}),
               model(small_with_files([](auto& m, const fs::path& d) {
                 tb::to_external(tensor(m, "w0"), d, (d / "w0.bin").string());
               })),
               4,
               {"w0", "w0.bin"}});
  c.push_back({"quantize_output_would_overwrite_input_data",
               today,
               quantize({}),
               model(small_with_files([](auto& m, const fs::path& d) {
                 tb::to_external(tensor(m, "w0"), d, "out.onnx.data");
               })),
               2,
               {"out.onnx.data"}});

  // ---- quantize: output paths (today) ---------------------------------------------------------
  c.push_back({"quantize_output_folder_missing",
               today,
               {"quantize", "m.onnx", "-o", "missing/dir/out.onnx"},
               model(small),
               3,
               {"missing/dir"}});
  c.push_back({"quantize_output_under_a_file",
               today,
               {"quantize", "m.onnx", "-o", "plainfile/out.onnx"},
               all({model(small), file("plainfile", "x")}),
               3,
               {"plainfile"}});
  {
    bad_case r{"quantize_output_folder_read_only",
               today,
               {"quantize", "m.onnx", "-o", "ro/out.onnx"},
               all({model(small), folder("ro"),
                    [](const fs::path& d) {
                      fs::permissions(d / "ro", fs::perms::owner_read | fs::perms::owner_exec |
                                                    fs::perms::others_read |
                                                    fs::perms::others_exec);
                      // As root the run is user nobody's: it must reach the program and input.
                      const std::string probe = as_nobody_if_root() + "test -x " +
                                                shell_quote(INT4Q_CLI_PATH) + " -a -r " +
                                                shell_quote((d / "m.onnx").string());
                      if (std::system(probe.c_str()) != 0) {
                        GTEST_SKIP() << "as root, user nobody cannot run int4q on " << d
                                     << " here (setpriv missing, or a folder closed to others)";
                      }
                    }}),
               3,
               {"ro"}};
    r.unprivileged = true;
    c.push_back(r);
  }
  c.push_back({"quantize_output_is_a_folder",
               today,
               quantize({}),
               all({model(small), folder("out.onnx")}),
               3,
               {"out.onnx"}});
  c.push_back({"quantize_output_is_the_input",
               today,
               {"quantize", "m.onnx", "-o", "m.onnx"},
               model(small),
               2,
               {"-o", "m.onnx"}});
  c.push_back({"quantize_output_is_the_input_through_dotdot",
               today,
               {"quantize", "m.onnx", "-o", "sub/../m.onnx"},
               all({model(small), folder("sub")}),
               2,
               {"-o"}});
  c.push_back({"quantize_report_is_the_output",
               today,
               quantize({"--report", "./out.onnx"}),
               model(small),
               2,
               {"--report"}});
  c.push_back({"quantize_report_folder_missing",
               today,
               quantize({"--report", "nodir/r.json"}),
               model(small),
               3,
               {"nodir"}});
  // The data file's rename fails after the model's temporary file is written: nothing may stay.
  c.push_back({"quantize_output_data_file_is_a_folder",
               cleanup,
               quantize({"--external-data", "always"}),
               all({model(small), folder("out.onnx.data")}),
               3,
               {"out.onnx.data"}});

  // A failure in the middle of calibration, after the --spill scratch file is made: the second
  // sample of an ONNX test-data folder is no TensorProto.
  c.push_back({"quantize_calib_fails_mid_run_with_spill",
               cleanup,
               quantize({"--method", "gptq", "--calib", "pb", "--calib-batch", "1", "--spill",
                         "always", "--format", "fake", "--group-size", "32"}),
               all({model(small),
                    file("pb/test_data_set_0/input_0.pb",
                         int4q::test::float_tensor("x", int4q::test::onnx_float, {1, 64},
                                                   int4q::test::random_values(64, 8))
                             .SerializeAsString()),
                    file("pb/test_data_set_1/input_0.pb", "no TensorProto"), previous()}),
               4,
               {"test_data_set_1"}});
  // The output outgrows the file size limit (ulimit -f 2 KiB), as on a full disk or quota: a
  // clean exit 3 naming OUT with nothing left. int4q ignores SIGXFSZ, so that write() fails with
  // EFBIG as it would with ENOSPC (SIGXFSZ would kill it mid-write and leave the temporary and
  // scratch files).
  {
    bad_case r{"quantize_output_outgrows_the_file_size_limit",
               cleanup,
               quantize({"--spill", "always", "--group-size", "32"}),
               all({model(small), previous()}),
               3,
               {"out.onnx"}};
    r.file_limit_kb = 2;
    c.push_back(r);
  }

  // ---- quantize: --config (today) -------------------------------------------------------------
  c.push_back(
      {"quantize_config_not_json",
       today,
       quantize({"--config", "bad.json"}),
       all({model(small),
            file("bad.json",
                 "{\n  \"overrides\": [\n    {\"match\": \"mm0\",, \"bits\": 8}\n  ]\n}\n")}),
       2,
       {"bad.json", "line 3"}});
  c.push_back({"quantize_config_missing",
               today,
               quantize({"--config", "absent.json"}),
               model(small),
               3,
               {"absent.json"}});
  c.push_back({"quantize_config_wrong_type",
               today,
               quantize({"--config", "key.json"}),
               all({model(small), file("key.json", R"({"bits": "four"})")}),
               2,
               {"key.json", "bits"}});
  c.push_back({"quantize_config_override_the_format_cannot_hold",
               today,
               quantize({"--config", "override.json"}),
               all({model(small), file("override.json",
                                       R"({"overrides": [{"match": "mm0", "group_size": 48}]})")}),
               2,
               {"override.json", "mm0", "--group-size 48"}});

  // ---- quantize: weights and forms (today) -----------------------------------------------------
  c.push_back({"quantize_nan_in_a_quantized_weight",
               today,
               quantize({"--group-size", "32"}),
               all({model(small_with([](auto& m) { set_value(tensor(m, "w0"), 100, nan_value); })),
                    previous()}),
               4,
               {"w0"}});
  c.push_back({"quantize_inf_in_a_quantized_weight_with_spill_and_external_data",
               cleanup,
               quantize({"--group-size", "32", "--spill", "always", "--external-data", "always",
                         "--lm-head", "quantize"}),
               all({model(small_with([](auto& m) { set_value(tensor(m, "w1"), 5, -inf_value); })),
                    previous()}),
               4,
               {"w1"}});
  c.push_back({"quantize_qdq_needs_an_opset_that_changes_resize",
               today,
               quantize({"--format", "qdq", "--group-size", "32"}),
               model(opset10_resize),
               5,
               {"Resize", "matmulnbits"}});

  // ---- The whole-model validation pass (issue 13): every subcommand ----------------------------
  c.push_back({"quantize_graph_cycle",
               validate,
               quantize({"--format", "fake"}),
               model(cycle_model),
               4,
               {"m.onnx", "add_cycle|relu_cycle"}});
  c.push_back({"inspect_graph_cycle",
               validate,
               {"inspect", "m.onnx"},
               model(cycle_model),
               4,
               {"m.onnx", "add_cycle|relu_cycle"}});
  c.push_back({"eval_graph_cycle_in_candidate",
               validate,
               {"eval", "ref.onnx", "m.onnx", "--data", "calib.npy"},
               all({model(small, "ref.onnx"), model(cycle_model), calib_npy()}),
               4,
               {"m.onnx", "add_cycle|relu_cycle"}});
  const auto dangling = small_with([](auto& m) { tb::node(m, "mm0").set_input(0, "ghost"); });
  c.push_back({"quantize_input_nothing_produces",
               validate,
               quantize({"--format", "qdq"}),
               model(dangling),
               4,
               {"m.onnx", "ghost"}});
  c.push_back({"inspect_input_nothing_produces",
               validate,
               {"inspect", "m.onnx", "--json"},
               model(dangling),
               4,
               {"m.onnx", "ghost"}});
  c.push_back({"eval_input_nothing_produces_in_reference",
               validate,
               {"eval", "m.onnx", "cand.onnx", "--data", "calib.npy"},
               all({model(dangling), model(small, "cand.onnx"), calib_npy()}),
               4,
               {"m.onnx", "ghost"}});
  const auto dup_init = small_with([](auto& m) {
    *m.mutable_graph()->add_initializer() = int4q::test::float_tensor(
        "w0", int4q::test::onnx_float, {64, 32}, int4q::test::random_values(64 * 32, 9));
  });
  c.push_back({"quantize_duplicate_initializer",
               validate,
               quantize({"--method", "awq_lite"}),
               all({model(dup_init), calib_npy()}),
               4,
               {"m.onnx", "w0"}});
  c.push_back({"inspect_duplicate_initializer",
               validate,
               {"inspect", "m.onnx"},
               model(dup_init),
               4,
               {"m.onnx", "w0"}});
  c.push_back({"quantize_duplicate_node_output",
               validate,
               quantize({}),
               model(small_with([](auto& m) {
                 tb::node(m, "mm0").set_output(0, "hidden_act");
                 tb::node(m, "gemm1").set_input(0, "hidden_act");
                 auto* n = m.mutable_graph()->add_node();
                 n->set_op_type("Relu");
                 n->set_name("relu_dup");
                 n->add_input("x");
                 n->add_output("hidden_act");
               })),
               4,
               {"m.onnx", "hidden_act"}});
  const auto k_mismatch = small_with([](auto& m) {
    auto& t = tensor(m, "w0");
    set_dims(t, {48, 32});
    t.set_raw_data(
        int4q::test::float_bytes(int4q::test::onnx_float, int4q::test::random_values(48 * 32, 1)));
  });
  c.push_back({"quantize_matmul_k_mismatch",
               validate,
               quantize({"--group-size", "16"}),
               model(k_mismatch),
               4,
               {"m.onnx", "mm0"}});
  c.push_back({"inspect_matmul_k_mismatch",
               validate,
               {"inspect", "m.onnx"},
               model(k_mismatch),
               4,
               {"m.onnx", "mm0"}});
  c.push_back({"quantize_gemm_bad_trans_b",
               validate,
               quantize({"--format", "qdq"}),
               model(gemm_bad_trans_b),
               4,
               {"m.onnx", "gemm_t"}});
  // gemm1 without transB reads h [*, 32] (mm0's output: x [*, 64] @ w0 [64, 32]) with K = 48:
  // statically known through one MatMul.
  c.push_back({"quantize_gemm_k_mismatch_after_a_matmul",
               validate,
               quantize({"--lm-head", "quantize", "--group-size", "16"}),
               model(small_with([](auto& m) { tb::node(m, "gemm1").clear_attribute(); })),
               4,
               {"m.onnx", "gemm1"}});
  c.push_back({"quantize_float_data_short_not_quantized",
               validate,
               quantize({}),
               model(small_with([](auto& m) { tb::to_float_data(tensor(m, "b1"), -1); })),
               4,
               {"m.onnx", "b1"}});
  c.push_back({"quantize_float_data_long_not_quantized",
               validate,
               quantize({"--format", "fake"}),
               model(small_with([](auto& m) { tb::to_float_data(tensor(m, "b1"), +3); })),
               4,
               {"m.onnx", "b1"}});
  c.push_back({"inspect_float_data_short",
               validate,
               {"inspect", "m.onnx"},
               model(small_with([](auto& m) { tb::to_float_data(tensor(m, "w0"), -10); })),
               4,
               {"m.onnx", "w0"}});
  c.push_back({"quantize_negative_dim_not_quantized",
               validate,
               quantize({}),
               model(small_with([](auto& m) { set_dims(tensor(m, "b1"), {-48}); })),
               4,
               {"m.onnx", "b1"}});
  c.push_back({"quantize_negative_dim_in_a_weight",
               validate,
               quantize({"--group-size", "32"}),
               model(small_with([](auto& m) {
                 set_dims(tensor(m, "w0"), {-64, -32});
               })),
               4,
               {"m.onnx", "w0"}});
  c.push_back({"quantize_undefined_data_type",
               validate,
               quantize({}),
               model(small_with([](auto& m) { tensor(m, "b1").set_data_type(0); })),
               4,
               {"m.onnx", "b1"}});
  // Data type 99: int4q cannot tell a type of a later ONNX version from garbage, so "a form int4q
  // cannot handle" (5, naming the types it reads); type 0 (UNDEFINED) above is invalid (4).
  c.push_back({"quantize_unknown_data_type",
               validate,
               quantize({"--format", "qdq"}),
               model(small_with([](auto& m) { tensor(m, "b1").set_data_type(99); })),
               5,
               {"m.onnx", "b1"}});
  c.push_back({"inspect_unknown_data_type",
               validate,
               {"inspect", "m.onnx", "--json"},
               model(small_with([](auto& m) { tensor(m, "w0").set_data_type(99); })),
               5,
               {"m.onnx", "w0"}});
  const auto overflow_weight = small_with([](auto& m) {
    const std::int64_t k = std::int64_t(1) << 33;
    set_dims(tensor(m, "w0"), {k, k});
    m.mutable_graph()
        ->mutable_input(0)
        ->mutable_type()
        ->mutable_tensor_type()
        ->mutable_shape()
        ->mutable_dim(1)
        ->set_dim_value(k);
  });
  c.push_back({"quantize_dims_overflow_64_bits_in_a_weight",
               validate,
               quantize({}),
               model(overflow_weight),
               4,
               {"m.onnx", "w0"}});
  const auto overflow_unused = small_with([](auto& m) {
    auto* t = m.mutable_graph()->add_initializer();
    t->set_name("huge");
    t->set_data_type(int4q::test::onnx_float);
    for (int i = 0; i < 3; ++i) t->add_dims(std::int64_t(1) << 31);
    t->set_raw_data("");
  });
  c.push_back({"quantize_dims_overflow_64_bits_not_quantized",
               validate,
               quantize({}),
               model(overflow_unused),
               4,
               {"m.onnx", "huge"}});
  c.push_back({"inspect_dims_overflow_64_bits",
               validate,
               {"inspect", "m.onnx"},
               model(overflow_unused),
               4,
               {"m.onnx", "huge"}});
  c.push_back({"quantize_tensor_larger_than_memory",
               validate,
               quantize({}),
               model(big_model),
               4,
               {"m.onnx", "w_big"}});
  c.push_back({"eval_tensor_larger_than_memory",
               validate,
               {"eval", "m.onnx", "m.onnx", "--data", "x.npy"},
               all({model(big_model),
                    file("x.npy", tb::npy_array("<f4", "(1, " + std::to_string(big_k) + ")",
                                                std::string(std::size_t(big_k) * 4, '\0')))}),
               4,
               {"m.onnx", "w_big"}});
  const auto symlinked_file = small_with_files([](auto& m, const fs::path& d) {
    tb::to_external(tensor(m, "w0"), d / "sub", "w0.bin", d / "outside" / "w0.bin");
    fs::create_directories(d / "sub");
    fs::create_symlink("../outside/w0.bin", d / "sub" / "w0.bin");
  });
  c.push_back({"quantize_external_symlink_leads_outside",
               validate,
               quantize({}, "sub/m.onnx"),
               model(symlinked_file, "sub/m.onnx"),
               4,
               {"w0", "w0.bin"}});
  c.push_back({"inspect_external_symlink_leads_outside",
               validate,
               {"inspect", "sub/m.onnx"},
               model(symlinked_file, "sub/m.onnx"),
               4,
               {"w0", "w0.bin"}});
  c.push_back({"quantize_external_symlinked_folder_leads_outside",
               validate,
               quantize({"--format", "fake"}, "sub/m.onnx"),
               model(small_with_files([](auto& m, const fs::path& d) {
                       tb::to_external(tensor(m, "w0"), d / "sub", "data/w0.bin",
                                       d / "outside" / "w0.bin");
                       fs::create_directories(d / "sub");
                       fs::create_directory_symlink("../outside", d / "sub" / "data");
                     }),
                     "sub/m.onnx"),
               4,
               {"w0", "data/w0.bin"}});
  // With two models, the message must say which one holds the tensor.
  c.push_back({"eval_external_dotdot_in_candidate",
               validate,
               {"eval", "m.onnx", "sub/cand.onnx", "--data", "calib.npy"},
               all({model(small), calib_npy(),
                    model(small_with_files([](auto& m, const fs::path& d) {
                            tb::to_external(tensor(m, "w1"), d / "sub", "../w1.bin", d / "w1.bin");
                          }),
                          "sub/cand.onnx")}),
               4,
               {"cand.onnx", "w1", "../w1.bin"}});
  c.push_back({"quantize_constant_node_payload_short",
               validate,
               quantize({"--group-size", "32"}),
               model(constant_weight(
                   [](::onnx::TensorProto& t) { t.set_raw_data(t.raw_data().substr(8)); })),
               4,
               {"m.onnx", "wc"}});
  c.push_back({"quantize_nan_in_a_constant_node_weight",
               validate,
               quantize({"--group-size", "32", "--format", "qdq"}),
               model(constant_weight([](::onnx::TensorProto& t) { set_value(t, 5, nan_value); })),
               4,
               {"m.onnx", "wc"}});
  c.push_back({"quantize_subgraph_input_nothing_produces",
               validate,
               quantize({"--group-size", "32"}),
               model(subgraph_dangling),
               4,
               {"m.onnx", "ghost_inner"}});
  c.push_back({"inspect_subgraph_input_nothing_produces",
               validate,
               {"inspect", "m.onnx"},
               model(subgraph_dangling),
               4,
               {"m.onnx", "ghost_inner"}});
  // Non-finite values: an error in a weight that is quantized (before any work: no calibration
  // run), a warning and exit 0 in any other float initializer.
  c.push_back({"quantize_nan_in_a_quantized_weight_gptq",
               validate,
               gptq({}),
               all({model(small_with([](auto& m) { set_value(tensor(m, "w0"), 3, nan_value); })),
                    calib_npy(), previous()}),
               4,
               {"m.onnx", "w0"}});
  c.push_back({"quantize_nan_in_the_kept_lm_head_warns",
               validate,
               quantize({}),
               model(small_with([](auto& m) { set_value(tensor(m, "w1"), 7, nan_value); })),
               0,
               {"w1"},
               {},
               {"out.onnx"}});
  c.push_back({"quantize_inf_in_a_bias_warns",
               validate,
               quantize({"--format", "qdq"}),
               model(small_with([](auto& m) { set_value(tensor(m, "b1"), 0, inf_value); })),
               0,
               {"b1"},
               {},
               {"out.onnx"}});
  // A --plan file that keeps the NaN weight in float: a warning, as --exclude gives.
  c.push_back(
      {"quantize_nan_in_a_weight_the_plan_keeps_in_float_warns",
       validate,
       quantize({"--group-size", "32", "--plan", "plan.json"}),
       all({model(small_with([](auto& m) { set_value(tensor(m, "w0"), 100, nan_value); })),
            file("plan.json", "{\"weights\": [{\"weight\": \"w0\", \"choice\": \"none\"}]}")}),
       0,
       {"w0"},
       {},
       {"out.onnx"}});
  c.push_back({"quantize_nan_in_an_excluded_weight_warns",
               validate,
               quantize({"--exclude", "mm0", "--lm-head", "quantize", "--group-size", "32"}),
               model(small_with([](auto& m) { set_value(tensor(m, "w0"), 1, nan_value); })),
               0,
               {"w0"},
               {},
               {"out.onnx"}});

  // ---- quantize: calibration data (today) ------------------------------------------------------
  c.push_back({"quantize_gptq_calib_wrong_dtype",
               today,
               gptq({}),
               all({model(small), file("calib.npy", tb::npy_array("<i8", "(4, 64)",
                                                                  std::string(4 * 64 * 8, '\0')))}),
               4,
               {"calib.npy", "<i8"}});
  c.push_back({"quantize_gptq_calib_wrong_shape",
               today,
               gptq({}),
               all({model(small), file("calib.npy", tb::npy_array("<f4", "(4, 48)",
                                                                  std::string(4 * 48 * 4, '\0')))}),
               4,
               {"calib.npy", "[4, 48]"}});
  c.push_back(
      {"quantize_gptq_calib_fortran_order",
       today,
       gptq({}),
       all({model(small), file("calib.npy", tb::npy_array("<f4", "(4, 64)", x_samples(), true))}),
       5,
       {"calib.npy", "Fortran"}});
  c.push_back({"quantize_gptq_calib_big_endian",
               today,
               gptq({}),
               all({model(small), file("calib.npy", tb::npy_array(">f4", "(4, 64)", x_samples()))}),
               5,
               {"calib.npy", ">f4"}});
  c.push_back({"quantize_gptq_calib_truncated_array",
               today,
               gptq({}),
               all({model(small), file("calib.npy", tb::npy_array("<f4", "(4, 64)",
                                                                  x_samples().substr(0, 500)))}),
               4,
               {"calib.npy"}});
  c.push_back({"quantize_gptq_calib_missing",
               today,
               quantize({"--method", "gptq", "--calib", "nope.npy"}),
               model(small),
               3,
               {"nope.npy"}});
  c.push_back({"quantize_gptq_calib_pb_folder_not_a_tensor",
               today,
               quantize({"--method", "gptq", "--calib", "pb", "--format", "fake"}),
               all({model(small), file("pb/input_0.pb", "this is no TensorProto")}),
               4,
               {"input_0.pb"}});
  c.push_back({"quantize_awq_calib_npz_truncated",
               today,
               quantize({"--method", "awq_lite", "--calib", "calib.npz", "--group-size", "32"}),
               all({model(small),
                    file("calib.npz",
                         tb::zip_stored({{"x.npy", tb::npy_array("<f4", "(4, 64)", x_samples())}})
                             .substr(0, 300))}),
               4,
               {"calib.npz"}});
  c.push_back(
      {"quantize_awq_calib_npz_wrong_input_name",
       today,
       quantize({"--method", "awq_clip", "--calib", "calib.npz", "--format", "fake"}),
       all({model(small),
            file("calib.npz", tb::zip_stored({{"features.npy",
                                               tb::npy_array("<f4", "(4, 64)", x_samples())}}))}),
       4,
       {"calib.npz", "features"}});

  // ---- eval: models (today) ------------------------------------------------------------------
  c.push_back({"eval_reference_truncated",
               today,
               {"eval", "ref.onnx", "m.onnx", "--data", "calib.npy"},
               all({file("ref.onnx", half_of_small_model()), model(small), calib_npy()}),
               4,
               {"ref.onnx"}});
  c.push_back({"eval_candidate_missing",
               today,
               {"eval", "m.onnx", "cand.onnx", "--data", "calib.npy"},
               all({model(small), calib_npy()}),
               3,
               {"cand.onnx"}});
  c.push_back({"eval_candidate_not_onnx",
               today,
               {"eval", "m.onnx", "cand.onnx", "--data", "calib.npy"},
               all({model(small), calib_npy(), file("cand.onnx", "{\"json\": true}")}),
               4,
               {"cand.onnx"}});
  c.push_back({"eval_candidate_lacks_an_output",
               today,
               {"eval", "m.onnx", "cand.onnx", "--data", "calib.npy"},
               all({model(small), calib_npy(),
                    model(small_with([](auto& m) {
                            tb::node(m, "gemm1").set_output(0, "y2");
                            m.mutable_graph()->mutable_output(0)->set_name("y2");
                          }),
                          "cand.onnx")}),
               5,
               {"cand.onnx", "'y'"}});
  c.push_back({"eval_candidate_names_its_input_otherwise",
               today,
               {"eval", "m.onnx", "cand.onnx", "--data", "calib.npy"},
               all({model(small), calib_npy(),
                    model(small_with([](auto& m) {
                            tb::node(m, "mm0").set_input(0, "x2");
                            m.mutable_graph()->mutable_input(0)->set_name("x2");
                          }),
                          "cand.onnx")}),
               5,
               {"cand.onnx", "'x'"}});
  c.push_back({"eval_candidate_output_shape_differs",
               today,
               {"eval", "m.onnx", "cand.onnx", "--data", "calib.npy"},
               all({model(small), calib_npy(),
                    model(small_with([](auto& m) {
                            auto& w = tensor(m, "w1");
                            set_dims(w, {40, 32});
                            w.set_raw_data(w.raw_data().substr(0, 40 * 32 * 4));
                            auto& b = tensor(m, "b1");
                            set_dims(b, {40});
                            b.set_raw_data(b.raw_data().substr(0, 40 * 4));
                          }),
                          "cand.onnx")}),
               5,
               {"'y'"}});
  c.push_back({"eval_tokens_with_a_model_that_takes_no_tokens",
               today,
               {"eval", "m.onnx", "m.onnx", "--tokens", "tokens.bin", "--seq-len", "8"},
               all({model(small), tokens()}),
               5,
               {"m.onnx", "token ids"}});
  // Messages that name neither the models nor the inputs/outputs today (nobody assigned):
  c.push_back({"eval_tokens_candidate_names_its_token_input_otherwise",
               unassigned,
               {"eval", "lm.onnx", "cand.onnx", "--tokens", "tokens.bin", "--seq-len", "8",
                "--samples", "2"},
               all({model(lm, "lm.onnx"), tokens(),
                    model([] { return tb::lm_model(16, "tok_ids"); }, "cand.onnx")}),
               5,
               {"input_ids", "tok_ids"}});
  c.push_back(
      {"eval_tokens_candidate_vocabulary_differs",
       unassigned,
       {"eval", "lm.onnx", "cand.onnx", "--tokens", "tokens.bin", "--seq-len", "8", "--samples",
        "2"},
       all({model(lm, "lm.onnx"), tokens(), model([] { return tb::lm_model(20); }, "cand.onnx")}),
       5,
       {"lm_out", "cand.onnx"}});

  // ---- eval: data (today) ----------------------------------------------------------------------
  const std::vector<std::string> eval_npy = {"eval", "m.onnx", "m.onnx", "--data", "d.npy"};
  c.push_back({"eval_data_missing", today, eval_npy, model(small), 3, {"d.npy"}});
  c.push_back({"eval_data_wrong_dtype",
               today,
               eval_npy,
               all({model(small),
                    file("d.npy", tb::npy_array("<i8", "(4, 64)", std::string(4 * 64 * 8, '\0')))}),
               4,
               {"d.npy", "<i8"}});
  c.push_back({"eval_data_wrong_shape",
               today,
               eval_npy,
               all({model(small),
                    file("d.npy", tb::npy_array("<f4", "(4, 65)", std::string(4 * 65 * 4, '\0')))}),
               4,
               {"d.npy", "[4, 65]"}});
  c.push_back(
      {"eval_data_fortran_order",
       today,
       eval_npy,
       all({model(small), file("d.npy", tb::npy_array("<f4", "(4, 64)", x_samples(), true))}),
       5,
       {"d.npy", "Fortran"}});
  c.push_back({"eval_data_big_endian",
               today,
               eval_npy,
               all({model(small), file("d.npy", tb::npy_array(">f4", "(4, 64)", x_samples()))}),
               5,
               {"d.npy", ">f4"}});
  c.push_back({"eval_data_not_npy",
               today,
               eval_npy,
               all({model(small), file("d.npy", "NUMPY? no, just text\n")}),
               4,
               {"d.npy"}});
  c.push_back(
      {"eval_data_npz_truncated",
       today,
       {"eval", "m.onnx", "m.onnx", "--data", "d.npz"},
       all({model(small),
            file("d.npz", tb::zip_stored({{"x.npy", tb::npy_array("<f4", "(4, 64)", x_samples())}})
                              .substr(0, 200))}),
       4,
       {"d.npz"}});
  c.push_back(
      {"eval_data_tokens_outside_the_vocabulary",
       today,
       {"eval", "lm.onnx", "lm.onnx", "--data", "big.bin", "--seq-len", "8", "--samples", "2"},
       all({model(lm, "lm.onnx"), file("big.bin", std::string(64, '\xC8'))}),
       4,
       {"big.bin", "token"}});
  c.push_back({"eval_tokens_missing",
               today,
               {"eval", "lm.onnx", "lm.onnx", "--tokens", "nope.bin"},
               model(lm, "lm.onnx"),
               3,
               {"nope.bin"}});
  // Today a usage error (2) naming the file: the fix is a smaller --seq-len.
  c.push_back({"eval_tokens_shorter_than_a_window",
               today,
               {"eval", "lm.onnx", "lm.onnx", "--tokens", "short.bin", "--seq-len", "8"},
               all({model(lm, "lm.onnx"), file("short.bin", std::string(5, '\1'))}),
               2,
               {"short.bin"}});
  // Token ids the model's vocabulary does not hold: data that does not fit the model (4, as for
  // --data), naming the token file. Unassigned: today the executor's Gather fails.
  c.push_back(
      {"eval_tokens_outside_the_vocabulary",
       unassigned,
       {"eval", "lm.onnx", "lm.onnx", "--tokens", "big.bin", "--seq-len", "8", "--samples", "2"},
       all({model(lm, "lm.onnx"), file("big.bin", std::string(64, '\xC8'))}),
       4,
       {"big.bin"}});

  // ---- Options: numbers (issues 13 and 18) ----------------------------------------------------
  const auto small_calib = all({model(small), calib_npy()});
  c.push_back({"quantize_calib_batch_zero",
               options,
               gptq({"--calib-batch", "0"}),
               small_calib,
               2,
               {"--calib-batch", "0"},
               {no_huge_range}});
  // Random calibration inputs (no --calib) of a sequence length no machine holds: refused before
  // anything is allocated (was "out of memory", exit 1).
  c.push_back({"quantize_random_calibration_longer_than_memory",
               options,
               quantize({"--method", "gptq", "--calib-seq-len", "1000000000000"}),
               model(lm),
               2,
               {"input_ids", "[1, 1000000000000]", "sequence length"},
               {"out of memory"}});
  c.push_back({"quantize_gptq_block_zero",
               options,
               gptq({"--gptq-block", "0"}),
               small_calib,
               2,
               {"--gptq-block", "0"},
               {no_huge_range}});
  c.push_back({"quantize_awq_samples_zero",
               options,
               quantize({"--method", "awq_lite", "--calib", "calib.npy", "--awq-samples", "0"}),
               small_calib,
               2,
               {"--awq-samples", "0"},
               {no_huge_range}});
  c.push_back(
      {"quantize_damp_nan", options, gptq({"--damp", "nan"}), small_calib, 2, {"--damp", "nan"}});
  c.push_back(
      {"quantize_damp_inf", options, gptq({"--damp", "inf"}), small_calib, 2, {"--damp", "inf"}});
  c.push_back({"quantize_damp_negative",
               options,
               gptq({"--damp", "-0.5"}),
               small_calib,
               2,
               {"--damp", "-0.5"},
               {no_huge_range}});
  c.push_back(
      {"quantize_awq_alpha_step_nan",
       options,
       quantize({"--method", "awq_lite", "--calib", "calib.npy", "--awq-alpha-step", "nan"}),
       small_calib,
       2,
       {"--awq-alpha-step", "nan"}});
  c.push_back({"quantize_awq_clip_step_nan",
               options,
               quantize({"--method", "awq_clip", "--calib", "calib.npy", "--awq-clip-step", "nan"}),
               small_calib,
               2,
               {"--awq-clip-step", "nan"}});
  c.push_back({"quantize_awq_clip_min_nan",
               options,
               quantize({"--method", "awq_clip", "--calib", "calib.npy", "--awq-clip-min", "nan"}),
               small_calib,
               2,
               {"--awq-clip-min", "nan"}});
  c.push_back({"quantize_awq_clip_min_above_one",
               options,
               quantize({"--method", "awq_clip", "--calib", "calib.npy", "--awq-clip-min", "1.5"}),
               small_calib,
               2,
               {"--awq-clip-min", "1.5"}});
  c.push_back({"quantize_effective_bits_inf",
               options,
               quantize({"--auto", "--effective-bits", "inf", "--calib", "calib.npy"}),
               small_calib,
               2,
               {"--effective-bits", "inf"},
               {no_huge_range}});
  c.push_back({"quantize_effective_bits_nan",
               options,
               quantize({"--auto", "--effective-bits", "nan", "--calib", "calib.npy"}),
               small_calib,
               2,
               {"--effective-bits", "nan"}});
  c.push_back({"quantize_threads_negative",
               options,
               quantize({"--threads", "-1"}),
               model(small),
               2,
               {"--threads", "-1"}});
  c.push_back({"quantize_threads_absurd",
               options,
               quantize({"--threads", "100000"}),
               model(small),
               2,
               {"--threads", "100000"}});
  c.push_back(
      {"quantize_calib_samples_beyond_the_data",
       options,
       {"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib", "tokens.bin",
        "--calib-samples", "1000000000000", "--calib-seq-len", "8", "--group-size", "32"},
       all({model(lm, "lm.onnx"), tokens()}),
       2,
       {"--calib-samples", "1000000000000"}});
  // 2^36 tokens (a sparse file of zeros) give 4e8 distinct windows of 128, whose int64 ids alone
  // need 410 GB.
  c.push_back({"quantize_calib_samples_beyond_memory",
               options,
               {"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib",
                "tokens.bin", "--calib-samples", "400000000", "--group-size", "32"},
               all({model(lm, "lm.onnx"),
                    [](const fs::path& d) {
                      { std::ofstream(d / "tokens.bin", std::ios::binary); }
                      fs::resize_file(d / "tokens.bin", std::uint64_t(1) << 36);
                    }}),
               2,
               {"--calib-samples", "400000000"}});
  c.push_back({"quantize_calib_samples_negative",
               options,
               quantize({"--method", "gptq", "--calib", "calib.npy", "--calib-samples", "-2"}),
               all({model(small), calib_npy()}),
               2,
               {"--calib-samples", "-2"}});
  c.push_back({"quantize_calib_seq_len_zero",
               options,
               {"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib",
                "tokens.bin", "--calib-seq-len", "0", "--group-size", "32"},
               all({model(lm, "lm.onnx"), tokens()}),
               2,
               {"--calib-seq-len"}});
  c.push_back({"eval_seq_len_zero",
               options,
               {"eval", "lm.onnx", "lm.onnx", "--tokens", "tokens.bin", "--seq-len", "0"},
               all({model(lm, "lm.onnx"), tokens()}),
               2,
               {"--seq-len"}});
  c.push_back({"eval_samples_negative",
               options,
               {"eval", "lm.onnx", "lm.onnx", "--tokens", "tokens.bin", "--samples", "-3"},
               all({model(lm, "lm.onnx"), tokens()}),
               2,
               {"--samples"}});

  // ---- Options: files (issue 13) ----------------------------------------------------------------
  c.push_back({"quantize_plan_not_json",
               options,
               quantize({"--plan", "plan.json"}),
               all({model(small), file("plan.json", "{\"weights\": [")}),
               2,
               {"--plan", "plan.json"}});
  c.push_back({"quantize_plan_missing",
               options,
               quantize({"--plan", "noplan.json"}),
               model(small),
               3,
               {"noplan.json"}});
  c.push_back({"quantize_plan_without_weights",
               options,
               quantize({"--plan", "plan.json"}),
               all({model(small), file("plan.json", R"({"weights": 5})")}),
               2,
               {"--plan", "plan.json"}});
  c.push_back({"quantize_plan_bad_choice",
               options,
               quantize({"--plan", "plan.json"}),
               all({model(small),
                    file("plan.json", R"({"weights": [{"weight": "w0", "choice": "int5-gX"}]})")}),
               2,
               {"--plan", "plan.json", "int5-gX"}});
  // A plan for another model: the plan file is what is wrong (2, as the brief asks for any bad
  // --plan file), not the model.
  c.push_back(
      {"quantize_plan_names_an_unknown_weight",
       options,
       quantize({"--plan", "plan.json"}),
       all({model(small),
            file("plan.json", R"({"weights": [{"weight": "nosuch", "choice": "int4-g32"}]})")}),
       2,
       {"plan.json", "nosuch"}});
  c.push_back({"quantize_output_is_a_fifo",
               options,
               {"quantize", "m.onnx", "-o", "out.fifo"},
               all({model(small), fifo("out.fifo")}),
               3,
               {"out.fifo"}});
  // A character device made here (root), else a link to /dev/null: never /dev/null itself,
  // which a root run that renames onto its output would replace.
  c.push_back({"quantize_output_is_a_character_device",
               options,
               {"quantize", "m.onnx", "-o", "out.dev"},
               all({model(small),
                    [](const fs::path& d) {
                      if (::mknod((d / "out.dev").c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0)
                        fs::create_symlink("/dev/null", d / "out.dev");
                    }}),
               3,
               {"out.dev"}});

  // ---- Options: GPTQ's act-order and static groups (issue 13) -----------------------------------
  c.push_back({"quantize_act_order_groups_without_static_groups",
               today,
               gptq({"--no-static-groups"}),
               small_calib,
               2,
               {"--static-groups"}});
  c.push_back({"quantize_config_per_channel_flag_groups_without_static_groups",
               options,
               gptq({"--config", "pc.json", "--no-static-groups"}),
               all({small_calib, file("pc.json", R"({"group_size": "per_channel"})")}),
               2,
               {"--static-groups"}});
  c.push_back({"quantize_config_groups_without_static_groups",
               options,
               quantize({"--config", "g.json", "--no-static-groups", "--calib", "calib.npy"}),
               all({small_calib,
                    file("g.json", R"({"method": "gptq", "group_size": 32, "format": "qdq"})")}),
               2,
               {"--static-groups"}});
  // Not an error: per-channel needs no static groups (refused today, issue 13).
  c.push_back({"quantize_per_channel_act_order_without_static_groups_works",
               options,
               quantize({"--format", "qdq", "--group-size", "per-channel", "--method", "gptq",
                         "--no-static-groups", "--calib", "calib.npy"}),
               small_calib,
               0,
               {},
               {},
               {"out.onnx"}});

  // ---- Options: usage (today) -----------------------------------------------------------------
  c.push_back({"quantize_bits_matmulnbits_cannot_hold",
               today,
               quantize({"--bits", "3"}),
               model(small),
               2,
               {"--bits 3", "MatMulNBits"}});
  c.push_back({"quantize_bits_qdq_cannot_hold",
               today,
               quantize({"--bits", "2", "--format", "qdq"}),
               model(small),
               2,
               {"--bits 2"}});
  c.push_back({"quantize_group_size_matmulnbits_cannot_hold",
               today,
               quantize({"--group-size", "48"}),
               model(small),
               2,
               {"--group-size 48"}});
  c.push_back({"quantize_group_size_zero",
               today,
               quantize({"--group-size", "0"}),
               model(small),
               2,
               {"--group-size"}});
  c.push_back({"quantize_accuracy_level_with_qdq",
               today,
               quantize({"--format", "qdq", "--accuracy-level", "4"}),
               model(small),
               2,
               {"--accuracy-level"}});
  c.push_back({"quantize_unknown_option",
               today,
               quantize({"--frobnicate"}),
               model(small),
               2,
               {"--frobnicate"}});
  c.push_back(
      {"quantize_without_output", today, {"quantize", "m.onnx"}, model(small), 2, {"--output"}});
  c.push_back({"quantize_include_bad_regex",
               today,
               quantize({"--include", "(unclosed"}),
               model(small),
               2,
               {"--include", "(unclosed"}});
  c.push_back({"quantize_method_unknown",
               today,
               quantize({"--method", "magic"}),
               model(small),
               2,
               {"magic"}});
  c.push_back({"quantize_auto_without_budget",
               today,
               quantize({"--auto", "--calib", "calib.npy"}),
               small_calib,
               2,
               {"--effective-bits"}});
  c.push_back({"quantize_auto_candidates_garbage",
               today,
               quantize({"--auto", "--effective-bits", "4.5", "--auto-candidates", "int5-gX",
                         "--calib", "calib.npy"}),
               small_calib,
               2,
               {"--auto-candidates", "int5-gX"}});
  c.push_back({"quantize_token_dtype_unknown",
               today,
               {"quantize", "lm.onnx", "-o", "out.onnx", "--method", "gptq", "--calib",
                "tokens.bin", "--token-dtype", "f32"},
               all({model(lm, "lm.onnx"), tokens()}),
               2,
               {"f32"}});
  c.push_back({"eval_token_dtype_unknown",
               today,
               {"eval", "lm.onnx", "lm.onnx", "--tokens", "tokens.bin", "--token-dtype", "f32"},
               all({model(lm, "lm.onnx"), tokens()}),
               2,
               {"f32"}});
  c.push_back({"eval_language_model_without_tokens_or_data",
               today,
               {"eval", "lm.onnx", "lm.onnx"},
               model(lm, "lm.onnx"),
               2,
               {"--tokens"}});
  c.push_back({"eval_json_folder_missing",
               today,
               {"eval", "m.onnx", "m.onnx", "--data", "calib.npy", "--json", "nodir/r.json"},
               small_calib,
               3,
               {"nodir"}});
  // --json naming a model would overwrite it (quantize refuses the same for --report).
  c.push_back({"eval_json_is_the_reference",
               unassigned,
               {"eval", "m.onnx", "cand.onnx", "--data", "calib.npy", "--json", "m.onnx"},
               all({small_calib, model(small, "cand.onnx")}),
               2,
               {"--json", "m.onnx"}});
  c.push_back(
      {"eval_without_candidate", today, {"eval", "m.onnx"}, model(small), 2, {"CANDIDATE"}});
  c.push_back({"inspect_unknown_option",
               today,
               {"inspect", "m.onnx", "--frobnicate"},
               model(small),
               2,
               {"--frobnicate"}});
  c.push_back(
      {"inspect_missing_input", today, {"inspect", "nope.onnx"}, nothing(), 3, {"nope.onnx"}});
  c.push_back({"inspect_truncated_model",
               today,
               {"inspect", "m.onnx", "--json"},
               file("m.onnx", half_of_small_model()),
               4,
               {"m.onnx"}});
  c.push_back({"inspect_external_dotdot",
               today,
               {"inspect", "sub/m.onnx"},
               model(small_with_files([](auto& m, const fs::path& d) {
                       tb::to_external(tensor(m, "w0"), d / "sub", "../w0.bin", d / "w0.bin");
                     }),
                     "sub/m.onnx"),
               4,
               {"w0", "../w0.bin"}});
  return c;
}

// ---- The test ----------------------------------------------------------------------------------

class BadInput : public int4q::test::scratch_dir_test,
                 public ::testing::WithParamInterface<bad_case> {
 protected:
  void TearDown() override {
    std::error_code ec;  // a read-only folder of a row must not stop the clean-up
    for (auto it = fs::recursive_directory_iterator(dir_, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->symlink_status(ec).type() == fs::file_type::directory)
        fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
    }
    int4q::test::scratch_dir_test::TearDown();
  }
};

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool mentions(const std::string& text, const std::string& alternatives) {
  std::size_t start = 0;
  while (true) {
    const std::size_t bar = alternatives.find('|', start);
    if (text.find(alternatives.substr(start, bar - start)) != std::string::npos) return true;
    if (bar == std::string::npos) return false;
    start = bar + 1;
  }
}

TEST_P(BadInput, Case) {
  const bad_case& c = GetParam();
  c.setup(dir_);
  if (IsSkipped() || HasFatalFailure()) return;
  const auto before = snapshot(dir_);
  int sig = 0;
  const cli_result r = run_limited(dir_, c.args, c.file_limit_kb, sig, c.unprivileged);
  RecordProperty("exit", r.status);  // in --gtest_output=xml: what each row got
  RecordProperty("stderr", r.err);

  // Every problem of the row, reported together in one failure.
  std::vector<std::string> problems;
  if (sig != 0) {
    problems.push_back("ended by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")");
  } else if (r.status != c.code) {
    problems.push_back("exit " + std::to_string(r.status) + ", expected " + std::to_string(c.code));
  }
  const std::vector<std::string> lines = lines_of(r.err);
  if (!r.err.empty() && r.err.back() != '\n') problems.push_back("stderr does not end a line");
  std::string message;  // the error line, or for exit 0 the warnings
  if (c.code != 0) {
    if (!lines.empty()) message = lines.back();
    if (message.rfind("int4q: error: ", 0) != 0)
      problems.push_back("the last line of stderr is not 'int4q: error: ...'");
    for (std::size_t i = 0; i + 1 < lines.size(); ++i) {
      if (lines[i].rfind("int4q: warning: ", 0) != 0)
        problems.push_back("line " + std::to_string(i + 1) +
                           " of stderr is neither a warning "
                           "nor the one error line");
    }
  } else {
    for (const auto& line : lines) {
      if (line.rfind("int4q: warning: ", 0) != 0)
        problems.push_back("stderr holds a line that is no warning: " + line);
      message += line + "\n";
    }
  }
  for (const auto& m : c.mentions) {
    if (!mentions(message, m)) problems.push_back("the message does not name " + m);
  }
  for (const auto& a : c.absent) {
    if (r.err.find(a) != std::string::npos) problems.push_back("stderr holds " + a);
  }
  const std::set<std::string> expected(c.outputs.begin(), c.outputs.end());
  const std::string changed = changes(before, snapshot(dir_), expected);
  if (!changed.empty()) problems.push_back("the folder differs after the run:\n" + changed);

  if (!problems.empty()) {
    std::string list;
    for (const auto& p : problems) list += "  - " + p + "\n";
    ADD_FAILURE() << "[" << c.owner << "] " << ::testing::PrintToString(c) << "\n"
                  << list << describe(r);
  }
}

std::string case_name(const ::testing::TestParamInfo<bad_case>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(BadInputs, BadInput, ::testing::ValuesIn(cases()), case_name);

// The table itself: enough rows, every subcommand, names unique.
TEST(BadInputTable, CoversEverySubcommandWithUniqueNames) {
  const auto all_cases = cases();
  EXPECT_GE(all_cases.size(), 60u);
  std::set<std::string> names;
  std::map<std::string, int> per_subcommand;
  for (const auto& c : all_cases) {
    EXPECT_TRUE(names.insert(c.name).second) << "duplicate row " << c.name;
    ASSERT_FALSE(c.args.empty()) << c.name;
    ++per_subcommand[c.args[0]];
    EXPECT_EQ(c.name.rfind(c.args[0] + "_", 0), 0u) << c.name << " starts with its subcommand";
    if (c.code != 0) {
      EXPECT_FALSE(c.mentions.empty()) << c.name << " names the offending thing";
    }
  }
  EXPECT_GE(per_subcommand["quantize"], 30);
  EXPECT_GE(per_subcommand["inspect"], 8);
  EXPECT_GE(per_subcommand["eval"], 15);
}

}  // namespace
