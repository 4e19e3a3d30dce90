// ODR test: odr_a.cpp and odr_b.cpp both include <int4q/quant.hpp> and use the library. If a
// header defines something that is not inline, constexpr or a template, linking them fails
// with a multiple-definition error; running the program checks that both agree.
#include <cstdio>
#include <string>

std::string odr_a();
std::string odr_b();

int main() {
  const std::string a = odr_a();
  const std::string b = odr_b();
  if (a.empty() || a != b) {
    std::fprintf(stderr, "odr: translation units disagree: '%s' vs '%s'\n", a.c_str(), b.c_str());
    return 1;
  }
  std::printf("odr: ok (%s)\n", a.c_str());
  return 0;
}
