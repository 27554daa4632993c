// .npy format: magic "\x93NUMPY", major, minor, header length (2 bytes for v1, 4 for v2/v3),
// then a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// padded with spaces to a multiple of 64 bytes and ended by '\n', then the raw data.
#include "npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "errors.h"

namespace qcrun {
namespace {

constexpr int kInputError = 3;

struct DtypeEntry {
  const char* name;
  const char* descr;  // little-endian descr numpy writes on a little-endian machine
  size_t size;
};

constexpr DtypeEntry kDtypes[] = {
    {"uint8", "|u1", 1},   {"int8", "|i1", 1},    {"bool", "|b1", 1},
    {"int32", "<i4", 4},   {"int64", "<i8", 8},   {"float32", "<f4", 4},
    {"uint16", "<u2", 2},  {"int16", "<i2", 2},   {"uint32", "<u4", 4},
    {"uint64", "<u8", 8},  {"float16", "<f2", 2}, {"float64", "<f8", 8},
};

[[noreturn]] void Fail(const std::string& path, const std::string& what) {
  throw RunnerError(path + ": " + what, kInputError);
}

// The value of `key` in the header dict, as raw text up to the next top-level ',' or '}'.
std::string HeaderField(const std::string& header, const std::string& key,
                        const std::string& path) {
  for (const char* quote : {"'", "\""}) {
    std::string k = std::string(quote) + key + quote;
    size_t pos = header.find(k);
    if (pos == std::string::npos) continue;
    pos = header.find(':', pos + k.size());
    if (pos == std::string::npos) break;
    ++pos;
    int depth = 0;
    size_t end = pos;
    for (; end < header.size(); ++end) {
      char c = header[end];
      if (c == '(' || c == '[') ++depth;
      if (c == ')' || c == ']') --depth;
      if (depth == 0 && (c == ',' || c == '}')) break;
    }
    std::string v = header.substr(pos, end - pos);
    size_t b = v.find_first_not_of(" \t"), e = v.find_last_not_of(" \t");
    return b == std::string::npos ? "" : v.substr(b, e - b + 1);
  }
  Fail(path, "not a valid .npy file: header has no '" + key + "' entry");
}

std::string DtypeFromDescr(std::string descr, const std::string& path) {
  if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"')) {
    Fail(path, "unsupported .npy dtype " + descr + " (structured arrays are not supported)");
  }
  descr = descr.substr(1, descr.size() - 2);
  char order = '|';
  if (!descr.empty() && std::strchr("<>=|", descr[0]) != nullptr) {
    order = descr[0];
    descr = descr.substr(1);
  }
  bool single_byte = descr == "u1" || descr == "i1" || descr == "b1";
  if (order == '>' && !single_byte) {
    Fail(path, "big-endian dtype '>" + descr + "' is not supported; save the array with "
               "arr.astype(arr.dtype.newbyteorder('<'))");
  }
  std::string canonical = (single_byte ? "|" : "<") + descr;
  for (const auto& d : kDtypes) {
    if (canonical == d.descr) return d.name;
  }
  Fail(path, "unsupported .npy dtype '" + canonical + "'");
}

std::vector<int64_t> ParseShape(const std::string& text, const std::string& path) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') {
    Fail(path, "not a valid .npy file: bad shape " + text);
  }
  std::vector<int64_t> shape;
  std::stringstream ss(text.substr(1, text.size() - 2));
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t b = item.find_first_not_of(" \tL"), e = item.find_last_not_of(" \tL");
    if (b == std::string::npos) continue;
    item = item.substr(b, e - b + 1);
    char* end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (*end != '\0' || v < 0) Fail(path, "not a valid .npy file: bad shape " + text);
    shape.push_back(v);
  }
  return shape;
}

// Fortran order (first index fastest) -> C order (last index fastest).
std::vector<char> FortranToC(const std::vector<char>& src, const std::vector<int64_t>& shape,
                             size_t itemsize) {
  std::vector<char> dst(src.size());
  int64_t n = NumElements(shape);
  size_t nd = shape.size();
  std::vector<int64_t> idx(nd, 0);
  for (int64_t c = 0; c < n; ++c) {  // c walks the C-order positions
    int64_t f = 0, stride = 1;
    for (size_t k = 0; k < nd; ++k) {
      f += idx[k] * stride;
      stride *= shape[k];
    }
    std::memcpy(dst.data() + c * itemsize, src.data() + f * itemsize, itemsize);
    for (size_t k = nd; k-- > 0;) {
      if (++idx[k] < shape[k]) break;
      idx[k] = 0;
    }
  }
  return dst;
}

}  // namespace

size_t DtypeItemSize(const std::string& dtype) {
  for (const auto& d : kDtypes) {
    if (dtype == d.name) return d.size;
  }
  return 0;
}

std::string ShapeStr(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

NpyArray ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail(path, "cannot open the input file (does it exist?)");
  char magic[8];
  in.read(magic, 8);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0) {
    Fail(path, "not a .npy file (no \\x93NUMPY magic); save inputs with numpy.save");
  }
  int major = static_cast<unsigned char>(magic[6]);
  uint32_t hlen = 0;
  if (major == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t{b[3]} << 24);
  } else {
    Fail(path, "unsupported .npy format version " + std::to_string(major));
  }
  if (!in || hlen > (1u << 24)) Fail(path, "not a valid .npy file: truncated header");
  std::string header(hlen, '\0');
  in.read(header.data(), hlen);
  if (!in) Fail(path, "not a valid .npy file: truncated header");

  NpyArray a;
  a.dtype = DtypeFromDescr(HeaderField(header, "descr", path), path);
  std::string fortran = HeaderField(header, "fortran_order", path);
  a.shape = ParseShape(HeaderField(header, "shape", path), path);
  size_t itemsize = DtypeItemSize(a.dtype);
  size_t nbytes = static_cast<size_t>(NumElements(a.shape)) * itemsize;
  a.data.resize(nbytes);
  in.read(a.data.data(), static_cast<std::streamsize>(nbytes));
  if (static_cast<size_t>(in.gcount()) != nbytes) {
    Fail(path, "file is truncated: the header says " + a.dtype + ShapeStr(a.shape) + " (" +
                   std::to_string(nbytes) + " bytes) but only " + std::to_string(in.gcount()) +
                   " data bytes follow");
  }
  if (fortran == "True") a.data = FortranToC(a.data, a.shape, itemsize);
  return a;
}

void WriteNpy(const std::string& path, const NpyArray& a) {
  const char* descr = nullptr;
  for (const auto& d : kDtypes) {
    if (a.dtype == d.name) descr = d.descr;
  }
  if (descr == nullptr) throw RunnerError("cannot write dtype " + a.dtype + " to " + path);
  std::string shape = "(";
  for (size_t i = 0; i < a.shape.size(); ++i) shape += std::to_string(a.shape[i]) + ", ";
  if (a.shape.size() > 1) shape.resize(shape.size() - 2);
  if (a.shape.size() == 1) shape.resize(shape.size() - 1);
  shape += ")";
  std::string header =
      std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw RunnerError("cannot write output file " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  unsigned char hl[2] = {static_cast<unsigned char>(header.size() & 0xff),
                         static_cast<unsigned char>(header.size() >> 8)};
  out.write(reinterpret_cast<const char*>(hl), 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(a.data.data(), static_cast<std::streamsize>(a.data.size()));
  if (!out) throw RunnerError("error while writing output file " + path);
}

}  // namespace qcrun
