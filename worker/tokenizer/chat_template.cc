#include "worker/tokenizer/chat_template.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace ember::worker {

absl::StatusOr<ChatTemplate> ChatTemplate::Load(absl::string_view source,
                                                nlohmann::ordered_json special_tokens) {
  if (source.empty()) {
    return absl::FailedPreconditionError(
        "the model has no chat template (tokenizer_config.json's chat_template or "
        "chat_template.jinja); send a text prompt formatted for the model instead of chat "
        "messages");
  }
  auto parsed = jinja::Template::Parse(std::string_view(source.data(), source.size()));
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the model's chat template cannot be rendered by Ember: ", parsed.status().message(),
        "; send a text prompt formatted for the model instead of chat messages"));
  }
  return ChatTemplate(*std::move(parsed), std::move(special_tokens));
}

absl::StatusOr<std::string> ChatTemplate::Render(const nlohmann::ordered_json& request) const {
  if (!request.is_object()) return absl::InvalidArgumentError("a chat request must be an object");
  // transformers: render_jinja_template(messages=..., tools=..., documents=...,
  // add_generation_prompt=..., **special_tokens_map, **kwargs); keyword arguments win over
  // special tokens of the same name.
  // tools and documents are None when not given (not undefined: `tools is not none`).
  nlohmann::ordered_json context = special_tokens_;
  context["tools"] = nullptr;
  context["documents"] = nullptr;
  context["add_generation_prompt"] = false;
  for (const auto& [key, value] : request.items()) context[key] = value;
  if (!context.contains("messages") || !context["messages"].is_array()) {
    return absl::InvalidArgumentError("messages: a list of chat messages is required");
  }
  return template_.Render(jinja::FromJson(context));
}

}  // namespace ember::worker
