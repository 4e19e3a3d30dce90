// Runs a fuzz target's LLVMFuzzerTestOneInput on files, without libFuzzer: the regression test
// of the normal build (CTest fuzz.replay.<target>) and a way to reproduce a finding in a
// debugger.
//
//   int4q_fuzz_<target>_replay PATH...   (each PATH a file, or a folder: its files, recursively,
//                                         in name order; a missing PATH is skipped with a note)
// Prints one line per input and the count; a crash or sanitizer report ends the run with the
// input's name on the line before it.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (int a = 1; a < argc; ++a) {
    const fs::path p = argv[a];
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      std::vector<fs::path> found;
      for (const auto& e : fs::recursive_directory_iterator(p, ec))
        if (e.is_regular_file()) found.push_back(e.path());
      std::sort(found.begin(), found.end());
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(p, ec)) {
      files.push_back(p);
    } else {
      std::printf("replay: %s: not there, skipped\n", p.c_str());
    }
  }
  std::size_t count = 0;
  for (const fs::path& f : files) {
    if (f.filename() == "README.md" || f.filename() == ".gitkeep") continue;
    std::ifstream in(f, std::ios::binary);
    const std::vector<char> bytes{std::istreambuf_iterator<char>(in),
                                  std::istreambuf_iterator<char>()};
    if (!in.good() && !in.eof()) {
      std::fprintf(stderr, "replay: cannot read %s\n", f.c_str());
      return 1;
    }
    std::printf("replay: %s (%zu bytes)\n", f.c_str(), bytes.size());
    std::fflush(stdout);
    LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    ++count;
  }
  std::printf("replay: %zu inputs, no crash\n", count);
  return count == 0 ? 1 : 0;
}
