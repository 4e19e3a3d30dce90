// Range checks of numeric options, one set of words for the command line and the JSON files
// (--config, --plan): "--calib-batch 0: must be an integer >= 1", "--awq-clip-min nan: must be a
// number in (0, 1]", "--config file 'c.json': "bits" 9: must be an integer from 2 to 8".
// Every real option rejects NaN and Inf; every value is parsed whole (no "12abc").
#ifndef INT4Q_CLI_OPTION_CHECKS_HPP
#define INT4Q_CLI_OPTION_CHECKS_HPP

#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include <CLI/CLI.hpp>

namespace int4q {
namespace cli {

/// The integers [min, max]; `extra` names a special value in the text ("0 = all cores").
struct int_range {
  int_range(std::int64_t lowest, std::int64_t highest = std::numeric_limits<std::int64_t>::max(),
            std::string special = "")
      : min(lowest), max(highest), extra(std::move(special)) {}
  std::int64_t min;
  std::int64_t max;
  std::string extra;
  /// ">= 1", "from 2 to 8", "from 0 (all cores) to 1024".
  std::string bounds() const;
  /// "an integer " + bounds().
  std::string text() const { return "an integer " + bounds(); }
  /// For --help: ">= 1", "2 to 8", "0 to 1024, 0 = all cores".
  std::string help() const;
  bool contains(std::int64_t v) const noexcept { return v >= min && v <= max; }
};

/// The finite reals between lo and hi, each end open or closed (hi = +inf: no upper end).
struct real_range {
  real_range(double low, bool low_open, double high = std::numeric_limits<double>::infinity(),
             bool high_open = true)
      : lo(low), lo_open(low_open), hi(high), hi_open(high_open) {}
  double lo;
  bool lo_open;
  double hi;
  bool hi_open;
  /// "> 0", "in (0, 1]".
  std::string bounds() const;
  /// "a number " + bounds().
  std::string text() const { return "a number " + bounds(); }
  bool contains(double v) const noexcept;
};

/// `text` as an integer in `r`, or nothing (not an integer, out of range, overflow).
std::optional<std::int64_t> parse_int(const std::string& text, const int_range& r);
/// `text` as a finite real in `r`, or nothing (not a number, NaN, Inf, out of range).
std::optional<double> parse_real(const std::string& text, const real_range& r);

/// `text` as a byte count: digits with an optional binary suffix K, M, G or T (KiB = 1024 bytes,
/// any case, an optional trailing "B" or "iB": 512M, 4G, 4GiB, 1000); nothing when it is not one
/// or overflows 64 bits.
std::optional<std::uint64_t> parse_size(const std::string& text);

/// "<name> <value>: must be <range>" (name: "--bits", or "--config file 'c.json': \"bits\"").
std::string range_message(const std::string& name, const std::string& value,
                          const std::string& range_text);

/// Adds `flag` (e.g. "--calib-batch"): its value parsed as an integer of `r` and given to `set`;
/// anything else is a usage error naming the flag, the value and `r`. `default_text` is shown by
/// --help ("" for none); the help text ends with the range.
CLI::Option* add_int_option(CLI::App& app, const std::string& flag, const int_range& r,
                            std::function<void(std::int64_t)> set, const std::string& help,
                            const std::string& default_text);

/// The same, storing into `target` (an integer type that holds r.max), its value the default.
template <class T>
CLI::Option* add_int_option(CLI::App& app, const std::string& flag, T& target, const int_range& r,
                            const std::string& help) {
  return add_int_option(
      app, flag, r, [&target](std::int64_t v) { target = static_cast<T>(v); }, help,
      std::to_string(target));
}

/// As add_int_option for a finite real of `r`.
CLI::Option* add_real_option(CLI::App& app, const std::string& flag, const real_range& r,
                             std::function<void(double)> set, const std::string& help,
                             const std::string& default_text);
CLI::Option* add_real_option(CLI::App& app, const std::string& flag, double& target,
                             const real_range& r, const std::string& help);

/// `--NAME` (on) and `--no-NAME` (off) for `target`, which holds the default; --help shows
/// "(default on)" or "(default off)" (CLI11's "!--no-NAME" form shows "{false}" instead). The two
/// may both be given: --no-NAME wins.
void add_switch(CLI::App& app, const std::string& name, bool& target, const std::string& help);

/// "0.05", "1e-06": a real as --help shows it.
std::string real_text(double v);

/// --threads: 0 = all cores, at most max_threads (more gives no speed, only stacks and
/// contention; machine independent, so that a command line valid on one machine is on all).
constexpr std::int64_t max_threads = 1024;
int_range threads_range();

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_OPTION_CHECKS_HPP
