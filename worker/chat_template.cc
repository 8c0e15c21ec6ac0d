// Recognition of chat templates by the expressions that produce their output, and the
// renderings of the three families, matched to transformers' apply_chat_template.
//
// Recognition works on a canonical form of the template's code: the text inside {{ }} and
// {% %} tags with whitespace outside string literals removed, every literal quoted with
// ', and message['x'] written message.x. A family is recognized only when every
// expression it renders is found; a template that renders anything else (thinking
// blocks, tool formats as the default path, ...) is not one we can reproduce.
#include "worker/chat_template.h"

#include <re2/re2.h>

#include <ctime>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "worker/utf8.h"

namespace ember::worker {
namespace {

// The canonical form described above; tags are separated by ';'.
std::string Canonical(absl::string_view source) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t open = source.find_first_of("{", pos);
    if (open == absl::string_view::npos || open + 1 >= source.size()) break;
    const char kind = source[open + 1];
    if (kind != '{' && kind != '%') {
      pos = open + 1;
      continue;
    }
    const absl::string_view close_tag = kind == '{' ? "}}" : "%}";
    absl::string_view inner = source.substr(open + 2);
    char quote = 0;
    size_t i = 0;
    std::string tag;
    for (; i < inner.size(); ++i) {
      const char c = inner[i];
      if (quote) {
        if (c == '\\' && i + 1 < inner.size()) {
          tag += c;
          tag += inner[++i];
        } else if (c == quote) {
          tag += '\'';
          quote = 0;
        } else if (c == '\n') {
          tag += "\\n";
        } else if (c == '\'') {
          tag += "\\'";
        } else {
          tag += c;
        }
      } else if (absl::StartsWith(inner.substr(i), close_tag) ||
                 (inner.size() > i + 2 && (inner[i] == '-' || inner[i] == '+') &&
                  absl::StartsWith(inner.substr(i + 1), close_tag))) {
        break;
      } else if (c == '\'' || c == '"') {
        quote = c;
        tag += '\'';
      } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
        tag += c;
      }
    }
    if (!tag.empty() && (tag[0] == '-' || tag[0] == '+')) tag.erase(0, 1);
    absl::StrAppend(&out, tag, ";");
    pos = open + 2 + i + 2;
    if (pos > source.size()) break;
  }
  return absl::StrReplaceAll(out, {{"message['role']", "message.role"},
                                   {"message['content']", "message.content"},
                                   {"messages[0]['role']", "messages[0].role"},
                                   {"messages[0]['content']", "messages[0].content"}});
}

// Jinja string-literal escapes back to text (\n, \', \", \\).
std::string Unescape(absl::string_view s) {
  return absl::StrReplaceAll(s, {{"\\n", "\n"}, {"\\'", "'"}, {"\\\"", "\""}, {"\\\\", "\\"}});
}

// Jinja's trim filter is Python's str.strip(): Unicode whitespace as str.isspace() sees it.
// That is White_Space and the separators U+001C..U+001F.
bool IsPythonSpace(char32_t c) { return utf8::IsWhiteSpace(c) || (c >= 0x1C && c <= 0x1F); }

// `s` is well-formed UTF-8.
std::string Trim(absl::string_view s) {
  size_t begin = 0;
  for (size_t next = 0; begin < s.size() && IsPythonSpace(utf8::Next(s, next)); begin = next) {
  }
  size_t end = s.size();
  for (size_t prev = end; end > begin && IsPythonSpace(utf8::Prev(s, prev)); end = prev) {
  }
  return std::string(s.substr(begin, end - begin));
}

absl::Status Unrecognized(absl::string_view why) {
  return absl::FailedPreconditionError(absl::StrCat(
      "the model's chat template is not one Ember can render (", why,
      "; supported: ChatML as in Qwen2/SmolLM2, Llama 3, Mistral [INST]); send a text prompt "
      "formatted for the model instead of chat messages"));
}

std::string TodayAsLlamaWritesIt() {
  const std::time_t now = std::time(nullptr);
  std::tm local;
  localtime_r(&now, &local);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%d %b %Y", &local);
  return buf;
}

}  // namespace

absl::StatusOr<ChatTemplate> ChatTemplate::Recognize(absl::string_view source,
                                                     std::string bos_token, std::string eos_token) {
  if (source.empty()) return Unrecognized("tokenizer_config.json has no chat_template");
  const std::string c = Canonical(source);
  ChatTemplate t;
  t.bos_token_ = std::move(bos_token);
  t.eos_token_ = std::move(eos_token);
  if (absl::StrContains(c, "<think>") || absl::StrContains(c, "reasoning_content")) {
    return Unrecognized("it has reasoning blocks");
  }

  if (absl::StrContains(c,
                        "'<|im_start|>'+message.role+'\\n'+message.content+'<|im_end|>'+'\\n'") ||
      absl::StrContains(c, "'<|im_start|>'+message.role+'\\n'+message.content+'<|im_end|>\\n'")) {
    if (!absl::StrContains(c, "'<|im_start|>assistant\\n'"))
      return Unrecognized("ChatML without a generation prompt");
    t.family_ = Family::kChatMl;
    std::string text;
    if (RE2::PartialMatch(c, R"('<\|im_start\|>system\\n((?:[^'\\]|\\[^'])*)<\|im_end\|>\\n')",
                          &text)) {
      t.default_system_ = Unescape(text);
    }
    return t;
  }

  if (absl::StrContains(c,
                        "'<|start_header_id|>'+message.role+'<|end_header_id|>\\n\\n'+message."
                        "content|trim+'<|eot_id|>'")) {
    if (!absl::StrContains(c, "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'")) {
      return Unrecognized("Llama 3 without a generation prompt");
    }
    t.family_ = Family::kLlama3;
    if (absl::StrContains(c, "Cutting Knowledge Date: ")) {
      t.llama_dated_system_ = true;
      std::string knowledge, today;
      if (!RE2::PartialMatch(c, R"('Cutting Knowledge Date: ([^'\\]*)\\n')", &knowledge) ||
          !RE2::PartialMatch(c, R"(setdate_string='([^']*)')", &today) ||
          !absl::StrContains(c, "'Today Date: '+date_string+'\\n\\n'") ||
          !absl::StrContains(c, "'<|start_header_id|>system<|end_header_id|>\\n\\n'")) {
        return Unrecognized("an unfamiliar Llama 3 system header");
      }
      t.knowledge_date_ = knowledge;
      t.today_date_ = today;
      t.today_from_clock_ = absl::StrContains(c, "strftime_now(");
    } else if (!absl::StrContains(c, "setcontent=bos_token+content")) {
      return Unrecognized("Llama 3 without its BOS");
    }
    return t;
  }

  if (absl::StrContains(c, "[INST]") && absl::StrContains(c, "[/INST]")) {
    t.family_ = Family::kMistral;
    std::string open, close;
    if (RE2::PartialMatch(
            c, R"('( ?\[INST\] )'\+system_message\+'\\n\\n'\+message\.content\+'( ?\[/INST\])')",
            &open, &close)) {
      if (absl::StrContains(c, "loop.lastandsystem_messageisdefined")) {
        t.system_placement_ = SystemPlacement::kLastUser;
      } else if (absl::StrContains(c, "loop.firstandsystem_messageisdefined")) {
        t.system_placement_ = SystemPlacement::kFirstUser;
      } else {
        return Unrecognized("an unfamiliar place for the Mistral system message");
      }
    }
    std::string open_plain, close_plain;
    if (!RE2::PartialMatch(c, R"('( ?\[INST\] )'\+message\.content\+'( ?\[/INST\])')", &open_plain,
                           &close_plain) ||
        (t.system_placement_ != SystemPlacement::kNone &&
         (open != open_plain || close != close_plain))) {
      return Unrecognized("an unfamiliar Mistral [INST] format");
    }
    t.inst_open_ = open_plain;
    t.inst_close_ = close_plain;
    std::string prefix, trim, suffix;
    if (!RE2::PartialMatch(c,
                           R"((?:^|[^+])('\s?'\+)?message\.content(\|trim)?\+eos_token(\+'\s?')?)",
                           &prefix, &trim, &suffix)) {
      return Unrecognized("an unfamiliar Mistral assistant turn");
    }
    t.assistant_prefix_ = prefix.empty() ? "" : prefix.substr(1, prefix.size() - 3);
    t.assistant_suffix_ = suffix.empty() ? "" : suffix.substr(2, suffix.size() - 3);
    t.trim_assistant_ = !trim.empty();
    if (!absl::StrContains(c, "bos_token")) return Unrecognized("Mistral without its BOS");
    return t;
  }
  return Unrecognized("no known family's message format was found in it");
}

absl::StatusOr<std::string> ChatTemplate::Render(absl::Span<const ChatMessage> messages,
                                                 bool add_generation_prompt) const {
  if (messages.empty())
    return absl::InvalidArgumentError("messages: at least one message is needed");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(absl::StrCat("messages[", i, "].role: '", role,
                                                     "' is not one of system, user, assistant"));
    }
    if (auto bad = utf8::FindInvalid(messages[i].content)) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].content: not valid UTF-8 at byte offset ", *bad));
    }
  }
  switch (family_) {
    case Family::kChatMl:
      return RenderChatMl(messages, add_generation_prompt);
    case Family::kLlama3:
      return RenderLlama3(messages, add_generation_prompt);
    case Family::kMistral:
      return RenderMistral(messages);
  }
  return absl::InternalError("unknown chat template family");
}

std::string ChatTemplate::RenderChatMl(absl::Span<const ChatMessage> messages,
                                       bool add_generation_prompt) const {
  std::string out;
  if (default_system_ && messages[0].role != "system") {
    absl::StrAppend(&out, "<|im_start|>system\n", *default_system_, "<|im_end|>\n");
  }
  for (const ChatMessage& m : messages) {
    absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
  }
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

std::string ChatTemplate::RenderLlama3(absl::Span<const ChatMessage> messages,
                                       bool add_generation_prompt) const {
  auto turn = [](absl::string_view role, absl::string_view content) {
    return absl::StrCat("<|start_header_id|>", role, "<|end_header_id|>\n\n", Trim(content),
                        "<|eot_id|>");
  };
  std::string out;
  if (llama_dated_system_) {
    // Llama 3.1+: always a system turn carrying the dates, the system message inside it.
    std::string system;
    if (messages[0].role == "system") {
      system = Trim(messages[0].content);
      messages.remove_prefix(1);
    }
    absl::StrAppend(&out, bos_token_, "<|start_header_id|>system<|end_header_id|>\n\n",
                    "Cutting Knowledge Date: ", knowledge_date_, "\n",
                    "Today Date: ", today_from_clock_ ? TodayAsLlamaWritesIt() : today_date_,
                    "\n\n", system, "<|eot_id|>");
  } else {
    out = bos_token_;  // Llama 3: the BOS before the first turn
  }
  for (const ChatMessage& m : messages) out += turn(m.role, m.content);
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

absl::StatusOr<std::string> ChatTemplate::RenderMistral(
    absl::Span<const ChatMessage> messages) const {
  // Mistral's templates ignore add_generation_prompt: a prompt ends with [/INST].
  const std::string* system = nullptr;
  size_t first = 0;
  if (messages[0].role == "system") {
    if (system_placement_ == SystemPlacement::kNone) {
      return absl::InvalidArgumentError(
          "messages[0].role: this model's chat template (Mistral) has no system message");
    }
    system = &messages[0].content;
    first = 1;
  }
  std::string out = bos_token_;
  const size_t last = messages.size() - 1;
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool user_expected = (i - first) % 2 == 0;
    if ((m.role == "user") != user_expected || m.role == "system") {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i,
                       "].role: after an optional system message, Mistral's chat template "
                       "needs roles alternating user/assistant/user/..., got '",
                       m.role, "'"));
    }
    if (m.role == "user") {
      const bool with_system =
          system != nullptr && ((system_placement_ == SystemPlacement::kFirstUser && i == first) ||
                                (system_placement_ == SystemPlacement::kLastUser && i == last));
      if (with_system) {
        absl::StrAppend(&out, inst_open_, *system, "\n\n", m.content, inst_close_);
      } else {
        absl::StrAppend(&out, inst_open_, m.content, inst_close_);
      }
    } else {
      absl::StrAppend(&out, assistant_prefix_, trim_assistant_ ? Trim(m.content) : m.content,
                      eos_token_, assistant_suffix_);
    }
  }
  return out;
}

}  // namespace ember::worker
