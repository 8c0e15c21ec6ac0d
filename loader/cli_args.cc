// Usage, --help filtering and dash-to-underscore flag spelling for the CLIs.
#include "loader/cli_args.h"

#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

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

// --help, --helpshort, --helpfull and --help=SUBSTRING, answered here rather than by
// Abseil, which exits 1 after help and names each flag's source file on the build machine:
// the usage, then the flags (the program's own, or all for --helpfull) with their defaults,
// on stdout. Returns whether `argv` asked for help.
bool PrintHelpIfAsked(int argc, char** argv, const char* usage, absl::string_view flags_file) {
  bool full = false, asked = false;
  std::string filter;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (arg == "--help" || arg == "-help" || arg == "--helpshort" || arg == "-h") {
      asked = true;
    } else if (arg == "--helpfull") {
      asked = full = true;
    } else if (absl::ConsumePrefix(&arg, "--help=")) {
      asked = full = true;
      filter = std::string(arg);
    }
  }
  if (!asked) return false;
  std::map<std::string, const absl::CommandLineFlag*> shown;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    const bool own = flag->Filename().find(std::string(flags_file)) != std::string::npos;
    if (!full && !own) continue;
    if (!filter.empty() && name.find(filter) == absl::string_view::npos &&
        flag->Help().find(filter) == std::string::npos) {
      continue;
    }
    shown.emplace(std::string(name), flag);
  }
  std::string out = absl::StrCat(usage, "\n\nFlags (written --name=value; dashes or underscores):\n");
  for (const auto& [name, flag] : shown) {
    absl::StrAppend(&out, "  --", name, " (default: ",
                    flag->DefaultValue().empty() ? "\"\"" : flag->DefaultValue(), ")\n      ",
                    flag->Help(), "\n");
  }
  if (!full) absl::StrAppend(&out, "\n--helpfull lists every flag, including Abseil's own.\n");
  std::fwrite(out.data(), 1, out.size(), stdout);
  return true;
}

}  // namespace

double SecondsSinceProcessStart() {
  std::ifstream in("/proc/self/stat");
  std::string stat;
  if (!std::getline(in, stat)) return 0;
  // Field 22 (starttime) counts from the field after the command name, which may hold
  // spaces and parentheses: start after its last ')'.
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return 0;
  std::istringstream fields(stat.substr(paren + 1));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
  }
  double ticks = 0;
  if (!absl::SimpleAtod(field, &ticks)) return 0;
  timespec now{};
  clock_gettime(CLOCK_BOOTTIME, &now);
  const double since = now.tv_sec + now.tv_nsec * 1e-9 - ticks / sysconf(_SC_CLK_TCK);
  return since > 0 ? since : 0;
}

std::vector<std::string> ParseCli(int argc, char** argv, const char* usage,
                                  absl::string_view flags_file) {
  absl::SetProgramUsageMessage(usage);
  NormalizeFlagSpelling(argc, argv);
  if (PrintHelpIfAsked(argc, argv, usage, flags_file)) std::exit(0);
  std::vector<std::string> positional;
  for (char* arg : absl::ParseCommandLine(argc, argv)) positional.emplace_back(arg);
  return positional;
}

}  // namespace ember
