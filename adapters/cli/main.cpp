// int4q: quantize the MatMul/Gemm weights of ONNX models. Each subcommand lives in its own file
// (<name>_command.cpp: an options struct, setup_<name>(CLI::App&), run_<name>(options)); main maps
// every failure to one line on stderr and a documented exit code (exit_codes_text()).
#include <cstdio>  // first: defines __GLIBC__ on glibc
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <cblas.h>

#include <exception>
#include <new>
#include <string>

#include <CLI/CLI.hpp>

#include <int4q/error.hpp>
#include <int4q/onnx/model.hpp>
#include <int4q/onnx/option_error.hpp>
#include <int4q/version.hpp>

#include "cli_common.hpp"
#include "eval_command.hpp"
#include "inspect_command.hpp"
#include "mpi_ranks.hpp"
#include "option_flags.hpp"
#include "quantize_command.hpp"
#include "signal_cleanup.hpp"
#include "version_text.hpp"

namespace {

int fail(int code, std::string message) {
  int4q::cli::wait_if_interrupted();  // a signal on another thread ends the run, not this error
  for (char& c : message) c = c == '\n' ? ' ' : c;
  std::fflush(stdout);
  int4q::onnx::communicator* comm = int4q::cli::current_communicator();
  if (int4q::onnx::distributed(comm)) {
    // The other ranks may wait in a collective: the whole job ends, with this exit code.
    std::fprintf(stderr, "int4q: error: rank %d of %d: %s\n", comm->rank(), comm->size(),
                 message.c_str());
    std::fflush(stderr);
    comm->abort(code);
  }
  std::fprintf(stderr, "int4q: error: %s\n", message.c_str());
  return code;
}

/// The library names option fields in its messages; the subcommand's flags replace them.
const int4q::cli::flag_names& flags_of(const CLI::App& app) {
  const auto subs = app.get_subcommands();
  const bool eval = !subs.empty() && subs[0]->get_name() == "eval";
  return eval ? int4q::cli::eval_flags() : int4q::cli::quantize_flags();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace int4q::cli;
  // SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGABRT: remove the run's temporary files, one line on
  // stderr, end by the same signal (signal_cleanup.hpp).
  install_signal_cleanup();
#if defined(__GLIBC__)
  // Weights are read, quantized and packed one after the other into buffers of similar sizes.
  // glibc maps every block above 32 MiB afresh and unmaps it on free, so each weight paid a page
  // fault per 4 KiB for each of its buffers (half the time of a Llama-7B layer). Keeping large
  // blocks in the heap lets the next weight reuse them; the peak stays the same.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
#if defined(OPENBLAS_VERSION)
  // Byte-identical outputs whatever the thread count: OpenBLAS's multi-threaded sgemm rounds
  // differently from its single-threaded one, so BLAS runs on one thread and int4q spreads
  // fixed blocks of work (executor row blocks, attention heads) over its own threads instead.
  openblas_set_num_threads(1);
#endif
  CLI::App app{"int4q " INT4Q_VERSION_STRING
               ": quantize the MatMul/Gemm weights of ONNX models to 2-8 bits",
               "int4q"};
  app.set_version_flag("--version", version_text(),
                       "Print the versions of int4q and its libraries");
  app.footer(exit_codes_text());
  setup_quantize(app);
  setup_inspect(app);
  setup_eval(app);
  try {
    app.parse(argc, argv);
    if (app.get_subcommands().empty()) {
      throw usage_error(
          "a subcommand is required: int4q quantize IN -o OUT, int4q inspect IN, or "
          "int4q eval REFERENCE CANDIDATE --tokens FILE");
    }
    wait_if_interrupted();
    return exit_ok;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    const auto subs = app.get_subcommands();
    const std::string help =
        subs.empty() ? "int4q --help" : "int4q " + subs[0]->get_name() + " --help";
    return fail(exit_usage, std::string(e.what()) + " (see " + help + ")");
  } catch (const usage_error& e) {
    return fail(exit_usage, e.what());
  } catch (const int4q::config_error& e) {
    return fail(exit_usage, with_flags(e.what(), flags_of(app)));
  } catch (const int4q::onnx::option_error& e) {
    return fail(exit_usage, with_flags(e.what(), flags_of(app)));
  } catch (const int4q::onnx::model_error& e) {
    return fail(e.exit_code(), with_flags(e.what(), flags_of(app)));
  } catch (const int4q::non_finite_error& e) {
    return fail(exit_invalid, e.what());
  } catch (const std::bad_alloc&) {
    return fail(exit_internal, "out of memory");
  } catch (const std::exception& e) {
    return fail(exit_internal, std::string("internal error: ") + e.what() + " (please report it)");
  }
}
