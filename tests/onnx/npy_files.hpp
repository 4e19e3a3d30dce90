// Test helper: .npy and .npz (ZIP) files written byte by byte from the published formats (NumPy's
// .npy format description, PKWARE's APPNOTE 6.3 for ZIP, RFC 1951 deflate through zlib), so that
// the readers of calib_data.hpp are checked against the specifications, not against themselves.
// Used by tests/onnx/test_calib_data.cpp and the fuzz seed generator (tests/fuzz/make_seeds.cpp).
#ifndef INT4Q_TESTS_ONNX_NPY_FILES_HPP
#define INT4Q_TESTS_ONNX_NPY_FILES_HPP

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace int4q {
namespace test {

/// Little-endian integers appended to `s`.
inline void put16(std::string& s, std::uint32_t v) {
  s += static_cast<char>(v & 0xFF);
  s += static_cast<char>((v >> 8) & 0xFF);
}
inline void put32(std::string& s, std::uint32_t v) {
  put16(s, v & 0xFFFF);
  put16(s, v >> 16);
}
inline void put64(std::string& s, std::uint64_t v) {
  put32(s, static_cast<std::uint32_t>(v));
  put32(s, static_cast<std::uint32_t>(v >> 32));
}

/// The bytes of `v` as they lie in memory (little endian on every machine int4q builds for).
template <class T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

/// A .npy header dict: {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }.
inline std::string npy_dict(const std::string& descr, const std::string& shape,
                            bool fortran = false) {
  return "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
         ", 'shape': " + shape + ", }";
}

/// A .npy file: "\x93NUMPY", major, minor, header length (uint16 for 1.0, uint32 for 2.0/3.0),
/// the dict followed by `growth_spaces` spaces (NumPy's room for appending in place), padded
/// with spaces and ended by '\n' so that the data starts at a multiple of `align` (64 today,
/// 16 in old NumPy), then the data.
inline std::string npy(const std::string& dict, const std::string& data, int major = 1,
                       std::size_t align = 64, std::size_t growth_spaces = 0) {
  const std::size_t pre = major == 1 ? 10 : 12;
  std::string header = dict + std::string(growth_spaces, ' ');
  while ((pre + header.size() + 1) % align != 0) header += ' ';
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(major);
  out += '\0';
  if (major == 1)
    put16(out, static_cast<std::uint32_t>(header.size()));
  else
    put32(out, static_cast<std::uint32_t>(header.size()));
  return out + header + data;
}

/// A version 1.0 .npy of `data` with that descr and shape, e.g. npy_array("<f4", "(2, 3)", bytes).
inline std::string npy_array(const std::string& descr, const std::string& shape,
                             const std::string& data, bool fortran = false) {
  return npy(npy_dict(descr, shape, fortran), data);
}

inline std::uint32_t crc_of(const std::string& s) {
  return static_cast<std::uint32_t>(
      crc32(0, reinterpret_cast<const Bytef*>(s.data()), static_cast<uInt>(s.size())));
}

/// Raw deflate (RFC 1951, no zlib header), as ZIP method 8 stores it.
inline std::string deflate_raw(const std::string& in, int level = 6) {
  z_stream s{};
  if (deflateInit2(&s, level, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflate_raw: deflateInit2 failed");
  std::string out(deflateBound(&s, static_cast<uLong>(in.size())), '\0');
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  s.next_out = reinterpret_cast<Bytef*>(&out[0]);
  s.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&s, Z_FINISH);
  out.resize(s.total_out);
  deflateEnd(&s);
  if (rc != Z_STREAM_END) throw std::runtime_error("deflate_raw: deflate did not finish");
  return out;
}

struct zip_member {
  std::string name;
  std::string data;
  bool deflate = false;
};

/// How ZIP64 appears: none; local headers only (Python's zipfile with force_zip64, as
/// numpy.savez writes: sizes 0xFFFFFFFF in the local header and an 0x0001 extra field); or
/// everywhere (central directory, ZIP64 end record and locator too).
enum class zip64 { none, local_only, full };

/// A ZIP archive (APPNOTE 6.3: 4.3.7 local header, 4.3.12 central directory header, 4.3.14
/// ZIP64 end of central directory record, 4.3.15 its locator, 4.3.16 end of central directory
/// record, 4.5.3 ZIP64 extended information extra field). `method_override` (unless 0xFFFF)
/// replaces the method field; `bad_crc` flips the CRC's lowest bit.
inline std::string zip(const std::vector<zip_member>& members, zip64 z64 = zip64::none,
                       std::uint16_t method_override = 0xFFFF, bool bad_crc = false) {
  std::string out, central;
  for (const auto& m : members) {
    const std::string body = m.deflate ? deflate_raw(m.data) : m.data;
    const std::uint16_t method = method_override != 0xFFFF ? method_override : m.deflate ? 8 : 0;
    const std::uint32_t crc = crc_of(m.data) ^ (bad_crc ? 1u : 0u);
    const std::uint64_t offset = out.size();
    // Local file header.
    put32(out, 0x04034b50);
    put16(out, z64 == zip64::none ? 20 : 45);  // version needed
    put16(out, 0);                             // flags
    put16(out, method);
    put16(out, 0);     // time
    put16(out, 0x21);  // date: 1980-01-01
    put32(out, crc);
    put32(out, z64 == zip64::none ? static_cast<std::uint32_t>(body.size()) : 0xFFFFFFFFu);
    put32(out, z64 == zip64::none ? static_cast<std::uint32_t>(m.data.size()) : 0xFFFFFFFFu);
    put16(out, static_cast<std::uint32_t>(m.name.size()));
    put16(out, z64 == zip64::none ? 0 : 20);
    out += m.name;
    if (z64 != zip64::none) {
      put16(out, 0x0001);
      put16(out, 16);
      put64(out, m.data.size());  // uncompressed first, then compressed
      put64(out, body.size());
    }
    out += body;
    // Central directory header.
    const bool big = z64 == zip64::full;
    put32(central, 0x02014b50);
    put16(central, 45);  // version made by
    put16(central, big ? 45 : 20);
    put16(central, 0);
    put16(central, method);
    put16(central, 0);
    put16(central, 0x21);
    put32(central, crc);
    put32(central, big ? 0xFFFFFFFFu : static_cast<std::uint32_t>(body.size()));
    put32(central, big ? 0xFFFFFFFFu : static_cast<std::uint32_t>(m.data.size()));
    put16(central, static_cast<std::uint32_t>(m.name.size()));
    put16(central, big ? 28 : 0);  // extra length
    put16(central, 0);             // comment length
    put16(central, 0);             // disk number start
    put16(central, 0);             // internal attributes
    put32(central, 0);             // external attributes
    put32(central, big ? 0xFFFFFFFFu : static_cast<std::uint32_t>(offset));
    central += m.name;
    if (big) {
      put16(central, 0x0001);
      put16(central, 24);
      put64(central, m.data.size());
      put64(central, body.size());
      put64(central, offset);
    }
  }
  const std::uint64_t cd_offset = out.size();
  out += central;
  const bool big = z64 == zip64::full;
  if (big) {
    const std::uint64_t record = out.size();
    put32(out, 0x06064b50);
    put64(out, 44);  // size of the rest of the record
    put16(out, 45);
    put16(out, 45);
    put32(out, 0);
    put32(out, 0);
    put64(out, members.size());
    put64(out, members.size());
    put64(out, central.size());
    put64(out, cd_offset);
    put32(out, 0x07064b50);
    put32(out, 0);
    put64(out, record);
    put32(out, 1);
  }
  put32(out, 0x06054b50);
  put16(out, 0);
  put16(out, 0);
  put16(out, big ? 0xFFFF : static_cast<std::uint32_t>(members.size()));
  put16(out, big ? 0xFFFF : static_cast<std::uint32_t>(members.size()));
  put32(out, big ? 0xFFFFFFFFu : static_cast<std::uint32_t>(central.size()));
  put32(out, big ? 0xFFFFFFFFu : static_cast<std::uint32_t>(cd_offset));
  put16(out, 0);
  return out;
}

/// A ZIP of stored (uncompressed) members, as numpy.savez writes: {name, bytes} pairs.
inline std::string zip_stored(const std::vector<std::pair<std::string, std::string>>& members) {
  std::vector<zip_member> m;
  for (const auto& [name, data] : members) m.push_back({name, data, false});
  return zip(m);
}

}  // namespace test
}  // namespace int4q

#endif  // INT4Q_TESTS_ONNX_NPY_FILES_HPP
