// Chat messages rendered into a prompt the way the model's chat template would render
// them. Not a Jinja engine: tokenizer_config.json's "chat_template" is recognized as one
// of the common families (ChatML as in Qwen2/Qwen2.5/SmolLM2, Llama 3/3.1/3.2, Mistral
// [INST]) and its parameters (default system prompt, [INST] spacing, dates) are read from
// it; anything else is refused with a message telling the client to send a prompt.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace ember::worker {

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  enum class Family { kChatMl, kLlama3, kMistral };

  // Recognizes `source` (the Jinja text). `bos_token` and `eos_token` are the strings the
  // template would write for them. An empty or unrecognized template is a
  // FailedPrecondition error.
  static absl::StatusOr<ChatTemplate> Recognize(absl::string_view source, std::string bos_token,
                                                std::string eos_token);

  // The prompt text, with the generation prompt (the assistant header) when asked and the
  // family has one. It begins with the BOS text where the template writes it, so encode it
  // with add_special_tokens=false (as transformers' apply_chat_template does). A role
  // other than system/user/assistant, or an order the template refuses, is an
  // InvalidArgument error naming the message.
  absl::StatusOr<std::string> Render(absl::Span<const ChatMessage> messages,
                                     bool add_generation_prompt) const;

  Family family() const { return family_; }

 private:
  ChatTemplate() = default;
  std::string RenderChatMl(absl::Span<const ChatMessage> messages,
                           bool add_generation_prompt) const;
  std::string RenderLlama3(absl::Span<const ChatMessage> messages,
                           bool add_generation_prompt) const;
  absl::StatusOr<std::string> RenderMistral(absl::Span<const ChatMessage> messages) const;

  Family family_ = Family::kChatMl;
  std::string bos_token_, eos_token_;
  // ChatML: the system message written when the conversation has none (Qwen2, SmolLM2).
  std::optional<std::string> default_system_;
  // Llama 3.1+: the system header's dates ("Cutting Knowledge Date", "Today Date");
  // today_from_clock: the template takes today's date (strftime_now) when it can.
  bool llama_dated_system_ = false;
  std::string knowledge_date_, today_date_;
  bool today_from_clock_ = false;
  // Mistral: the [INST] strings, where the system message goes, and the assistant turn.
  std::string inst_open_, inst_close_;
  enum class SystemPlacement {
    kNone,
    kFirstUser,
    kLastUser
  } system_placement_ = SystemPlacement::kNone;
  std::string assistant_prefix_, assistant_suffix_;
  bool trim_assistant_ = false;
};

}  // namespace ember::worker
