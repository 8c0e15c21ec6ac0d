// Chat requests rendered into a prompt by the model's own Jinja chat template, as
// transformers' apply_chat_template renders them: the template (tokenizer_config.json's
// chat_template, or chat_template.jinja) is parsed once at load by Ember's Jinja engine
// (worker/tokenizer/jinja/) and rendered with the variables transformers passes: messages, tools,
// documents, add_generation_prompt, the tokenizer's special tokens (bos_token, eos_token,
// ...), template keyword arguments (e.g. enable_thinking), raise_exception and strftime_now.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/jinja/template.h"

namespace ember::worker {

class ChatTemplate {
 public:
  // Parses `source`. `special_tokens` is an object of the tokenizer's special tokens by
  // variable name ({"bos_token": "<s>", "eos_token": "</s>", ...}). An empty template is
  // FailedPrecondition; one the engine cannot parse is InvalidArgument naming the construct
  // and its line and column.
  static absl::StatusOr<ChatTemplate> Load(absl::string_view source,
                                           nlohmann::ordered_json special_tokens);

  // Renders `request`, an object: "messages" (a list of objects: role, content and whatever
  // else the template reads: tool_calls, tool_call_id, name, reasoning_content, ...),
  // optional "tools" and "documents" (lists), optional "add_generation_prompt" (transformers'
  // default: false), and any other key as a template keyword argument. The text begins with
  // the BOS text where the template writes it, so encode it without special tokens (as
  // apply_chat_template does). The template's raise_exception is InvalidArgument with its
  // message; a render past the output or step limit is ResourceExhausted.
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& request) const;

 private:
  ChatTemplate(jinja::Template parsed, nlohmann::ordered_json special_tokens)
      : template_(std::move(parsed)), special_tokens_(std::move(special_tokens)) {}

  jinja::Template template_;
  nlohmann::ordered_json special_tokens_;
};

}  // namespace ember::worker
