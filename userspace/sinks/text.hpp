// Text a person reads at a glance: one line per transaction (watch) and
// the diagnosis report (diagnose, report).
#pragma once

#include <string>

#include "verdict/diagnosis.hpp"
#include "verdict/record.hpp"

namespace imdstrace {

struct TextStyle {
    bool color = false;  // ANSI colour, only on a terminal
};

std::string format_transaction(const TransactionRecord& r, TextStyle style = {});
std::string format_transaction_header(TextStyle style = {});
std::string format_diagnosis(const Diagnosis& d, TextStyle style = {});

}  // namespace imdstrace
