// Errors every layer may raise, mapped to exit codes in one place (cli/main.cpp).
#pragma once

#include <stdexcept>

namespace imdstrace {

// The user asked for something that cannot work as given (a bad option, a
// file that is not there): exit 2.  Anything else thrown is a runtime
// failure: exit 1.
struct UsageError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace imdstrace
