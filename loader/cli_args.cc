// Usage, --help filtering and dash-to-underscore flag spelling for the CLIs.
#include "loader/cli_args.h"

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"

namespace ember {
namespace {

// In place: the rewrite never changes a string's length.
void NormalizeFlagSpelling(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    char* arg = argv[i];
    if (arg[0] != '-' || arg[1] != '-') continue;
    if (arg[2] == '\0') break;  // "--": the rest is positional
    for (char* c = arg + 2; *c != '\0' && *c != '='; ++c) {
      if (*c == '-') *c = '_';
    }
  }
}

}  // namespace

std::vector<std::string> ParseCli(int argc, char** argv, const char* usage,
                                  absl::string_view flags_file) {
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [file = std::string(flags_file)](absl::string_view path) {
    return path.find(file) != absl::string_view::npos;
  };
  config.contains_helpshort_flags = config.contains_help_flags;
  absl::SetFlagsUsageConfig(config);
  NormalizeFlagSpelling(argc, argv);
  std::vector<std::string> positional;
  for (char* arg : absl::ParseCommandLine(argc, argv)) positional.emplace_back(arg);
  return positional;
}

}  // namespace ember
