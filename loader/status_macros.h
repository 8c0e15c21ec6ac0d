// The one status macro Ember uses: evaluate an absl::StatusOr expression, return its error
// from the enclosing function, otherwise move its value into `lhs`.
#pragma once

#include <utility>

#define EMBER_ASSIGN_OR_RETURN(lhs, expr)     \
  do {                                        \
    auto _value = (expr);                     \
    if (!_value.ok()) return _value.status(); \
    lhs = *std::move(_value);                 \
  } while (0)
