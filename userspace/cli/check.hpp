// `imdstrace check`: can imdstrace run here, and which kernel paths will it use?
#pragma once

#include <string>

#include "cli/session.hpp"

namespace imdstrace {

int run_check(const SessionOptions& opts, const std::string& output);

}  // namespace imdstrace
