// Structured logging: one JSON object per line on stderr ({"ts","level","component",
// "msg", ...fields}). Callers never pass secrets; URLs are logged without query strings.
#pragma once

#include <optional>

#include "absl/strings/string_view.h"

#include "nlohmann/json.hpp"

namespace ember {

enum class LogLevel { kDebug, kInfo, kWarning, kError, kOff };

// Messages below this level are dropped (default kInfo; EMBER_LOG_LEVEL overrides).
void SetLogLevel(LogLevel level);
// "debug", "info", "warning", "error" or "off"; nullopt for anything else.
std::optional<LogLevel> ParseLogLevel(absl::string_view name);
LogLevel GetLogLevel();

void Log(LogLevel level, absl::string_view component, absl::string_view msg,
         const nlohmann::json& fields = nlohmann::json::object());

inline void LogInfo(absl::string_view component, absl::string_view msg,
                    const nlohmann::json& fields = nlohmann::json::object()) {
  Log(LogLevel::kInfo, component, msg, fields);
}
inline void LogWarning(absl::string_view component, absl::string_view msg,
                       const nlohmann::json& fields = nlohmann::json::object()) {
  Log(LogLevel::kWarning, component, msg, fields);
}

}  // namespace ember

namespace ember::loader {
using ::ember::LogInfo;
using ::ember::LogWarning;
}  // namespace ember::loader
