// Ember's status macros. EMBER_ASSIGN_OR_RETURN: evaluate an absl::StatusOr expression,
// return its error from the enclosing function, otherwise move its value into `lhs`.
// EMBER_RETURN_IF_ERROR: evaluate an absl::Status expression and return it if it is an error.
#pragma once

#include <utility>

#include "absl/status/status.h"

#define EMBER_ASSIGN_OR_RETURN(lhs, expr)     \
  do {                                        \
    auto _value = (expr);                     \
    if (!_value.ok()) return _value.status(); \
    lhs = *std::move(_value);                 \
  } while (0)

#define EMBER_RETURN_IF_ERROR(expr)      \
  do {                                   \
    const absl::Status _status = (expr); \
    if (!_status.ok()) return _status;   \
  } while (0)
