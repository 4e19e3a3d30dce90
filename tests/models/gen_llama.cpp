// int4q_llama_gen: writes a Llama-shaped test model (tests/models/llama_model.hpp) and, if asked,
// a raw token file of random calibration tokens.
//
//   int4q_llama_gen OUT.onnx [--layers N] [--hidden N] [--intermediate N] [--heads N]
//                   [--kv-heads N] [--vocab N] [--max-positions N] [--seed N] [--fp16]
//                   [--inline] [--llama2-7b] [--tokens FILE COUNT]
//
// --llama2-7b starts from Llama-2-7B's widths (fp16, external data); later flags override.
// Weights go to OUT.onnx.data unless --inline. --tokens writes COUNT random ids below the vocab
// (u8 when vocab <= 256, else u16: pass that as `int4q quantize --token-dtype`).
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>

#include "llama_model.hpp"

int main(int argc, char** argv) {
  try {
    int4q::test::llama_options o;
    std::string out, tokens_path;
    std::uint64_t tokens = 0;
    for (int a = 1; a < argc; ++a) {
      const std::string arg = argv[a];
      auto next = [&]() -> std::string {
        if (a + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
        return argv[++a];
      };
      auto next_int = [&]() { return std::stoi(next()); };
      if (arg == "--layers")
        o.layers = next_int();
      else if (arg == "--hidden")
        o.hidden = next_int();
      else if (arg == "--intermediate")
        o.intermediate = next_int();
      else if (arg == "--heads")
        o.heads = next_int();
      else if (arg == "--kv-heads")
        o.kv_heads = next_int();
      else if (arg == "--vocab")
        o.vocab = next_int();
      else if (arg == "--max-positions")
        o.max_positions = next_int();
      else if (arg == "--seed")
        o.seed = std::stoull(next());
      else if (arg == "--fp16")
        o.fp16 = true;
      else if (arg == "--inline")
        o.external_data = false;
      else if (arg == "--llama2-7b")
        o = int4q::test::llama_options::llama2_7b(o.layers);
      else if (arg == "--tokens") {
        tokens_path = next();
        tokens = std::stoull(next());
      } else if (!arg.empty() && arg[0] != '-' && out.empty())
        out = arg;
      else
        throw std::invalid_argument("unknown argument '" + arg + "'");
    }
    if (out.empty()) throw std::invalid_argument("no output file given");
    int4q::test::write_llama_model(o, out);
    if (!tokens_path.empty()) {
      const std::string dtype = int4q::test::write_token_file(tokens_path, o.vocab, tokens, o.seed);
      std::printf("%s: %llu tokens (--token-dtype %s)\n", tokens_path.c_str(),
                  static_cast<unsigned long long>(tokens), dtype.c_str());
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "int4q_llama_gen: %s\n", e.what());
    return 1;
  }
}
