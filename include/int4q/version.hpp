// int4q: weight quantization for ONNX models.
// The one place that states the version; CMake parses the three numbers below.
#ifndef INT4Q_VERSION_HPP
#define INT4Q_VERSION_HPP

#define INT4Q_VERSION_MAJOR 0
#define INT4Q_VERSION_MINOR 1
#define INT4Q_VERSION_PATCH 0

#define INT4Q_DETAIL_STR2(x) #x
#define INT4Q_DETAIL_STR(x) INT4Q_DETAIL_STR2(x)
/// "MAJOR.MINOR.PATCH" as a string literal.
#define INT4Q_VERSION_STRING            \
  INT4Q_DETAIL_STR(INT4Q_VERSION_MAJOR) \
  "." INT4Q_DETAIL_STR(INT4Q_VERSION_MINOR) "." INT4Q_DETAIL_STR(INT4Q_VERSION_PATCH)

namespace int4q {
/// Version of the headers in use, "MAJOR.MINOR.PATCH".
inline constexpr const char* version_string() noexcept { return INT4Q_VERSION_STRING; }
}  // namespace int4q

#endif  // INT4Q_VERSION_HPP
