// One of two translation units that both include the whole library; see odr_main.cpp.
#include <int4q/quant.hpp>

#include <string>

std::string odr_a() { return int4q::version_string(); }
