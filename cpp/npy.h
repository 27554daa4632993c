// Minimal .npy (NumPy format 1.0/2.0/3.0) reading and writing for the runner's dtypes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qcrun {

// A dense, C-ordered array read from or written to a .npy file.
struct NpyArray {
  std::string dtype;           // numpy name: uint8, int8, int32, int64, float32, bool
  std::vector<int64_t> shape;  // empty for a 0-d array
  std::vector<char> data;      // C order, little-endian
};

// Item size in bytes of a runner dtype name, or 0 when the name is not one.
size_t DtypeItemSize(const std::string& dtype);

// Shape as "[1, 3, 16, 16]".
std::string ShapeStr(const std::vector<int64_t>& shape);

// Number of elements of `shape` (1 for a 0-d array).
int64_t NumElements(const std::vector<int64_t>& shape);

// Read a .npy file. Fortran-ordered arrays are converted to C order. Throws RunnerError
// (naming `path`) for a missing/short/corrupt file, a big-endian or unsupported dtype.
NpyArray ReadNpy(const std::string& path);

// Write `a` as a version 1.0 .npy file. Throws RunnerError when the file cannot be written.
void WriteNpy(const std::string& path, const NpyArray& a);

}  // namespace qcrun
