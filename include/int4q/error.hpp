// int4q errors: every failure of the library is one of these exceptions, with a message that
// names the offending option or position and says what to do.
#ifndef INT4Q_ERROR_HPP
#define INT4Q_ERROR_HPP

#include <cstddef>
#include <stdexcept>
#include <string>

namespace int4q {

/// Base class of every exception thrown by int4q.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An option or combination of options that int4q does not support (bad bits, group size, ...).
class config_error : public error {
 public:
  using error::error;
};

/// A shape or argument that does not fit the call (mismatched scales, wrong code range, ...).
class shape_error : public error {
 public:
  using error::error;
};

/// A non-finite weight (NaN or Inf); `row()` and `col()` give its position in the [K, N] weight.
class non_finite_error : public error {
 public:
  non_finite_error(std::size_t row, std::size_t col, double value)
      : error("weight[" + std::to_string(row) + ", " + std::to_string(col) + "] is " +
              (value != value ? std::string("NaN") : std::string(value > 0 ? "+Inf" : "-Inf")) +
              ": int4q cannot quantize non-finite weights; fix or exclude this tensor"),
        row_(row),
        col_(col) {}
  /// A non-finite value elsewhere (e.g. an activation): `message` says what and what to do.
  non_finite_error(const std::string& message, std::size_t row, std::size_t col)
      : error(message), row_(row), col_(col) {}
  std::size_t row() const noexcept { return row_; }
  std::size_t col() const noexcept { return col_; }

 private:
  std::size_t row_;
  std::size_t col_;
};

}  // namespace int4q

#endif  // INT4Q_ERROR_HPP
