// Reading and checking a qcompiler artifact directory (model.so + manifest.json), the C++
// counterpart of qcompiler/runtime/artifact.py and manifest.py.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace qcrun {

// One input or output as the manifest describes it (see qcompiler/runtime/manifest.py).
struct IOSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;        // storage dtype the compiled function takes/returns
  std::string qdtype;       // quint8 / qint8 / qint32, or "" when not quantized
  std::string qparams;      // human-readable qparams, "" when not quantized
  std::string torch_input;  // "float", "quantized" or ""

  // "x: float32[1, 3, 16, 16]" (+ " quint8(scale=..., zero_point=...)").
  std::string Describe() const;
};

// A checked artifact: manifest parsed and valid, every listed file's sha256 verified, the
// target's architecture and CPU features available on this machine.
struct Artifact {
  std::string dir;
  std::string library;  // path of model.so
  std::vector<IOSpec> inputs;
  std::vector<IOSpec> outputs;
  std::string target;        // display name, e.g. "host (x86-avx512-vnni)"
  std::string target_arch;   // x86_64 / aarch64
  std::vector<std::string> target_features;
  std::string tvm_version;   // TVM the artifact was built with ("" when not recorded)
};

// Load and check the artifact at `path` (a directory, or its manifest.json / model.so).
// `check_host` = false skips the architecture/CPU-feature check (never the checksums).
// Throws RunnerError (exit code 1) with a message saying what was expected and what was found.
Artifact LoadArtifact(const std::string& path, bool check_host = true);

// The architecture this runner was built for: "x86_64" or "aarch64" (or "unknown").
std::string RunnerArch();

// Canonical ISA features of this machine (LLVM names, the vocabulary of qcompiler/target.py).
std::vector<std::string> HostFeatures();

}  // namespace qcrun
