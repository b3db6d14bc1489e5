// The unit tests' input files (tests/cases): where the build put them, or
// where the kernel matrix's guest has them (IMDSTRACE_CASES_DIR in the
// environment).  The guest also holds deploy/prometheus-rules.yaml beside
// them, at cases_dir()/../../deploy.
#pragma once

#include <cstdlib>
#include <string>

namespace imdstrace::test {

inline std::string cases_dir() {
    const char* env = std::getenv("IMDSTRACE_CASES_DIR");
    return std::string(env != nullptr && *env != '\0' ? env : IMDSTRACE_CASES_DIR);
}

}  // namespace imdstrace::test
