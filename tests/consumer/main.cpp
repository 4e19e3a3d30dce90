// Uses the installed int4q package: prints the version of the headers it was compiled against.
#include <int4q/quant.hpp>

#include <cstdio>

int main() {
  std::printf("%s\n", int4q::version_string());
  return 0;
}
