#include "option_checks.hpp"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace int4q {
namespace cli {

std::string real_text(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", v);
  return buffer;
}

std::string int_range::bounds() const {
  const std::string low = std::to_string(min) + (extra.empty() ? "" : " (" + extra + ")");
  if (max == std::numeric_limits<std::int64_t>::max()) return ">= " + low;
  return "from " + low + " to " + std::to_string(max);
}

std::string int_range::help() const {
  std::string h = max == std::numeric_limits<std::int64_t>::max()
                      ? ">= " + std::to_string(min)
                      : std::to_string(min) + " to " + std::to_string(max);
  return extra.empty() ? h : h + ", " + std::to_string(min) + " = " + extra;
}

std::string real_range::bounds() const {
  if (std::isinf(hi)) return (lo_open ? "> " : ">= ") + real_text(lo);
  return std::string("in ") + (lo_open ? "(" : "[") + real_text(lo) + ", " + real_text(hi) +
         (hi_open ? ")" : "]");
}

bool real_range::contains(double v) const noexcept {
  if (!std::isfinite(v)) return false;
  const bool above = lo_open ? v > lo : v >= lo;
  const bool below = hi_open ? v < hi : v <= hi;
  return above && below;
}

std::optional<std::int64_t> parse_int(const std::string& text, const int_range& r) {
  // Digits with an optional sign, nothing else (strtoll alone would take " 12", "12abc").
  std::size_t k = text.size() > 1 && (text[0] == '-' || text[0] == '+') ? 1 : 0;
  if (k == text.size()) return std::nullopt;
  for (std::size_t p = k; p < text.size(); ++p) {
    if (text[p] < '0' || text[p] > '9') return std::nullopt;
  }
  errno = 0;
  const long long v = std::strtoll(text.c_str(), nullptr, 10);
  if (errno == ERANGE || !r.contains(v)) return std::nullopt;
  return static_cast<std::int64_t>(v);
}

std::optional<double> parse_real(const std::string& text, const real_range& r) {
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size() || !r.contains(v)) return std::nullopt;
  return v;
}

std::optional<std::uint64_t> parse_size(const std::string& text) {
  std::size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0) return std::nullopt;
  std::uint64_t v = 0;
  for (std::size_t i = 0; i < digits; ++i) {
    const std::uint64_t d = static_cast<std::uint64_t>(text[i] - '0');
    if (v > (std::numeric_limits<std::uint64_t>::max() - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  std::string unit;
  for (std::size_t i = digits; i < text.size(); ++i)
    unit += static_cast<char>(std::toupper(static_cast<unsigned char>(text[i])));
  int shift = unit.empty() || unit == "B" ? 0 : -1;
  const std::string prefixes = "KMGT";
  for (std::size_t p = 0; p < prefixes.size(); ++p) {
    const std::string x(1, prefixes[p]);
    if (unit == x || unit == x + "B" || unit == x + "IB") shift = 10 * static_cast<int>(p + 1);
  }
  if (shift < 0 || (shift > 0 && v > (std::numeric_limits<std::uint64_t>::max() >> shift)))
    return std::nullopt;
  return v << shift;
}

std::string range_message(const std::string& name, const std::string& value,
                          const std::string& range_text) {
  return name + " " + value + ": must be " + range_text;
}

CLI::Option* add_int_option(CLI::App& app, const std::string& flag, const int_range& r,
                            std::function<void(std::int64_t)> set, const std::string& help,
                            const std::string& default_text) {
  CLI::Option* o = app.add_option_function<std::string>(
      flag,
      [r, flag, set](const std::string& v) {
        const auto x = parse_int(v, r);
        // ValidationError(name, msg) reads "name: msg"; main adds "(see int4q CMD --help)".
        if (!x) throw CLI::ValidationError(flag + " " + v, "must be " + r.text());
        set(*x);
      },
      help + " (range: " + r.help() + ")");
  o->type_name("N");
  if (!default_text.empty()) o->default_str(default_text);
  return o;
}

CLI::Option* add_real_option(CLI::App& app, const std::string& flag, const real_range& r,
                             std::function<void(double)> set, const std::string& help,
                             const std::string& default_text) {
  CLI::Option* o = app.add_option_function<std::string>(
      flag,
      [r, flag, set](const std::string& v) {
        const auto x = parse_real(v, r);
        if (!x) throw CLI::ValidationError(flag + " " + v, "must be " + r.text());
        set(*x);
      },
      help + " (range: " + r.bounds() + ")");
  o->type_name("X");
  if (!default_text.empty()) o->default_str(default_text);
  return o;
}

CLI::Option* add_real_option(CLI::App& app, const std::string& flag, double& target,
                             const real_range& r, const std::string& help) {
  return add_real_option(
      app, flag, r, [&target](double v) { target = v; }, help, real_text(target));
}

void add_switch(CLI::App& app, const std::string& name, bool& target, const std::string& help) {
  // Two flags (a "!--no-NAME" alternative name would show as "--no-NAME{false}" in --help).
  // CLI11 runs option callbacks in the order the options were added: --no-NAME wins when both
  // are given.
  app.add_flag_callback(
      "--" + name, [&target] { target = true; },
      help + " (default " + (target ? "on" : "off") + ")");
  app.add_flag_callback(
      "--no-" + name, [&target] { target = false; },
      "Turn --" + name + " off (wins when both are given)");
}

int_range threads_range() { return {0, max_threads, "all cores"}; }

}  // namespace cli
}  // namespace int4q
