// Command-line spelling shared by Ember's CLIs: flags may be written with dashes or
// underscores (--max-tokens or --max_tokens); Abseil only knows the underscore names.
#pragma once

#include <string>
#include <vector>

namespace ember {

// Rewrites "--foo-bar[=v]" to "--foo_bar[=v]" in place (up to "--", after which
// everything is positional). Returns storage that must outlive argv's use.
std::vector<std::string> NormalizeFlagSpelling(int argc, char** argv);

}  // namespace ember
