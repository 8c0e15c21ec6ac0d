// Command-line handling shared by Ember's CLIs: usage text, --help limited to the
// program's own flags, and flags written with dashes or underscores (--max-tokens or
// --max_tokens; Abseil only knows the underscore names).
#pragma once

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace ember {

// Sets the usage message, rewrites "--foo-bar" to "--foo_bar" (before any "--") and parses.
// --help prints the usage and the flags defined in files whose path contains `flags_file`
// (--helpfull: all flags) on stdout and exits 0. Returns the positional arguments, argv[0]
// first.
std::vector<std::string> ParseCli(int argc, char** argv, const char* usage,
                                  absl::string_view flags_file);

// Seconds since the kernel started this process (/proc/self/stat's start time, in clock ticks
// of 10 ms), so a timeline can include what runs before main(): the dynamic loader mapping
// and relocating the shared libraries. 0 where /proc cannot be read.
double SecondsSinceProcessStart();

}  // namespace ember
