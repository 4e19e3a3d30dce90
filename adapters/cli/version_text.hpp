// `int4q --version`: int4q's version and the versions of the libraries it was built with.
#ifndef INT4Q_CLI_VERSION_TEXT_HPP
#define INT4Q_CLI_VERSION_TEXT_HPP

#include <string>

namespace int4q {
namespace cli {

/// "int4q 0.1.0" and one line per dependency.
std::string version_text();

}  // namespace cli
}  // namespace int4q

#endif  // INT4Q_CLI_VERSION_TEXT_HPP
