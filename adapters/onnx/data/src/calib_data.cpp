// Calibration/evaluation data: NumPy .npy/.npz (ZIP, stored or deflate, ZIP64), ONNX test-data
// folders, raw token files, random inputs, and the defaults language-model exports expect.
#include <int4q/onnx/calib_data.hpp>

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <utility>

#include <int4q/float16.hpp>
#include <int4q/onnx/tensor_types.hpp>

namespace int4q {
namespace onnx {

namespace fs = std::filesystem;
using shape_t = std::vector<std::int64_t>;
using kind = model_error::kind;

namespace {

[[noreturn]] void fail(kind k, const std::string& message) { throw model_error(k, message); }

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

std::string shape_string(const shape_t& s) {
  std::string r = "[";
  for (std::size_t k = 0; k < s.size(); ++k) r += (k ? ", " : "") + std::to_string(s[k]);
  return r + "]";
}

std::string join(const std::vector<std::string>& names, const std::string& empty = "none") {
  if (names.empty()) return empty;
  std::string r;
  for (std::size_t k = 0; k < names.size(); ++k) r += (k ? ", " : "") + names[k];
  return r;
}

std::uint64_t numel(const shape_t& s) {
  std::uint64_t n = 1;
  for (const auto d : s) n *= static_cast<std::uint64_t>(d);
  return n;
}

std::uint16_t le16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] | p[1] << 8); }
std::uint32_t le32(const std::uint8_t* p) {
  return static_cast<std::uint32_t>(p[0]) | static_cast<std::uint32_t>(p[1]) << 8 |
         static_cast<std::uint32_t>(p[2]) << 16 | static_cast<std::uint32_t>(p[3]) << 24;
}
std::uint64_t le64(const std::uint8_t* p) {
  return static_cast<std::uint64_t>(le32(p)) | static_cast<std::uint64_t>(le32(p + 4)) << 32;
}

// ---- Files -------------------------------------------------------------------------------------

std::uint64_t size_of_file(const fs::path& p) {
  std::error_code ec;
  const fs::file_status st = fs::status(p, ec);
  if (!fs::exists(st)) fail(kind::io, quoted(p) + ": no such file");
  if (!fs::is_regular_file(st)) {
    fail(kind::io, quoted(p) +
                       " is not a regular file (a pipe, device or socket): int4q reads data by "
                       "offset, more than once; save it to a file first");
  }
  const auto n = fs::file_size(p, ec);
  if (ec) fail(kind::io, quoted(p) + ": cannot read it (" + ec.message() + ")");
  return n;
}

/// `count` bytes of `p` from `offset`. Throws model_error(io) when they cannot be read.
void read_at(const fs::path& p, std::uint64_t offset, void* out, std::size_t count) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail(kind::io, quoted(p) + ": cannot open it for reading");
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(static_cast<char*>(out), static_cast<std::streamsize>(count));
  if (static_cast<std::size_t>(in.gcount()) != count) {
    fail(kind::io, quoted(p) + ": cannot read " + std::to_string(count) + " bytes at offset " +
                       std::to_string(offset) + " (file truncated or changed while in use?)");
  }
}

std::vector<std::uint8_t> read_bytes_at(const fs::path& p, std::uint64_t offset,
                                        std::size_t count) {
  std::vector<std::uint8_t> b(count);
  if (count) read_at(p, offset, b.data(), count);
  return b;
}

// ---- NumPy
// ---------------------------------------------------------------------------------------

struct dtype_row {
  npy_dtype type;
  const char* descr;
  std::size_t size;
};
constexpr dtype_row dtype_table[] = {
    {npy_dtype::f2, "<f2", 2}, {npy_dtype::f4, "<f4", 4}, {npy_dtype::f8, "<f8", 8},
    {npy_dtype::i1, "|i1", 1}, {npy_dtype::i2, "<i2", 2}, {npy_dtype::i4, "<i4", 4},
    {npy_dtype::i8, "<i8", 8}, {npy_dtype::u1, "|u1", 1}, {npy_dtype::u2, "<u2", 2},
    {npy_dtype::u4, "<u4", 4}, {npy_dtype::u8, "<u8", 8}, {npy_dtype::b1, "|b1", 1},
};

value_type value_type_of(npy_dtype t) {
  switch (t) {
    case npy_dtype::f2:
    case npy_dtype::f4:
    case npy_dtype::f8: return value_type::float32;
    case npy_dtype::b1: return value_type::boolean;
    default: return value_type::int64;
  }
}

const char* type_word(value_type t) {
  return t == value_type::float32 ? "float" : t == value_type::int64 ? "integer" : "bool";
}

constexpr unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
constexpr std::size_t npy_preamble_v1 = 10;  // magic, major, minor, uint16 header length
constexpr std::size_t npy_preamble_v2 = 12;  // ... uint32 header length (versions 2.0, 3.0)

bool has_npy_magic(const std::uint8_t* b, std::size_t n) {
  return n >= sizeof(npy_magic) && std::memcmp(b, npy_magic, sizeof(npy_magic)) == 0;
}

/// Bytes from the start of a .npy up to its data, from its first 12 bytes (fewer for a tiny
/// file); 0 when they are not a .npy preamble.
std::size_t npy_header_end(const std::uint8_t* b, std::size_t n) {
  if (!has_npy_magic(b, n) || n < npy_preamble_v1) return 0;
  if (b[6] == 1) return npy_preamble_v1 + le16(b + 8);
  if ((b[6] == 2 || b[6] == 3) && n >= npy_preamble_v2) return npy_preamble_v2 + le32(b + 8);
  return 0;
}

/// The value after `'key':` in NumPy's header dict (a Python literal), trimmed; "" if absent.
std::string dict_value(const std::string& text, const std::string& key, const std::string& what) {
  std::size_t at = std::string::npos;
  for (const char q : {'\'', '"'}) {
    const std::size_t p = text.find(std::string(1, q) + key + q);
    if (p != std::string::npos) at = p + key.size() + 2;
  }
  if (at == std::string::npos) return "";
  while (at < text.size() && std::isspace(static_cast<unsigned char>(text[at]))) ++at;
  if (at >= text.size() || text[at] != ':')
    fail(kind::invalid, what + ": bad .npy header (no ':' after '" + key + "'): " + text);
  ++at;
  while (at < text.size() && std::isspace(static_cast<unsigned char>(text[at]))) ++at;
  std::size_t end = at;
  if (end < text.size() && (text[end] == '\'' || text[end] == '"')) {
    end = text.find(text[at], at + 1);
    if (end == std::string::npos) fail(kind::invalid, what + ": bad .npy header: " + text);
    return text.substr(at, end + 1 - at);
  }
  if (end < text.size() && (text[end] == '(' || text[end] == '[')) {
    end = text.find(text[at] == '(' ? ')' : ']', at);
    if (end == std::string::npos) fail(kind::invalid, what + ": bad .npy header: " + text);
    return text.substr(at, end + 1 - at);
  }
  while (end < text.size() && text[end] != ',' && text[end] != '}') ++end;
  std::string v = text.substr(at, end - at);
  while (!v.empty() && std::isspace(static_cast<unsigned char>(v.back()))) v.pop_back();
  return v;
}

/// Converts `count` elements of `dtype` at `src` into `out` from element `at` (out's type set).
void convert_npy(const std::uint8_t* src, std::size_t count, npy_dtype dtype, value& out,
                 std::size_t at, const std::string& what) {
  auto each = [&](auto sample, auto put) {
    using S = decltype(sample);
    for (std::size_t e = 0; e < count; ++e) {
      S s;
      std::memcpy(&s, src + e * sizeof(S), sizeof(S));
      put(at + e, s);
    }
  };
  auto to_f = [&](std::size_t e, auto s) { out.f[e] = static_cast<float>(s); };
  auto to_i = [&](std::size_t e, auto s) { out.i[e] = static_cast<std::int64_t>(s); };
  switch (dtype) {
    case npy_dtype::f2:
      each(std::uint16_t{},
           [&](std::size_t e, std::uint16_t h) { out.f[e] = half_bits_to_float(h); });
      break;
    case npy_dtype::f4: each(float{}, to_f); break;
    case npy_dtype::f8: each(double{}, to_f); break;
    case npy_dtype::i1: each(std::int8_t{}, to_i); break;
    case npy_dtype::i2: each(std::int16_t{}, to_i); break;
    case npy_dtype::i4: each(std::int32_t{}, to_i); break;
    case npy_dtype::i8: each(std::int64_t{}, to_i); break;
    case npy_dtype::u1: each(std::uint8_t{}, to_i); break;
    case npy_dtype::u2: each(std::uint16_t{}, to_i); break;
    case npy_dtype::u4: each(std::uint32_t{}, to_i); break;
    case npy_dtype::u8:
      each(std::uint64_t{}, [&](std::size_t e, std::uint64_t u) {
        if (u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
          fail(kind::invalid, what + ": uint64 value " + std::to_string(u) +
                                  " does not fit int64, which the executor computes with");
        out.i[e] = static_cast<std::int64_t>(u);
      });
      break;
    case npy_dtype::b1:
      each(std::uint8_t{}, [&](std::size_t e, std::uint8_t b) { out.i[e] = b != 0; });
      break;
  }
}

value empty_value(value_type t, shape_t shape) {
  value v;
  v.type = t;
  v.shape = std::move(shape);
  if (t == value_type::float32)
    v.f.resize(v.size());
  else
    v.i.resize(v.size());
  return v;
}

/// One array of a .npy/.npz: its header and where its data lies (a file range, or memory).
struct array_source {
  std::string what;  ///< "'x.npz' array 'a'" for messages
  npy_header header;
  fs::path file;                                         ///< data in this file ...
  std::uint64_t file_offset = 0;                         ///< ... from here
  std::shared_ptr<const std::vector<std::uint8_t>> mem;  ///< or in memory (header included)

  /// Rows [first, first + count) along axis 0 (the whole array for a scalar).
  value rows(std::int64_t first, std::int64_t count) const {
    shape_t shape = header.shape;
    std::uint64_t row_elems = 1;
    if (!shape.empty()) {
      row_elems = numel(shape) / std::max<std::int64_t>(shape[0], 1);
      if (shape[0] == 0) row_elems = numel(shape_t(shape.begin() + 1, shape.end()));
      shape[0] = count;
    }
    value v = empty_value(value_type_of(header.dtype), shape);
    const std::size_t item = npy_item_size(header.dtype);
    const std::uint64_t offset = static_cast<std::uint64_t>(first) * row_elems * item;
    const std::size_t n = v.size();
    if (mem) {
      convert_npy(mem->data() + header.data_offset + offset, n, header.dtype, v, 0, what);
    } else {
      // In pieces of up to 16 MiB, so that a large read holds no second full copy.
      constexpr std::size_t piece = std::size_t(16) << 20;
      std::vector<std::uint8_t> buf;
      for (std::size_t e = 0; e < n;) {
        const std::size_t k = std::min(n - e, std::max<std::size_t>(piece / item, 1));
        buf.resize(k * item);
        read_at(file, file_offset + header.data_offset + offset + e * item, buf.data(), buf.size());
        convert_npy(buf.data(), k, header.dtype, v, e, what);
        e += k;
      }
    }
    return v;
  }
};

/// Reads and checks the header of a .npy that starts at `offset` of `file` (`available` bytes
/// from there belong to it).
npy_header read_npy_header_at(const fs::path& file, std::uint64_t offset, std::uint64_t available,
                              const std::string& what) {
  const auto pre = read_bytes_at(
      file, offset, static_cast<std::size_t>(std::min<std::uint64_t>(available, npy_preamble_v2)));
  const std::size_t end = npy_header_end(pre.data(), pre.size());
  if (end == 0 || end > available) {
    // parse_npy_header names what is wrong.
    (void)parse_npy_header(pre.data(), pre.size(), what);
    fail(kind::invalid, what + ": truncated .npy header");
  }
  const auto head = read_bytes_at(file, offset, end);
  npy_header h = parse_npy_header(head.data(), head.size(), what);
  if (h.data_offset + h.data_bytes() > available) {
    fail(kind::invalid, what + ": truncated: shape " + shape_string(h.shape) + " " +
                            to_string(h.dtype) + " needs " + std::to_string(h.data_bytes()) +
                            " bytes of data, the file holds " +
                            std::to_string(available - h.data_offset));
  }
  return h;
}

// ---- ZIP (PKWARE APPNOTE 6.3) -------------------------------------------------------------------

constexpr std::uint32_t zip_local_sig = 0x04034b50;
constexpr std::uint32_t zip_central_sig = 0x02014b50;
constexpr std::uint32_t zip_eocd_sig = 0x06054b50;
constexpr std::uint32_t zip64_eocd_sig = 0x06064b50;
constexpr std::uint32_t zip64_locator_sig = 0x07064b50;
constexpr std::size_t zip_local_size = 30;    // fixed part of a local file header
constexpr std::size_t zip_central_size = 46;  // fixed part of a central directory header
constexpr std::size_t zip_eocd_size = 22;     // end of central directory record, no comment
constexpr std::size_t zip64_locator_size = 20;
constexpr std::size_t zip64_eocd_size = 56;  // fixed part of the ZIP64 end record
constexpr std::uint16_t zip_zip64_extra_id = 0x0001;
constexpr std::uint16_t zip_stored = 0;
constexpr std::uint16_t zip_deflated = 8;

struct zip_entry {
  std::string name;
  std::uint16_t flags = 0, method = 0;
  std::uint32_t crc = 0;
  std::uint64_t compressed = 0, uncompressed = 0, local_offset = 0;
  std::uint64_t data_offset = 0;  ///< from the local header: where the (compressed) data starts
};

[[noreturn]] void bad_zip(const std::string& what, const std::string& why) {
  fail(kind::invalid, what + ": not a valid .npz/ZIP file: " + why);
}

/// Where a ZIP's central directory is, and its entry count.
struct zip_directory_place {
  std::uint64_t entries = 0, size = 0, offset = 0;
};

/// Reads the end of central directory record of `file` (`size` bytes): the last signature whose
/// comment length reaches the end of the file; its ZIP64 record instead when a locator precedes
/// it.
zip_directory_place find_zip_directory(const fs::path& file, std::uint64_t size,
                                       const std::string& what) {
  if (size < zip_eocd_size) bad_zip(what, "too short for a ZIP end record");
  const std::size_t tail_len =
      static_cast<std::size_t>(std::min<std::uint64_t>(size, zip_eocd_size + 0xFFFF));
  const std::uint64_t tail_at = size - tail_len;
  const auto tail = read_bytes_at(file, tail_at, tail_len);
  std::optional<std::size_t> eocd;
  for (std::size_t p = tail_len - zip_eocd_size + 1; p-- > 0;) {
    if (le32(&tail[p]) == zip_eocd_sig && p + zip_eocd_size + le16(&tail[p + 20]) == tail_len) {
      eocd = p;
      break;
    }
  }
  if (!eocd) bad_zip(what, "no end of central directory record");
  const std::uint8_t* e = &tail[*eocd];
  if (le16(e + 4) != 0 || le16(e + 6) != 0) fail(kind::unsupported, what + ": a multi-disk ZIP");
  zip_directory_place d{le16(e + 10), le32(e + 12), le32(e + 16)};
  const std::uint64_t eocd_at = tail_at + *eocd;
  if (eocd_at >= zip64_locator_size) {
    std::uint8_t loc[zip64_locator_size];
    read_at(file, eocd_at - zip64_locator_size, loc, sizeof(loc));
    if (le32(loc) == zip64_locator_sig) {
      const std::uint64_t at = le64(loc + 8);
      if (at > size || size - at < zip64_eocd_size)
        bad_zip(what, "ZIP64 end record outside the file");
      std::uint8_t r[zip64_eocd_size];
      read_at(file, at, r, sizeof(r));
      if (le32(r) != zip64_eocd_sig) bad_zip(what, "no ZIP64 end record where its locator points");
      d.entries = le64(r + 32);
      d.size = le64(r + 40);
      d.offset = le64(r + 48);
    }
  }
  if (d.offset > size || d.size > size - d.offset)
    bad_zip(what, "central directory outside the file");
  return d;
}

/// Central directory entry `k`, at `p` in `cd`; advances `p` past it.
zip_entry read_central_entry(const std::vector<std::uint8_t>& cd, std::size_t& p, std::uint64_t k,
                             const std::string& what) {
  if (p + zip_central_size > cd.size() || le32(&cd[p]) != zip_central_sig)
    bad_zip(what, "central directory entry " + std::to_string(k) + " is damaged");
  const std::uint8_t* c = &cd[p];
  zip_entry z;
  z.flags = le16(c + 8);
  z.method = le16(c + 10);
  z.crc = le32(c + 16);
  z.compressed = le32(c + 20);
  z.uncompressed = le32(c + 24);
  const std::size_t name_len = le16(c + 28), extra_len = le16(c + 30), comment_len = le16(c + 32);
  z.local_offset = le32(c + 42);
  if (p + zip_central_size + name_len + extra_len + comment_len > cd.size())
    bad_zip(what, "central directory entry " + std::to_string(k) + " is truncated");
  z.name.assign(reinterpret_cast<const char*>(c + zip_central_size), name_len);
  // ZIP64 extended information: the 8-byte values of the fields that hold 0xFFFFFFFF, in order.
  const std::uint8_t* x = c + zip_central_size + name_len;
  for (std::size_t q = 0; q + 4 <= extra_len;) {
    const std::uint16_t id = le16(x + q), len = le16(x + q + 2);
    if (q + 4 + len > extra_len) bad_zip(what, "entry '" + z.name + "' has a damaged extra field");
    if (id == zip_zip64_extra_id) {
      std::size_t r = q + 4;
      for (std::uint64_t* field : {&z.uncompressed, &z.compressed, &z.local_offset}) {
        if (*field != 0xFFFFFFFFu) continue;
        if (r + 8 > q + 4 + len) bad_zip(what, "entry '" + z.name + "' has a short ZIP64 field");
        *field = le64(x + r);
        r += 8;
      }
    }
    q += 4 + len;
  }
  p += zip_central_size + name_len + extra_len + comment_len;
  return z;
}

/// Checks that entry `z` of `file` (`size` bytes) is plain, stored or deflated, and inside the
/// file, and sets its data_offset from its local header.
void locate_zip_entry(const fs::path& file, std::uint64_t size, const std::string& what,
                      zip_entry& z) {
  if (z.flags & 1u)
    fail(kind::unsupported, what + ": entry '" + z.name + "' is encrypted; int4q reads plain .npz");
  if (z.method != zip_stored && z.method != zip_deflated) {
    fail(kind::unsupported, what + ": entry '" + z.name + "' uses ZIP compression method " +
                                std::to_string(z.method) +
                                "; int4q reads stored and deflated entries (numpy.savez, "
                                "numpy.savez_compressed)");
  }
  if (z.local_offset > size || size - z.local_offset < zip_local_size)
    bad_zip(what, "entry '" + z.name + "' lies outside the file");
  std::uint8_t l[zip_local_size];
  read_at(file, z.local_offset, l, sizeof(l));
  if (le32(l) != zip_local_sig) bad_zip(what, "no local header for entry '" + z.name + "'");
  z.data_offset = z.local_offset + zip_local_size + le16(l + 26) + le16(l + 28);
  if (z.data_offset > size || z.compressed > size - z.data_offset)
    bad_zip(what, "entry '" + z.name + "' runs past the end of the file");
  if (z.method == zip_stored && z.compressed != z.uncompressed)
    bad_zip(what, "stored entry '" + z.name + "' has different compressed and uncompressed sizes");
}

/// The entries of ZIP file `file`, from its central directory, each checked and located.
std::vector<zip_entry> read_zip_directory(const fs::path& file) {
  const std::string what = quoted(file);
  const std::uint64_t size = size_of_file(file);
  const zip_directory_place d = find_zip_directory(file, size, what);
  const auto cd = read_bytes_at(file, d.offset, static_cast<std::size_t>(d.size));
  std::vector<zip_entry> out;
  std::size_t p = 0;
  for (std::uint64_t k = 0; k < d.entries; ++k) {
    zip_entry z = read_central_entry(cd, p, k, what);
    locate_zip_entry(file, size, what, z);
    out.push_back(std::move(z));
  }
  return out;
}

/// CRC-32 of `n` bytes, in pieces (zlib's crc32 takes a uInt length).
std::uint32_t crc_update(std::uint32_t crc, const std::uint8_t* b, std::size_t n) {
  uLong c = crc;
  while (n > 0) {
    const auto k = static_cast<uInt>(std::min<std::size_t>(n, 1u << 30));
    c = crc32(c, b, k);
    b += k;
    n -= k;
  }
  return static_cast<std::uint32_t>(c);
}

/// The uncompressed bytes of a deflated entry (raw deflate, RFC 1951), CRC checked.
std::shared_ptr<const std::vector<std::uint8_t>> inflate_entry(const fs::path& file,
                                                               const zip_entry& z) {
  const std::string what = quoted(file) + " entry '" + z.name + "'";
  // Deflate expands at most 1032:1 (RFC 1951: a 258-byte match per 2 bits); a larger size claimed
  // by the directory is a damaged (or hostile) file, not a reason to allocate it.
  constexpr std::uint64_t max_deflate_ratio = 1032;
  if (z.uncompressed / max_deflate_ratio > z.compressed + 1) {
    fail(kind::invalid, what + ": claims " + std::to_string(z.uncompressed) + " bytes from " +
                            std::to_string(z.compressed) +
                            " compressed ones, more than deflate can give (the file is damaged)");
  }
  const auto in = read_bytes_at(file, z.data_offset, static_cast<std::size_t>(z.compressed));
  auto out = std::make_shared<std::vector<std::uint8_t>>(static_cast<std::size_t>(z.uncompressed));
  z_stream s{};
  if (inflateInit2(&s, -MAX_WBITS) != Z_OK)
    fail(kind::invalid, what + ": zlib cannot start inflating");
  std::size_t in_at = 0, out_at = 0;
  int rc = Z_OK;
  constexpr std::size_t piece = std::size_t(1) << 30;  // z_stream counts in uInt
  while (rc == Z_OK) {
    if (s.avail_in == 0 && in_at < in.size()) {
      s.next_in = const_cast<Bytef*>(in.data() + in_at);
      s.avail_in = static_cast<uInt>(std::min(piece, in.size() - in_at));
      in_at += s.avail_in;
    }
    if (s.avail_out == 0 && out_at < out->size()) {
      s.next_out = out->data() + out_at;
      s.avail_out = static_cast<uInt>(std::min(piece, out->size() - out_at));
      out_at += s.avail_out;
    }
    static std::uint8_t overflow;  // a zero-size output still needs a valid pointer
    if (out->empty()) {
      s.next_out = &overflow;
      s.avail_out = 0;
    }
    rc = inflate(&s, Z_NO_FLUSH);
    if (rc == Z_BUF_ERROR && s.avail_in == 0 && in_at == in.size()) break;
    if (rc == Z_BUF_ERROR && s.avail_out == 0 && out_at == out->size()) break;
    if (rc == Z_BUF_ERROR) rc = Z_OK;
  }
  const std::uint64_t produced = s.total_out;
  inflateEnd(&s);
  if (rc != Z_STREAM_END || produced != z.uncompressed) {
    fail(kind::invalid, what + ": the deflate stream is damaged (inflate gave " +
                            std::to_string(produced) + " of " + std::to_string(z.uncompressed) +
                            " bytes)");
  }
  if (crc_update(0, out->data(), out->size()) != z.crc)
    fail(kind::invalid, what + ": CRC-32 mismatch (the file is damaged)");
  return out;
}

/// Checks the CRC-32 of a stored entry, reading it in pieces.
void check_stored_crc(const fs::path& file, const zip_entry& z) {
  std::ifstream in(file, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(z.data_offset));
  std::vector<std::uint8_t> buf(std::size_t(1) << 20);
  std::uint32_t crc = 0;
  for (std::uint64_t left = z.uncompressed; left > 0;) {
    const auto k = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
    in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(k));
    if (static_cast<std::size_t>(in.gcount()) != k) fail(kind::io, quoted(file) + ": read failed");
    crc = crc_update(crc, buf.data(), k);
    left -= k;
  }
  if (crc != z.crc)
    fail(kind::invalid,
         quoted(file) + " entry '" + z.name + "': CRC-32 mismatch (the file is damaged)");
}

/// The arrays of a .npz as sources, by entry name without ".npy".
std::vector<std::pair<std::string, array_source>> open_npz(const fs::path& file) {
  std::vector<std::pair<std::string, array_source>> out;
  for (const zip_entry& z : read_zip_directory(file)) {
    if (!z.name.empty() && z.name.back() == '/') continue;  // a folder
    const std::string suffix = ".npy";
    if (z.name.size() < suffix.size() ||
        z.name.compare(z.name.size() - suffix.size(), suffix.size(), suffix) != 0) {
      fail(kind::invalid, quoted(file) + ": entry '" + z.name +
                              "' is not a .npy array; a .npz holds <input name>.npy files");
    }
    array_source a;
    const std::string name = z.name.substr(0, z.name.size() - suffix.size());
    a.what = quoted(file) + " array '" + name + "'";
    if (z.method == zip_deflated) {
      a.mem = inflate_entry(file, z);
      const std::size_t end = npy_header_end(a.mem->data(), a.mem->size());
      a.header = parse_npy_header(a.mem->data(), std::min(end ? end : a.mem->size(), a.mem->size()),
                                  a.what);
      if (a.header.data_offset + a.header.data_bytes() > a.mem->size())
        fail(kind::invalid, a.what + ": truncated array data");
    } else {
      check_stored_crc(file, z);
      a.file = file;
      a.file_offset = z.data_offset;
      a.header = read_npy_header_at(file, z.data_offset, z.uncompressed, a.what);
    }
    out.emplace_back(name, std::move(a));
  }
  return out;
}

// ---- The model's inputs
// --------------------------------------------------------------------------

bool value_type_of_onnx(int t, value_type& out) {
  using T = ::onnx::TensorProto;
  switch (t) {
    case T::FLOAT:
    case T::FLOAT16:
    case T::BFLOAT16:
    case T::DOUBLE: out = value_type::float32; return true;
    case T::INT8:
    case T::INT16:
    case T::INT32:
    case T::INT64:
    case T::UINT8:
    case T::UINT16:
    case T::UINT32:
    case T::UINT64: out = value_type::int64; return true;
    case T::BOOL: out = value_type::boolean; return true;
    default: return false;
  }
}

/// A graph input as the data sees it.
struct input_info {
  std::string name;
  int elem_type = 0;
  bool computable = false;  ///< the executor holds its type
  value_type type = value_type::float32;
  bool has_shape = false;
  shape_t dims;                     ///< -1: symbolic or unknown
  std::vector<std::string> params;  ///< dim_param, "" if none

  std::string describe() const {
    std::string s = "'" + name + "' " + onnx_type_word(elem_type);
    if (!has_shape) return s + " (no shape in the graph)";
    s += " [";
    for (std::size_t k = 0; k < dims.size(); ++k) {
      s += k ? ", " : "";
      s += dims[k] >= 0 ? std::to_string(dims[k]) : params[k].empty() ? "?" : params[k];
    }
    return s + "]";
  }
  /// Rows of axis 0 per sample: the fixed first dimension, else 1.
  std::int64_t rows_per_sample() const {
    return has_shape && !dims.empty() && dims[0] > 0 ? dims[0] : 1;
  }
  bool fixed_first_dim() const { return has_shape && !dims.empty() && dims[0] >= 0; }
};

std::vector<input_info> graph_inputs(const model& m) {
  std::set<std::string> inits;
  for (const auto& t : m.proto.graph().initializer()) inits.insert(t.name());
  std::vector<input_info> out;
  for (const auto& in : m.proto.graph().input()) {
    if (inits.count(in.name())) continue;
    input_info i;
    i.name = in.name();
    const auto& tt = in.type().tensor_type();
    i.elem_type = tt.elem_type();
    i.computable = value_type_of_onnx(i.elem_type, i.type);
    i.has_shape = tt.has_shape();
    for (const auto& d : tt.shape().dim()) {
      i.dims.push_back(d.has_dim_value() ? d.dim_value() : -1);
      i.params.push_back(d.has_dim_param() ? d.dim_param() : "");
    }
    out.push_back(std::move(i));
  }
  return out;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

/// Inputs int4q fills when the data leaves them out (language-model exports).
enum class default_kind {
  none,
  attention_mask,
  position_ids,
  token_type_ids,
  cache_position,
  past,
  use_cache_branch,
  seqlens_k,
  total_sequence_length,
  logits_to_keep,
};

default_kind default_kind_of(const std::string& name) {
  const std::string n = lower(name);
  if (n == "attention_mask") return default_kind::attention_mask;
  if (n == "position_ids") return default_kind::position_ids;
  if (n == "token_type_ids") return default_kind::token_type_ids;
  if (n == "cache_position") return default_kind::cache_position;
  if (n == "use_cache_branch" || n == "use_cache") return default_kind::use_cache_branch;
  if (n == "seqlens_k") return default_kind::seqlens_k;
  if (n == "total_sequence_length") return default_kind::total_sequence_length;
  if (n == "num_logits_to_keep" || n == "logits_to_keep") return default_kind::logits_to_keep;
  if (n.rfind("past", 0) == 0 || n.find("cache") != std::string::npos) return default_kind::past;
  return default_kind::none;
}

/// The size of the vocabulary indexed by `input`: rows of the initializer table of a Gather
/// whose indices are the input (directly or through one Cast); 0 if none.
std::int64_t vocab_of(const model& m, const std::string& input) {
  const auto& g = m.proto.graph();
  std::set<std::string> names = {input};
  for (const auto& n : g.node()) {
    if (n.op_type() == "Cast" && n.input_size() == 1 && names.count(n.input(0)) && n.output_size())
      names.insert(n.output(0));
  }
  for (const auto& n : g.node()) {
    if (n.op_type() != "Gather" || n.input_size() < 2 || !names.count(n.input(1))) continue;
    bool axis0 = true;
    for (const auto& a : n.attribute()) axis0 &= !(a.name() == "axis" && a.i() != 0);
    if (!axis0) continue;
    for (const auto& t : g.initializer())
      if (t.name() == n.input(0) && t.dims_size() >= 1) return t.dims(0);
  }
  return 0;
}

/// splitmix64: a well-mixed 64-bit hash, to give every (sample, input) its own random stream.
std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// Concatenates values of the same type and trailing dimensions along axis 0.
value concat_rows(const std::vector<value>& parts) {
  value r = parts.at(0);
  for (std::size_t k = 1; k < parts.size(); ++k) {
    const value& p = parts[k];
    r.shape[0] += p.shape[0];
    r.f.insert(r.f.end(), p.f.begin(), p.f.end());
    r.i.insert(r.i.end(), p.i.begin(), p.i.end());
  }
  return r;
}

}  // namespace

// ---- Public NumPy functions
// ----------------------------------------------------------------------

const char* to_string(npy_dtype t) noexcept {
  for (const auto& r : dtype_table)
    if (r.type == t) return r.descr;
  return "?";
}

std::size_t npy_item_size(npy_dtype t) noexcept {
  for (const auto& r : dtype_table)
    if (r.type == t) return r.size;
  return 1;
}

std::uint64_t npy_header::data_bytes() const noexcept {
  return numel(shape) * npy_item_size(dtype);
}

namespace {

/// The dtype of a .npy header's descr value (quoted): one of dtype_table, one-byte types with
/// any byte-order mark.
npy_dtype parse_npy_descr(const std::string& descr, const std::string& what) {
  if (descr.size() < 2 || (descr[0] != '\'' && descr[0] != '"')) {
    fail(kind::unsupported, what + ": .npy dtype " + descr +
                                " is a structured type; int4q reads plain arrays of numbers");
  }
  const std::string d = descr.substr(1, descr.size() - 2);
  npy_dtype t = npy_dtype::f4;
  bool found = false;
  for (const auto& r : dtype_table) {
    // One-byte types may carry any byte-order mark.
    if (d == r.descr || (r.size == 1 && d.size() == 3 && d.substr(1) == std::string(r.descr + 1) &&
                         std::strchr("<>|=", d[0]))) {
      t = r.type;
      found = true;
    }
  }
  if (!found) {
    if (!d.empty() && d[0] == '>')
      fail(kind::unsupported,
           what + ": big-endian dtype '" + d +
               "'; save it little-endian (numpy: a.astype(a.dtype.newbyteorder('<')))");
    fail(kind::unsupported,
         what + ": dtype '" + d +
             "' is not one int4q reads (<f2 <f4 <f8 |i1 <i2 <i4 <i8 |u1 <u2 <u4 <u8 |b1)");
  }
  return t;
}

/// The dims of a .npy header's shape value, "(a, b, )"; `text` is the whole header, for
/// messages.
shape_t parse_npy_shape(const std::string& shape, const std::string& text,
                        const std::string& what) {
  if (shape.front() != '(' || shape.back() != ')')
    fail(kind::invalid, what + ": bad shape in .npy header: " + text);
  const std::string inner = shape.substr(1, shape.size() - 2);
  shape_t dims;
  std::size_t p = 0;
  while (p < inner.size()) {
    while (p < inner.size() &&
           (std::isspace(static_cast<unsigned char>(inner[p])) || inner[p] == ','))
      ++p;
    if (p >= inner.size()) break;
    std::size_t q = p;
    while (q < inner.size() && std::isdigit(static_cast<unsigned char>(inner[q]))) ++q;
    if (q == p) fail(kind::invalid, what + ": bad shape in .npy header: " + text);
    std::uint64_t v = 0;
    for (std::size_t k = p; k < q; ++k) {
      if (v > (std::uint64_t(1) << 50)) fail(kind::invalid, what + ": shape too large: " + text);
      v = v * 10 + static_cast<std::uint64_t>(inner[k] - '0');
    }
    dims.push_back(static_cast<std::int64_t>(v));
    p = q;
  }
  return dims;
}

}  // namespace

npy_header parse_npy_header(const std::uint8_t* bytes, std::size_t size, const std::string& what) {
  if (!has_npy_magic(bytes, size))
    fail(kind::invalid, what + ": not a .npy file (no \\x93NUMPY magic at its start)");
  if (size < npy_preamble_v1) fail(kind::invalid, what + ": truncated .npy header");
  const int major = bytes[6];
  if (major < 1 || major > 3) {
    fail(kind::unsupported, what + ": .npy format version " + std::to_string(major) + "." +
                                std::to_string(bytes[7]) + "; int4q reads 1.0, 2.0 and 3.0");
  }
  const std::size_t start = major == 1 ? npy_preamble_v1 : npy_preamble_v2;
  if (size < start) fail(kind::invalid, what + ": truncated .npy header");
  const std::size_t len = major == 1 ? le16(bytes + 8) : le32(bytes + 8);
  if (size - start < len) fail(kind::invalid, what + ": truncated .npy header");
  const std::string text(reinterpret_cast<const char*>(bytes + start), len);
  const std::string descr = dict_value(text, "descr", what);
  const std::string fortran = dict_value(text, "fortran_order", what);
  const std::string shape = dict_value(text, "shape", what);
  if (descr.empty() || fortran.empty() || shape.empty())
    fail(kind::invalid, what + ": .npy header lacks descr, fortran_order or shape: " + text);
  npy_header h;
  h.dtype = parse_npy_descr(descr, what);
  if (fortran == "True") {
    fail(kind::unsupported, what +
                                ": the array is stored in Fortran order; save it in C order "
                                "(numpy: np.ascontiguousarray(a))");
  }
  if (fortran != "False") fail(kind::invalid, what + ": bad fortran_order in .npy header: " + text);
  h.shape = parse_npy_shape(shape, text, what);
  // Elements and bytes must fit 63 bits (data_bytes() and every offset computed from it).
  const bool empty = std::find(h.shape.begin(), h.shape.end(), 0) != h.shape.end();
  std::uint64_t total = npy_item_size(h.dtype);
  for (std::size_t k = 0; k < h.shape.size() && !empty; ++k) {
    const auto dim = static_cast<std::uint64_t>(h.shape[k]);
    if (total > (std::uint64_t(1) << 62) / dim) {
      fail(kind::invalid, what + ": shape " + shape_string(h.shape) +
                              " holds more bytes than a file can (over 2^62): " + text);
    }
    total *= dim;
  }
  h.data_offset = start + len;
  return h;
}

value npy_to_value(const std::string& bytes, const std::string& what) {
  const auto* b = reinterpret_cast<const std::uint8_t*>(bytes.data());
  const npy_header h = parse_npy_header(b, bytes.size(), what);
  if (bytes.size() - h.data_offset < h.data_bytes())
    fail(kind::invalid, what + ": truncated array data");
  value v = empty_value(value_type_of(h.dtype), h.shape);
  convert_npy(b + h.data_offset, v.size(), h.dtype, v, 0, what);
  return v;
}

value read_npy(const fs::path& path) {
  array_source a;
  a.what = quoted(path);
  a.file = path;
  a.header = read_npy_header_at(path, 0, size_of_file(path), a.what);
  return a.rows(0, a.header.shape.empty() ? 1 : a.header.shape[0]);
}

std::string npy_bytes(const value& v) {
  const char* descr = v.type == value_type::float32 ? "<f4"
                      : v.type == value_type::int64 ? "<i8"
                                                    : "|b1";
  std::string shape = "(";
  for (std::size_t k = 0; k < v.shape.size(); ++k)
    shape += (k ? ", " : "") + std::to_string(v.shape[k]);
  shape += v.shape.size() == 1 ? ",)" : ")";
  std::string dict =
      std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  // Spaces, then '\n', so that the preamble and header fill a multiple of 64 bytes.
  const std::size_t total = (npy_preamble_v1 + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - npy_preamble_v1 - dict.size() - 1, ' ');
  dict += '\n';
  std::string out(reinterpret_cast<const char*>(npy_magic), sizeof(npy_magic));
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(dict.size() & 0xFF);
  out += static_cast<char>(dict.size() >> 8);
  out += dict;
  const std::size_t n = v.size();
  if (v.type == value_type::float32) {
    out.append(reinterpret_cast<const char*>(v.f.data()), n * sizeof(float));
  } else if (v.type == value_type::int64) {
    out.append(reinterpret_cast<const char*>(v.i.data()), n * sizeof(std::int64_t));
  } else {
    for (std::size_t e = 0; e < n; ++e) out += v.i[e] ? '\x01' : '\x00';
  }
  return out;
}

void write_npy(const fs::path& path, const value& v) {
  const std::string bytes = npy_bytes(v);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) fail(kind::io, quoted(path) + ": cannot write it (directory missing or not writable?)");
}

std::map<std::string, value> read_npz(const fs::path& path) {
  std::map<std::string, value> out;
  for (const auto& [name, a] : open_npz(path))
    out[name] = a.rows(0, a.header.shape.empty() ? 1 : a.header.shape[0]);
  return out;
}

// ---- Token files -------------------------------------------------------------------------------

const char* to_string(token_dtype t) noexcept {
  switch (t) {
    case token_dtype::u8: return "u8";
    case token_dtype::u16: return "u16";
    case token_dtype::i32: return "i32";
    case token_dtype::i64: return "i64";
  }
  return "?";
}

token_dtype parse_token_dtype(const std::string& name) {
  const std::string n = lower(name);
  if (n == "u8" || n == "uint8") return token_dtype::u8;
  if (n == "u16" || n == "uint16") return token_dtype::u16;
  if (n == "i32" || n == "int32") return token_dtype::i32;
  if (n == "i64" || n == "int64") return token_dtype::i64;
  throw config_error("token dtype '" + name + "': use u8, u16, i32 or i64");
}

namespace {
std::size_t token_size(token_dtype t) {
  return t == token_dtype::u8 ? 1 : t == token_dtype::u16 ? 2 : t == token_dtype::i32 ? 4 : 8;
}
}  // namespace

token_file::token_file(const fs::path& path, token_dtype dtype) : path_(path), dtype_(dtype) {
  const std::uint64_t bytes = size_of_file(path);
  if (bytes % token_size(dtype) != 0) {
    fail(kind::invalid, quoted(path) + ": " + std::to_string(bytes) +
                            " bytes is not a whole "
                            "number of " +
                            to_string(dtype) + " tokens; check the token dtype");
  }
  size_ = bytes / token_size(dtype);
}

std::vector<std::int64_t> token_file::read(std::uint64_t first, std::size_t count) const {
  const std::size_t w = token_size(dtype_);
  if (first > size_ || count > size_ - first) {
    fail(kind::io, quoted(path_) + ": tokens " + std::to_string(first) + ".." +
                       std::to_string(first + count) + " are past its end (" +
                       std::to_string(size_) + " tokens)");
  }
  const auto b = read_bytes_at(path_, first * w, count * w);
  std::vector<std::int64_t> out(count);
  for (std::size_t e = 0; e < count; ++e) {
    const std::uint8_t* p = b.data() + e * w;
    switch (dtype_) {
      case token_dtype::u8: out[e] = p[0]; break;
      case token_dtype::u16: out[e] = le16(p); break;
      case token_dtype::i32: out[e] = static_cast<std::int32_t>(le32(p)); break;
      case token_dtype::i64: out[e] = static_cast<std::int64_t>(le64(p)); break;
    }
  }
  return out;
}

std::uint64_t token_file::window_start(std::size_t i, std::size_t samples,
                                       std::size_t length) const noexcept {
  if (samples <= 1 || size_ <= length) return 0;
  // i * (size - length) can pass 64 bits for large files: in 128 bits.
  __extension__ typedef unsigned __int128 u128;  // GCC and Clang; no -Wpedantic warning
  return static_cast<std::uint64_t>(static_cast<u128>(i) * (size_ - length) / (samples - 1));
}

// ---- calib_data --------------------------------------------------------------------------------

const char* to_string(data_format f) noexcept {
  switch (f) {
    case data_format::automatic: return "automatic";
    case data_format::npy: return "npy";
    case data_format::npz: return "npz";
    case data_format::onnx_pb: return "onnx-pb";
    case data_format::tokens: return "tokens";
    case data_format::random: return "random";
  }
  return "?";
}

struct calib_data::impl {
  data_format format = data_format::random;
  fs::path path;
  std::vector<input_info> inputs;
  std::size_t samples = 0;
  std::size_t max_batch = 1;
  /// The most samples the data gives, and in words (available_samples()).
  std::uint64_t available = std::numeric_limits<std::uint64_t>::max();
  std::string available_text = "random inputs: any number";
  std::vector<std::string> warnings;
  std::string description;
  std::vector<std::string> given;  ///< inputs the data (or the random generator) gives

  // npy/npz: one source per given input.
  std::vector<std::pair<std::string, array_source>> arrays;
  // ONNX test data: per sample, input name -> .pb file.
  std::vector<std::map<std::string, fs::path>> pb_sets;
  // Tokens.
  std::optional<token_file> tokens;
  std::string token_input;
  std::size_t seq_len = 0;
  std::int64_t vocab = 0;
  // Random inputs.
  std::uint64_t seed = 0;
  std::map<std::string, std::int64_t> vocabs;

  const input_info& input(const std::string& name) const {
    for (const auto& i : inputs)
      if (i.name == name) return i;
    throw shape_error("calib_data: no input '" + name + "'");
  }
  std::string input_list() const {
    std::vector<std::string> d;
    for (const auto& i : inputs) d.push_back(i.describe());
    return join(d);
  }

  std::map<std::string, value> given_batch(std::size_t first, std::size_t count) const;
  value random_value(const input_info& in, std::size_t sample) const;
  void fill_defaults(std::map<std::string, value>& feeds) const;
};

namespace {

/// Throws unless data of `type` and `shape` fits input `in` (`sample_axis`: axis 0 counts
/// samples, so only its divisibility by a fixed first dimension is checked).
void check_fits(const input_info& in, value_type type, const std::string& type_name,
                const shape_t& shape, bool sample_axis, const std::string& what) {
  if (!in.computable) {
    fail(kind::unsupported, what + ": input '" + in.name + "' of the model is " +
                                onnx_type_word(in.elem_type) +
                                ", which int4q's executor does not compute with");
  }
  if (type != in.type) {
    fail(kind::invalid, what + " is " + type_name + " but input " + in.describe() +
                            " of the model needs " + type_word(in.type) +
                            " data: convert it (numpy: a.astype(np." +
                            (in.type == value_type::float32 ? "float32"
                             : in.type == value_type::int64 ? "int64"
                                                            : "bool_") +
                            "))");
  }
  if (!in.has_shape) return;
  auto mismatch = [&](const std::string& why) {
    fail(kind::invalid, what + " has shape " + shape_string(shape) + " but input " + in.describe() +
                            " of the model " + why);
  };
  if (shape.size() != in.dims.size()) {
    mismatch(
        "has rank " + std::to_string(in.dims.size()) +
        (sample_axis
             ? " (the first axis of an array counts samples; the others must match the input's)"
             : ""));
  }
  for (std::size_t k = 0; k < shape.size(); ++k) {
    if (in.dims[k] < 0) continue;
    if (k == 0 && sample_axis) {
      if (in.dims[0] == 0 || shape[0] % in.dims[0] != 0)
        mismatch("has a fixed first dimension " + std::to_string(in.dims[0]) +
                 ": the first axis must hold a whole number of samples of that many rows");
      continue;
    }
    if (shape[k] != in.dims[k])
      mismatch("has dimension " + std::to_string(k) + " fixed at " + std::to_string(in.dims[k]));
  }
}

/// The inputs that no default fills.
std::vector<const input_info*> required_inputs(const std::vector<input_info>& inputs) {
  std::vector<const input_info*> r;
  for (const auto& i : inputs)
    if (default_kind_of(i.name) == default_kind::none) r.push_back(&i);
  return r;
}

std::string names_of(const std::vector<const input_info*>& v) {
  std::vector<std::string> n;
  for (const auto* i : v) n.push_back("'" + i->name + "'");
  return join(n);
}

data_format detect_format(const fs::path& p) {
  std::error_code ec;
  if (fs::is_directory(p, ec)) return data_format::onnx_pb;
  const std::uint64_t size = size_of_file(p);
  std::uint8_t head[6] = {};
  const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(size, sizeof(head)));
  read_at(p, 0, head, n);
  if (has_npy_magic(head, n)) return data_format::npy;
  if (n >= 4 && le32(head) == zip_local_sig) return data_format::npz;
  if (n >= 4 && le32(head) == zip_eocd_sig) return data_format::npz;  // an empty ZIP
  return data_format::tokens;
}

/// input_K.pb files of a folder, by K.
std::map<std::size_t, fs::path> pb_files(const fs::path& dir) {
  std::map<std::size_t, fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    const std::string pre = "input_", suf = ".pb";
    if (n.size() <= pre.size() + suf.size() || n.compare(0, pre.size(), pre) != 0 ||
        n.compare(n.size() - suf.size(), suf.size(), suf) != 0)
      continue;
    const std::string digits = n.substr(pre.size(), n.size() - pre.size() - suf.size());
    if (digits.empty() || digits.size() > 6 ||
        !std::all_of(digits.begin(), digits.end(),
                     [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
      continue;
    out[std::stoul(digits)] = e.path();
  }
  return out;
}

::onnx::TensorProto read_pb(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail(kind::io, quoted(p) + ": cannot open it for reading");
  ::onnx::TensorProto t;
  if (!t.ParseFromIstream(&in)) fail(kind::invalid, quoted(p) + ": not an ONNX TensorProto");
  return t;
}

}  // namespace

namespace {

/// The shape of a random input of graph dims `dims`: a symbolic (negative) first dimension 1,
/// every other symbolic one `seq_len`.
shape_t random_shape(const shape_t& dims, std::size_t seq_len) {
  shape_t shape = dims;
  for (std::size_t k = 0; k < shape.size(); ++k)
    if (shape[k] < 0) shape[k] = k == 0 ? 1 : static_cast<std::int64_t>(seq_len);
  return shape;
}

/// `bytes` as "12.3 GB" (10^9 bytes, one decimal), for messages.
std::string gigabytes(long double bytes) {
  char text[64];
  std::snprintf(text, sizeof text, "%.1Lf GB", bytes / 1e9L);
  return text;
}

/// Throws config_error when one random sample of `inputs` would take more than `limit` bytes
/// (4 per float element, 8 per integer or bool one: how value holds them), or its size
/// overflows 64 bits. Before anything is allocated.
void check_random_sample_size(const std::vector<const input_info*>& inputs, std::size_t seq_len,
                              std::uint64_t limit) {
  if (limit == 0) return;
  long double total = 0;
  for (const input_info* in : inputs) {
    if (!in->has_shape || !in->computable) continue;  // refused later, with its own message
    const shape_t shape = random_shape(in->dims, seq_len);
    long double bytes = in->type == value_type::float32 ? 4 : 8;
    for (const std::int64_t d : shape) bytes *= static_cast<long double>(d);
    total += bytes;
    if (total <= static_cast<long double>(limit)) continue;
    throw config_error("random inputs: input '" + in->name + "' " + shape_string(shape) +
                       " takes " + gigabytes(bytes) + " per sample, and one sample's inputs more " +
                       "than the " + gigabytes(static_cast<long double>(limit)) +
                       " allowed (the machine's memory): its symbolic dimensions after the "
                       "first are the sequence length, " +
                       std::to_string(seq_len) + "; use a shorter one, or give real data");
  }
}

}  // namespace

value calib_data::impl::random_value(const input_info& in, std::size_t sample) const {
  if (!in.has_shape) {
    fail(kind::invalid, "random inputs: input '" + in.name +
                            "' has no shape in the graph; give data for it (`path`)");
  }
  if (!in.computable) {
    fail(kind::unsupported, "random inputs: input '" + in.name + "' is " +
                                onnx_type_word(in.elem_type) +
                                ", which int4q's executor does not compute with");
  }
  value v = empty_value(in.type, random_shape(in.dims, seq_len));
  std::size_t index = 0;
  while (inputs[index].name != in.name) ++index;
  std::uint64_t state = mix64(seed ^ mix64(sample * 0x100000001B3ull + index));
  auto next = [&]() { return state = mix64(state); };
  const auto it = vocabs.find(in.name);
  const std::int64_t input_vocab = it == vocabs.end() ? 0 : it->second;
  const std::size_t n = v.size();
  for (std::size_t e = 0; e < n; ++e) {
    if (in.type == value_type::float32) {
      // Box-Muller on two 53-bit uniforms in (0, 1].
      const double u1 = (static_cast<double>(next() >> 11) + 1.0) / 9007199254740992.0;
      const double u2 = static_cast<double>(next() >> 11) / 9007199254740992.0;
      v.f[e] =
          static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
    } else if (in.type == value_type::boolean) {
      v.i[e] = static_cast<std::int64_t>(next() >> 63);
    } else {
      v.i[e] = input_vocab > 0
                   ? static_cast<std::int64_t>(next() % static_cast<std::uint64_t>(input_vocab))
                   : 0;
    }
  }
  return v;
}

std::map<std::string, value> calib_data::impl::given_batch(std::size_t first,
                                                           std::size_t count) const {
  std::map<std::string, value> feeds;
  switch (format) {
    case data_format::npy:
    case data_format::npz:
      for (const auto& [name, a] : arrays) {
        const std::int64_t r = input(name).rows_per_sample();
        feeds[name] =
            a.rows(static_cast<std::int64_t>(first) * r, static_cast<std::int64_t>(count) * r);
      }
      break;
    case data_format::onnx_pb: {
      std::map<std::string, std::vector<value>> parts;
      model holder;
      for (std::size_t s = first; s < first + count; ++s) {
        for (const auto& [name, file] : pb_sets[s]) {
          holder.base_dir = file.parent_path();
          parts[name].push_back(to_value(holder, read_pb(file)));
        }
      }
      for (auto& [name, p] : parts) feeds[name] = count == 1 ? std::move(p[0]) : concat_rows(p);
      break;
    }
    case data_format::tokens: {
      std::vector<std::int64_t> ids;
      ids.reserve(count * seq_len);
      for (std::size_t s = first; s < first + count; ++s) {
        const std::uint64_t start = tokens->window_start(s, samples, seq_len);
        const auto w = tokens->read(start, seq_len);
        for (std::size_t t = 0; t < w.size(); ++t) {
          if (w[t] < 0 || (vocab > 0 && w[t] >= vocab)) {
            fail(kind::invalid, quoted(tokens->path()) + ": token " + std::to_string(w[t]) +
                                    " at position " + std::to_string(start + t) +
                                    " is outside the vocabulary of input '" + token_input + "' (" +
                                    std::to_string(vocab) + " entries); check `token_dtype`");
          }
        }
        ids.insert(ids.end(), w.begin(), w.end());
      }
      feeds[token_input] = value::ints(
          {static_cast<std::int64_t>(count), static_cast<std::int64_t>(seq_len)}, std::move(ids));
      break;
    }
    case data_format::random:
      for (const auto& name : given) {
        std::vector<value> parts;
        for (std::size_t s = first; s < first + count; ++s)
          parts.push_back(random_value(input(name), s));
        feeds[name] = concat_rows(parts);
      }
      break;
    case data_format::automatic: break;
  }
  return feeds;
}

namespace {

/// What the given inputs say about those left out: the values of their symbolic dimensions,
/// the batch (1 when none says), the sequence length (-1: unknown) and the past length.
struct feed_lengths {
  std::map<std::string, std::int64_t> sym;
  std::int64_t batch = -1, seq = -1, past = 0;
};

/// The batch is the first dimension of the first given input that has one (not a cache
/// position or a count); the sequence the second of a [batch, sequence] integer input
/// (input_ids first), else the mask's length less the past; the past the next-to-last
/// dimension of a past key/value.
feed_lengths lengths_of(const std::vector<input_info>& inputs,
                        const std::map<std::string, value>& feeds) {
  feed_lengths l;
  for (const auto& in : inputs) {
    const auto it = feeds.find(in.name);
    if (it == feeds.end()) continue;
    const shape_t& s = it->second.shape;
    for (std::size_t k = 0; k < std::min(s.size(), in.params.size()); ++k)
      if (!in.params[k].empty()) l.sym.emplace(in.params[k], s[k]);
    const default_kind dk = default_kind_of(in.name);
    if (l.batch < 0 && !s.empty() && dk != default_kind::cache_position &&
        dk != default_kind::total_sequence_length && dk != default_kind::logits_to_keep)
      l.batch = s[0];
    if (dk == default_kind::none && it->second.type != value_type::float32 && s.size() == 2 &&
        (l.seq < 0 || lower(in.name) == "input_ids"))
      l.seq = s[1];
    if (dk == default_kind::past && s.size() >= 3) l.past = s[s.size() - 2];
  }
  if (l.batch < 0) l.batch = 1;
  const auto* mask = feeds.count("attention_mask") ? &feeds.at("attention_mask") : nullptr;
  if (l.seq < 0 && mask && mask->shape.size() == 2) l.seq = mask->shape[1] - l.past;
  return l;
}

[[noreturn]] void cannot_fill(const input_info& in, const std::string& why) {
  fail(kind::invalid, "input " + in.describe() + " is not in the data and int4q cannot fill it: " +
                          why + "; give it in the data");
}

/// A value of `in`'s type and `shape`, element e = fn(e).
template <class Fn>
value filled(const input_info& in, shape_t shape, Fn fn) {
  value v = empty_value(in.type, std::move(shape));
  for (std::size_t e = 0; e < v.size(); ++e) {
    const double x = fn(e);
    if (in.type == value_type::float32)
      v.f[e] = static_cast<float>(x);
    else
      v.i[e] = static_cast<std::int64_t>(x);
  }
  return v;
}

/// Scalars and [1]-like shapes from the graph: `in`'s fixed dims, or a scalar.
shape_t graph_shape(const input_info& in) {
  shape_t s;
  for (const auto d : in.dims) {
    if (d < 0) return shape_t{};
    s.push_back(d);
  }
  return s;
}

/// The shape of an empty past key/value: its past-length dimension 0 (a symbolic one named
/// like a length, else the symbolic one before the last: [batch, heads, past, head_size]), the
/// others fixed in the graph, resolved from the given inputs, or the batch.
shape_t empty_past_shape(const input_info& in, const feed_lengths& l) {
  const std::size_t rank = in.has_shape ? in.dims.size() : 0;
  if (!in.has_shape || rank < 2)
    cannot_fill(in, "its shape in the graph does not say which dimension is the past length");
  std::optional<std::size_t> len;
  for (std::size_t k = 1; k < rank && !len; ++k) {
    const std::string p = lower(in.params[k]);
    if (in.dims[k] < 0 &&
        (p.find("past") != std::string::npos || p.find("seq") != std::string::npos ||
         p.find("len") != std::string::npos || p.find("total") != std::string::npos))
      len = k;
  }
  if (!len && in.dims[rank - 2] < 0) len = rank - 2;
  if (!len) cannot_fill(in, "no dimension of it is a symbolic past length");
  shape_t s(rank);
  for (std::size_t k = 0; k < rank; ++k) {
    if (k == *len) {
      s[k] = 0;
    } else if (in.dims[k] >= 0) {
      s[k] = in.dims[k];
    } else if (!in.params[k].empty() && l.sym.count(in.params[k])) {
      s[k] = l.sym.at(in.params[k]);
    } else if (k == 0) {
      s[k] = l.batch;
    } else {
      cannot_fill(in, "the size of its dimension " + std::to_string(k) +
                          (in.params[k].empty() ? "" : " ('" + in.params[k] + "')") +
                          " is unknown");
    }
  }
  return s;
}

/// The default value of input `in` (of kind `dk`, not none), as the top of calib_data.hpp lists.
value default_value(const input_info& in, default_kind dk, const feed_lengths& l) {
  const std::int64_t batch = l.batch, past = l.past;
  auto need_seq = [&]() {
    if (l.seq < 0)
      cannot_fill(in, "the sequence length is unknown (no [batch, sequence] integer input given)");
    return l.seq;
  };
  const std::size_t rank = in.has_shape ? in.dims.size() : 0;
  switch (dk) {
    case default_kind::attention_mask:
      if (in.has_shape && rank != 2) cannot_fill(in, "int4q fills a [batch, sequence] mask only");
      return filled(in, {batch, past + need_seq()}, [](std::size_t) { return 1.0; });
    case default_kind::position_ids: {
      const std::int64_t s = need_seq();
      if (in.has_shape && rank == 1)
        return filled(in, {s}, [&](std::size_t e) { return double(past + std::int64_t(e)); });
      if (in.has_shape && rank != 2)
        cannot_fill(in, "int4q fills [batch, sequence] positions only");
      return filled(in, {batch, s},
                    [&](std::size_t e) { return double(past + std::int64_t(e) % s); });
    }
    case default_kind::token_type_ids:
      return filled(in, {batch, need_seq()}, [](std::size_t) { return 0.0; });
    case default_kind::cache_position:
      return filled(in, {need_seq()},
                    [&](std::size_t e) { return double(past + std::int64_t(e)); });
    case default_kind::use_cache_branch:
      return filled(in, graph_shape(in), [](std::size_t) { return 0.0; });
    case default_kind::seqlens_k: {
      const std::int64_t t = past + need_seq() - 1;
      return filled(in, {batch}, [&](std::size_t) { return double(t); });
    }
    case default_kind::total_sequence_length: {
      const std::int64_t t = past + need_seq();
      return filled(in, graph_shape(in), [&](std::size_t) { return double(t); });
    }
    case default_kind::logits_to_keep:
      return filled(in, graph_shape(in), [](std::size_t) { return 0.0; });
    case default_kind::past: return empty_value(in.type, empty_past_shape(in, l));
    case default_kind::none: break;
  }
  cannot_fill(in, "it has no default");
}

}  // namespace

void calib_data::impl::fill_defaults(std::map<std::string, value>& feeds) const {
  const feed_lengths l = lengths_of(inputs, feeds);
  for (const auto& in : inputs) {
    if (feeds.count(in.name)) continue;
    const default_kind dk = default_kind_of(in.name);
    if (dk == default_kind::none) cannot_fill(in, "it has no default");
    if (!in.computable) cannot_fill(in, "its type is one the executor does not compute with");
    feeds[in.name] = default_value(in, dk, l);
  }
}

namespace {

/// What calib_data::open learns while it reads the data: the checks and the description after
/// the format-specific step use it.
struct open_state {
  const model& m;
  const calib_options& o;
  calib_data::impl& d;
  std::string what;                         ///< the data path, quoted, for messages
  std::vector<const input_info*> required;  ///< the inputs no default fills
  bool fixed_first = false;                 ///< some input allows one sample per batch only
  std::int64_t pb_rows = 0;   ///< onnx_pb: rows along axis 0 of a sample's first input, 0 if none
  std::string pb_rows_input;  ///< ... its name and shape

  const input_info* by_name(const std::string& name) const {
    for (const auto& i : d.inputs)
      if (i.name == name) return &i;
    return nullptr;
  }
  [[noreturn]] void unknown_input(const std::string& where, const std::string& name) const {
    fail(kind::invalid, where + " names input '" + name +
                            "', which the model does not have; its inputs are: " + d.input_list());
  }
};

/// Random inputs: every required input is given, integer ones uniform over their vocabulary;
/// the warning says so.
void open_random(open_state& s) {
  const calib_options& o = s.o;
  calib_data::impl& d = s.d;
  if (o.samples == 0)
    throw config_error("samples 0: random inputs need a count >= 1 (0 = all is for data files)");
  check_random_sample_size(s.required, o.seq_len, o.max_sample_bytes);
  d.samples = o.samples;
  std::vector<std::string> vocab_text;
  for (const auto* in : s.required) {
    d.given.push_back(in->name);
    if (in->computable && in->type == value_type::int64) {
      const std::int64_t v = vocab_of(s.m, in->name);
      d.vocabs[in->name] = v;
      vocab_text.push_back("'" + in->name + "' " +
                           (v > 0 ? "uniform in [0, " + std::to_string(v) + ")"
                                  : std::string("zeros (no vocabulary found)")));
    }
    s.fixed_first |= in->fixed_first_dim();
  }
  d.warnings.push_back(
      "no calibration/evaluation data given: the inputs are random (seed " +
      std::to_string(o.seed) + "; floats N(0, 1)" +
      (vocab_text.empty() ? "" : ", " + join(vocab_text)) + ", symbolic dimensions 1 (first) and " +
      std::to_string(o.seq_len) +
      " (others)): results on random inputs can be far from those on real data; give real "
      "inputs as .npy, .npz, ONNX .pb files or a token file");
  d.description = std::to_string(d.samples) + " random samples";
}

/// The arrays of a .npy file (one, named after its input, else the only required input) or of
/// a .npz (each named after an input of the model).
std::vector<std::pair<std::string, array_source>> open_array_sources(const open_state& s) {
  const calib_options& o = s.o;
  std::vector<std::pair<std::string, array_source>> arrays;
  if (s.d.format == data_format::npz) {
    arrays = open_npz(o.path);
    for (const auto& [name, a] : arrays)
      if (!s.by_name(name)) s.unknown_input(s.what + " array '" + name + "'", name);
    return arrays;
  }
  array_source a;
  a.what = s.what;
  a.file = o.path;
  a.header = read_npy_header_at(o.path, 0, size_of_file(o.path), s.what);
  std::string name = o.path.stem().string();
  if (!s.by_name(name)) {
    if (s.required.size() != 1) {
      fail(kind::invalid,
           s.what +
               ": a .npy file feeds the input it is named after (e.g. input_ids.npy), "
               "or the model's only input without a default, and this model has " +
               std::to_string(s.required.size()) + " (" + names_of(s.required) +
               "); name the file after one, or give a .npz with all of them");
    }
    name = s.required[0]->name;
  }
  arrays.emplace_back(name, std::move(a));
  return arrays;
}

/// .npy/.npz: each array fits its input, and all hold the same number of samples (their first
/// axis over the input's rows per sample).
void open_arrays(open_state& s) {
  calib_data::impl& d = s.d;
  std::vector<std::pair<std::string, array_source>> arrays = open_array_sources(s);
  std::optional<std::int64_t> count;
  std::string count_from;
  for (const auto& [name, a] : arrays) {
    const input_info& in = *s.by_name(name);
    d.given.push_back(name);
    if (a.header.shape.empty())
      fail(kind::invalid,
           a.what + " is a scalar; its first axis must count samples (give shape [samples, ...])");
    check_fits(in, value_type_of(a.header.dtype), std::string(to_string(a.header.dtype)) + " data",
               a.header.shape, true, a.what);
    const std::int64_t n = a.header.shape[0] / in.rows_per_sample();
    if (count && *count != n) {
      fail(kind::invalid, s.what + ": arrays hold different numbers of samples: " + count_from +
                              " " + std::to_string(*count) + ", '" + name + "' " +
                              std::to_string(n) + " (the first axis counts samples)");
    }
    count = n;
    count_from = "'" + name + "'";
    s.fixed_first |= in.fixed_first_dim();
  }
  if (!count || *count == 0) fail(kind::invalid, s.what + ": holds no samples");
  d.available = static_cast<std::uint64_t>(*count);
  d.available_text = s.what + " holds " + std::to_string(*count) +
                     " samples (the first axis of its arrays counts samples)";
  d.samples = s.o.samples ? std::min<std::size_t>(s.o.samples, static_cast<std::size_t>(*count))
                          : static_cast<std::size_t>(*count);
  d.arrays = std::move(arrays);
}

/// The sample folders of ONNX test data: test_data_set_N in N order (shorter names first, so
/// 2 before 10), else the folder itself (one sample).
std::vector<fs::path> pb_sample_dirs(const fs::path& path, const std::string& what) {
  std::vector<fs::path> dirs;
  std::error_code ec;
  if (!fs::is_directory(path, ec)) fail(kind::io, what + ": not a folder of ONNX test data");
  for (const auto& e : fs::directory_iterator(path)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("test_data_set_", 0) == 0) dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end(), [](const fs::path& a, const fs::path& b) {
    const std::string x = a.filename().string(), y = b.filename().string();
    return x.size() != y.size() ? x.size() < y.size() : x < y;
  });
  if (dirs.empty()) dirs.push_back(path);
  return dirs;
}

/// The input a test-data tensor feeds: the one it names, else the `k`-th input of the model.
std::string pb_input_name(const open_state& s, const fs::path& file, std::size_t k,
                          const ::onnx::TensorProto& t) {
  if (!t.name().empty()) {
    if (!s.by_name(t.name())) s.unknown_input(quoted(file), t.name());
    return t.name();
  }
  if (k >= s.d.inputs.size()) {
    fail(kind::invalid, quoted(file) + ": the model has " + std::to_string(s.d.inputs.size()) +
                            " inputs, so there is no input " + std::to_string(k) +
                            "; its inputs are: " + s.d.input_list());
  }
  return s.d.inputs[k].name;
}

/// Dims from a .pb file: non-negative, and a size (as int64 values) that fits 62 bits.
void check_pb_dims(const fs::path& file, const std::string& name, const shape_t& shape) {
  std::uint64_t elements = 1;
  bool empty = false;
  for (const auto dim : shape) {
    if (dim < 0) {
      fail(kind::invalid, quoted(file) + ": tensor for input '" + name + "' has dims " +
                              shape_string(shape) + ", a negative dimension");
    }
    empty = empty || dim == 0;
  }
  for (std::size_t axis = 0; axis < shape.size() && !empty; ++axis) {
    const auto dim = static_cast<std::uint64_t>(shape[axis]);
    if (elements > (std::uint64_t(1) << 59) / dim) {
      fail(kind::invalid, quoted(file) + ": tensor for input '" + name + "' has dims " +
                              shape_string(shape) +
                              ", more elements than memory can hold (over 2^59)");
    }
    elements *= dim;
  }
}

/// One sample of ONNX test data: the input_K.pb files of `dir`, each checked against its input.
/// Returns input name -> file, and fills `shapes` with their shapes.
std::map<std::string, fs::path> read_pb_sample(open_state& s, const fs::path& dir,
                                               std::map<std::string, shape_t>& shapes) {
  const auto files = pb_files(dir);
  if (files.empty()) {
    fail(kind::invalid, quoted(dir) +
                            ": holds no input_0.pb, input_1.pb, ... (ONNX test data: "
                            "one TensorProto per input, or test_data_set_N folders of them)");
  }
  std::map<std::string, fs::path> set;
  for (const auto& [k, file] : files) {
    const ::onnx::TensorProto t = read_pb(file);
    const std::string name = pb_input_name(s, file, k, t);
    if (set.count(name))
      fail(kind::invalid, quoted(file) + ": a second tensor for input '" + name + "'");
    const input_info& in = *s.by_name(name);
    value_type vt;
    if (!value_type_of_onnx(t.data_type(), vt)) {
      fail(kind::unsupported, quoted(file) + ": tensor for input '" + name + "' is " +
                                  onnx_type_word(t.data_type()) +
                                  ", which the executor does not compute with");
    }
    const shape_t shape(t.dims().begin(), t.dims().end());
    check_pb_dims(file, name, shape);
    check_fits(in, vt, onnx_type_word(t.data_type()) + " data", shape, false, quoted(file));
    set[name] = file;
    shapes[name] = shape;
    s.fixed_first |= in.fixed_first_dim() || shape.empty();
  }
  return set;
}

/// A folder of ONNX test data: one sample per test_data_set_N folder (or the folder itself),
/// all giving the same inputs; samples of different shapes are run one per batch.
void open_pb(open_state& s) {
  calib_data::impl& d = s.d;
  const std::vector<fs::path> dirs = pb_sample_dirs(s.o.path, s.what);
  std::optional<std::map<std::string, shape_t>> first_shapes;
  bool same_shapes = true;
  for (const fs::path& dir : dirs) {
    if (s.o.samples && d.pb_sets.size() >= s.o.samples) break;
    std::map<std::string, shape_t> shapes;
    std::map<std::string, fs::path> set = read_pb_sample(s, dir, shapes);
    if (first_shapes && *first_shapes != shapes) same_shapes = false;
    if (first_shapes && first_shapes->size() != shapes.size())
      fail(kind::invalid, quoted(dir) + ": gives other inputs than " + quoted(dirs[0]));
    if (!first_shapes) first_shapes = shapes;
    d.pb_sets.push_back(std::move(set));
  }
  for (const auto& [name, file] : d.pb_sets[0]) d.given.push_back(name);
  d.samples = d.pb_sets.size();
  d.available = dirs.size();
  d.available_text = s.what + " holds " + std::to_string(dirs.size()) +
                     (dirs[0] == s.o.path ? " sample (a folder of input_K.pb files is one sample"
                                          : " samples (one per test_data_set_N folder") +
                     "; a .pb tensor's first axis is not split)";
  // What a sample holds, for the description: the rows along axis 0 of its first input
  // (a [16, 128] tensor is one sample of 16 rows, run as one batch of 16).
  for (const auto& [name, shape] : *first_shapes) {
    if (!shape.empty() && !s.by_name(name)->fixed_first_dim()) {
      s.pb_rows = shape[0];
      s.pb_rows_input = name + " " + shape_string(shape);
      break;
    }
  }
  s.fixed_first |= !same_shapes;
}

/// The input a token file feeds: input_ids, else the only required integer input; it must be
/// int64 [batch, sequence].
const input_info& token_input_of(const open_state& s) {
  const input_info* in = s.by_name("input_ids");
  if (!in) {
    std::vector<const input_info*> ints;
    for (const auto* r : s.required)
      if (r->computable && r->type == value_type::int64) ints.push_back(r);
    if (ints.size() == 1) in = ints[0];
  }
  if (!in || in->type != value_type::int64 || (in->has_shape && in->dims.size() != 2)) {
    fail(kind::invalid,
         s.what +
             " is read as a raw token file, which feeds a language model's token ids "
             "(input_ids, or the only integer input, [batch, sequence]); this model's inputs "
             "are: " +
             s.d.input_list() + "; give .npy, .npz or ONNX .pb data instead");
  }
  return *in;
}

/// A raw token file: windows of seq_len tokens (the input's fixed sequence length, if it has
/// one) of one row each.
void open_tokens(open_state& s) {
  const calib_options& o = s.o;
  calib_data::impl& d = s.d;
  if (o.samples == 0)
    throw config_error(
        "samples 0: a token file gives windows, so a count >= 1 (0 = all is "
        "for .npy/.npz/.pb data)");
  d.tokens.emplace(o.path, o.tokens);
  const input_info& in = token_input_of(s);
  d.token_input = in.name;
  if (in.has_shape && in.dims[1] > 0 && static_cast<std::size_t>(in.dims[1]) != o.seq_len) {
    d.warnings.push_back("input '" + in.name + "' has a fixed sequence length of " +
                         std::to_string(in.dims[1]) + ": windows of " + std::to_string(in.dims[1]) +
                         " tokens, not " + std::to_string(o.seq_len));
    d.seq_len = static_cast<std::size_t>(in.dims[1]);
  }
  if (in.has_shape && in.dims[0] > 1) {
    fail(kind::invalid, "input " + in.describe() + " has a fixed batch of " +
                            std::to_string(in.dims[0]) +
                            "; int4q cuts token files into windows of one row");
  }
  if (d.tokens->size() < d.seq_len) {
    fail(kind::invalid, s.what + " holds " + std::to_string(d.tokens->size()) +
                            " tokens, fewer than one window of " + std::to_string(d.seq_len));
  }
  d.vocab = vocab_of(s.m, in.name);
  d.given.push_back(in.name);
  // Windows start at distinct tokens: at most size - seq_len + 1 of them.
  d.available = d.tokens->size() - d.seq_len + 1;
  d.available_text = s.what + " holds " + std::to_string(d.tokens->size()) + " tokens: at most " +
                     std::to_string(d.available) + " distinct windows of " +
                     std::to_string(d.seq_len) + " tokens";
  d.samples = static_cast<std::size_t>(std::min<std::uint64_t>(o.samples, d.available));
  s.fixed_first |= in.fixed_first_dim();
}

/// Throws unless the data gives every input that no default fills.
void check_required_given(const open_state& s) {
  std::vector<std::string> missing;
  for (const auto* r : s.required)
    if (std::find(s.d.given.begin(), s.d.given.end(), r->name) == s.d.given.end())
      missing.push_back("'" + r->name + "'");
  if (!missing.empty()) {
    fail(kind::invalid,
         (s.o.path.empty() ? std::string("the data") : s.what) + " gives no value for " +
             join(missing) +
             ", which int4q cannot fill by default (it fills attention_mask, position_ids, "
             "past key/values and the like); the model's inputs are: " +
             s.d.input_list());
  }
}

/// The one-line description(): the samples (random ones are described at open_random), then
/// the inputs given and those filled by default.
void describe(open_state& s) {
  calib_data::impl& d = s.d;
  std::vector<std::string> filled;
  for (const auto& in : d.inputs)
    if (std::find(d.given.begin(), d.given.end(), in.name) == d.given.end())
      filled.push_back(in.name);
  if (d.format != data_format::random) {
    d.description =
        std::to_string(d.samples) +
        (d.format == data_format::tokens ? " windows of " + std::to_string(d.seq_len) + " tokens"
         : d.samples == 1                ? std::string(" sample")
                                         : std::string(" samples")) +
        (s.pb_rows > 1 ? (d.samples == 1 ? " of " : " each of ") + std::to_string(s.pb_rows) +
                             " rows (" + s.pb_rows_input + ")"
                       : std::string()) +
        " from " + s.what + " (" + to_string(d.format) + ")";
  }
  d.description += "; given: " + join(d.given) + "; filled by default: " + join(filled);
}

}  // namespace

calib_data calib_data::open(const model& m, const calib_options& o) {
  auto d = std::make_shared<impl>();
  d->inputs = graph_inputs(m);
  d->path = o.path;
  d->seed = o.seed;
  d->seq_len = o.seq_len;
  open_state s{m, o, *d, quoted(o.path), {}, false, 0, {}};
  if (o.seq_len == 0) throw config_error("calibration data: seq_len must be >= 1");
  d->format = o.path.empty()                       ? data_format::random
              : o.format == data_format::automatic ? detect_format(o.path)
                                                   : o.format;
  s.required = required_inputs(d->inputs);
  switch (d->format) {
    case data_format::random: open_random(s); break;
    case data_format::npy:
    case data_format::npz: open_arrays(s); break;
    case data_format::onnx_pb: open_pb(s); break;
    case data_format::tokens: open_tokens(s); break;
    case data_format::automatic: break;
  }
  check_required_given(s);
  d->max_batch = s.fixed_first ? 1 : std::max<std::size_t>(d->samples, 1);
  describe(s);
  // Fill once now, so that inputs int4q cannot fill fail at open, not in the middle of a run.
  calib_data r;
  r.impl_ = d;
  if (d->samples > 0) (void)r.batch(0, 1);
  return r;
}

std::size_t calib_data::samples() const noexcept { return impl_ ? impl_->samples : 0; }
std::size_t calib_data::max_batch() const noexcept { return impl_ ? impl_->max_batch : 1; }
std::int64_t vocabulary_of(const model& m, const std::string& input) { return vocab_of(m, input); }

std::uint64_t calib_data::available_samples() const noexcept {
  return impl_ ? impl_->available : 0;
}
const std::string& calib_data::available_description() const noexcept {
  static const std::string none;
  return impl_ ? impl_->available_text : none;
}
data_format calib_data::format() const noexcept {
  return impl_ ? impl_->format : data_format::random;
}

const std::vector<std::string>& calib_data::warnings() const noexcept {
  static const std::vector<std::string> none;
  return impl_ ? impl_->warnings : none;
}

const std::string& calib_data::description() const noexcept {
  static const std::string none;
  return impl_ ? impl_->description : none;
}

std::vector<std::string> calib_data::given_inputs() const {
  return impl_ ? impl_->given : std::vector<std::string>{};
}

std::map<std::string, value> calib_data::batch(std::size_t first, std::size_t count) const {
  if (!impl_) throw shape_error("calib_data: not opened (use calib_data::open)");
  if (count == 0 || first >= impl_->samples || count > impl_->samples - first) {
    throw shape_error("calib_data::batch(" + std::to_string(first) + ", " + std::to_string(count) +
                      "): samples are [0, " + std::to_string(impl_->samples) + ")");
  }
  if (count > impl_->max_batch) {
    throw shape_error("calib_data::batch: " + std::to_string(count) +
                      " samples in one batch, but this data allows " +
                      std::to_string(impl_->max_batch) +
                      " (a fixed first dimension, or samples of different shapes)");
  }
  std::map<std::string, value> feeds = impl_->given_batch(first, count);
  impl_->fill_defaults(feeds);
  return feeds;
}

}  // namespace onnx
}  // namespace int4q
