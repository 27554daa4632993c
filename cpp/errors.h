// The one exception type the runner reports as "error: ..." with a non-zero exit code.
#pragma once

#include <stdexcept>
#include <string>

namespace qcrun {

// A user-facing failure: missing file, bad checksum, wrong input, unsupported artifact.
class RunnerError : public std::runtime_error {
 public:
  explicit RunnerError(const std::string& msg, int exit_code = 1)
      : std::runtime_error(msg), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

}  // namespace qcrun
