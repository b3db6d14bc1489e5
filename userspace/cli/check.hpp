// `imdstrace check`: can imdstrace run here, and which kernel paths will it use?
#pragma once

#include <string>

#include "pipeline/session.hpp"

namespace imdstrace {

int run_check(const SessionOptions& opts, const std::string& output);

}  // namespace imdstrace
