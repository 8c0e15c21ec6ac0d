// A Jinja2 template engine for Hugging Face chat templates (tokenizer_config.json's
// "chat_template"). Hand-written because no C++ Jinja library is packaged in Debian. It covers
// the subset chat templates use and renders as transformers' environment does:
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
// with the default Undefined, its own `tojson` (json.dumps, non-ASCII kept), and the globals
// raise_exception and strftime_now.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/tokenizer/jinja/value.h"

namespace ember::jinja {

struct Stmt;

// What one render may spend; exceeding one is a ResourceExhausted error naming it.
struct Limits {
  size_t max_output_bytes = 4 << 20;  // also bounds any string or list the template builds
  int64_t max_steps = 10'000'000;     // statements, loop iterations and expressions evaluated
  int max_depth = 64;  // macro call nesting, and how deeply any value evaluated nests lists/dicts
};

class Template {
 public:
  // Parsed once; an unsupported construct or a syntax error is InvalidArgument naming the
  // construct and its position as "line L, column C" (e.g. "unsupported statement 'include' at
  // line 3, column 5").
  static absl::StatusOr<Template> Parse(std::string_view source);

  // Renders with `context` (a dict Value: messages, tools, add_generation_prompt, bos_token,
  // ...). raise_exception("msg") is InvalidArgument whose message is exactly msg's text;
  // exceeding a limit is ResourceExhausted naming the limit; type errors are InvalidArgument
  // with their position. Safe to call from several threads at once.
  absl::StatusOr<std::string> Render(const Value& context, const Limits& limits = {}) const;

 private:
  explicit Template(std::shared_ptr<const std::vector<Stmt>> body) : body_(std::move(body)) {}

  std::shared_ptr<const std::vector<Stmt>> body_;  // shared: copies are cheap
};

}  // namespace ember::jinja
