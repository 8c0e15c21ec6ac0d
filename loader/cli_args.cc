// Dash-to-underscore flag spelling for the CLIs.
#include "loader/cli_args.h"

#include <cstring>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"

namespace ember {

std::vector<std::string> NormalizeFlagSpelling(int argc, char** argv) {
  std::vector<std::string> storage(argv, argv + argc);
  for (int i = 1; i < argc; ++i) {
    std::string& arg = storage[i];
    if (arg == "--") break;
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) continue;
    const size_t end = std::min(arg.find('='), arg.size());
    for (size_t c = 2; c < end; ++c) {
      if (arg[c] == '-') arg[c] = '_';
    }
  }
  for (int i = 0; i < argc; ++i) argv[i] = storage[i].data();
  return storage;
}

namespace {
std::string* g_flags_file = nullptr;  // set once by ParseCli, read by Abseil's usage callbacks
bool IsOurFlagFile(absl::string_view file) {
  return file.find(*g_flags_file) != absl::string_view::npos;
}
}  // namespace

std::vector<std::string> ParseCli(int argc, char** argv, const char* usage,
                                  absl::string_view flags_file) {
  g_flags_file = new std::string(flags_file);  // lives as long as the process
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;
  config.contains_help_flags = IsOurFlagFile;
  config.contains_helpshort_flags = IsOurFlagFile;
  absl::SetFlagsUsageConfig(config);
  const std::vector<std::string> spelled = NormalizeFlagSpelling(argc, argv);
  std::vector<std::string> positional;
  for (char* arg : absl::ParseCommandLine(argc, argv)) positional.emplace_back(arg);
  return positional;
}

}  // namespace ember
