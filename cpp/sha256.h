// SHA-256 (FIPS 180-4) of a file, for checking an artifact's files against manifest.json.
#pragma once

#include <string>

namespace qcrun {

// Lower-case hex SHA-256 of the file at `path`. Throws RunnerError when it cannot be read.
std::string Sha256File(const std::string& path);

}  // namespace qcrun
