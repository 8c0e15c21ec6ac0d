#include "worker/serve/request_builder.h"

#include <cmath>
#include <limits>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "ember/v1/request_reader.h"
#include "loader/status_macros.h"

namespace ember::worker {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

absl::Status NeedsTokenizer(absl::string_view field) {
  return absl::FailedPreconditionError(absl::StrCat(
      field, ": this model has no tokenizer.json, so it takes token ids only (send token_ids)"));
}

absl::Status CheckIds(absl::string_view field, const google::protobuf::RepeatedField<int32_t>& ids,
                      int32_t vocab) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return Invalid(absl::StrCat(field, "[", i, "]"),
                     absl::StrCat(ids[i], " is not a token id (the vocabulary has ", vocab,
                                  " tokens: 0 to ", vocab - 1, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view field, const std::string& text,
                                            bool add_special, const ModelLimits& model) {
  if (model.tokenizer == nullptr) return NeedsTokenizer(field);
  auto ids = model.tokenizer->Encode(text, add_special);
  if (!ids.ok()) return Invalid(field, ids.status().message());
  return ids;
}

// JSON text from a request field; `object_only`: it must be a JSON object.
absl::StatusOr<nlohmann::ordered_json> ParseField(absl::string_view field, const std::string& text,
                                                  bool object_only) {
  nlohmann::ordered_json value = nlohmann::ordered_json::parse(text, nullptr, false);
  if (value.is_discarded()) return Invalid(field, "not valid JSON");
  if (object_only && !value.is_object()) return Invalid(field, "must be a JSON object");
  return value;
}

// The conversation as transformers' apply_chat_template takes it: message dicts with the
// fields that are set, tool calls as {"id", "type", "function": {"name", "arguments"}}, tools
// and documents as lists of objects, template keyword arguments at the top level.
absl::StatusOr<nlohmann::ordered_json> ChatRequestJson(const v1::ChatMessages& chat) {
  using json = nlohmann::ordered_json;
  json messages = json::array();
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    const std::string field = absl::StrCat("chat.messages[", i, "]");
    if (m.role().empty()) return Invalid(absl::StrCat(field, ".role"), "empty");
    json message = {{"role", m.role()}, {"content", m.content()}};
    if (m.tool_calls_size() > 0) {
      json calls = json::array();
      for (int j = 0; j < m.tool_calls_size(); ++j) {
        const v1::ToolCall& call = m.tool_calls(j);
        const std::string call_field = absl::StrCat(field, ".tool_calls[", j, "]");
        if (call.name().empty()) return Invalid(absl::StrCat(call_field, ".name"), "empty");
        json arguments = json::object();
        if (!call.arguments_json().empty()) {
          EMBER_ASSIGN_OR_RETURN(arguments,
                                 ParseField(absl::StrCat(call_field, ".arguments_json"),
                                            call.arguments_json(), /*object_only=*/true));
        }
        json entry = json::object();
        if (!call.id().empty()) entry["id"] = call.id();
        entry["type"] = "function";
        entry["function"] = {{"name", call.name()}, {"arguments", std::move(arguments)}};
        calls.push_back(std::move(entry));
      }
      message["tool_calls"] = std::move(calls);
    }
    if (!m.tool_call_id().empty()) message["tool_call_id"] = m.tool_call_id();
    if (!m.name().empty()) message["name"] = m.name();
    if (m.has_reasoning_content()) message["reasoning_content"] = m.reasoning_content();
    messages.push_back(std::move(message));
  }
  json request = json::object();
  if (!chat.template_kwargs_json().empty()) {
    EMBER_ASSIGN_OR_RETURN(request, ParseField("chat.template_kwargs_json",
                                               chat.template_kwargs_json(), /*object_only=*/true));
    for (const char* reserved : {"messages", "tools", "documents", "add_generation_prompt"}) {
      if (request.contains(reserved)) {
        return Invalid("chat.template_kwargs_json",
                       absl::StrCat("'", reserved, "' has a field of its own in ChatMessages"));
      }
    }
  }
  request["messages"] = std::move(messages);
  // [[field, JSON texts] -> list of objects]; absent stays None for the template.
  const auto list = [&](const char* name, const auto& texts) -> absl::Status {
    if (texts.empty()) return absl::OkStatus();
    json items = json::array();
    for (int i = 0; i < texts.size(); ++i) {
      auto item = ParseField(absl::StrCat("chat.", name, "_json[", i, "]"), texts[i],
                             /*object_only=*/true);
      if (!item.ok()) return item.status();
      items.push_back(*std::move(item));
    }
    request[name] = std::move(items);
    return absl::OkStatus();
  };
  EMBER_RETURN_IF_ERROR(list("tools", chat.tools_json()));
  EMBER_RETURN_IF_ERROR(list("documents", chat.documents_json()));
  request["add_generation_prompt"] =
      chat.has_add_generation_prompt() ? chat.add_generation_prompt() : true;
  return request;
}

absl::StatusOr<std::vector<int32_t>> ChatIds(const v1::ChatMessages& chat,
                                             const ModelLimits& model) {
  if (model.tokenizer == nullptr) return NeedsTokenizer("chat");
  if (model.chat_template == nullptr) {
    // FAILED_PRECONDITION where the model has no template, INVALID_ARGUMENT where its template
    // is one Ember cannot parse (ChatTemplate::Load).
    return absl::Status(model.chat_template_error.code(),
                        absl::StrCat("chat: ", model.chat_template_error.message()));
  }
  if (chat.messages().empty()) return Invalid("chat.messages", "empty");
  auto request = ChatRequestJson(chat);
  if (!request.ok()) return request.status();
  auto text = model.chat_template->Render(*request);
  if (!text.ok()) {
    // The template's own refusal (raise_exception) or a limit, with the template's words.
    if (absl::IsResourceExhausted(text.status())) return text.status();
    return Invalid("chat", text.status().message());
  }
  // The rendered text carries BOS where the template writes it (as transformers'
  // apply_chat_template, which encodes without special tokens).
  return Encode("chat", *text, /*add_special=*/false, model);
}

// Beyond this every token is equally likely and the sampler's exp() underflows the
// distinction anyway; docs/api.md promises it as the limit.
constexpr float kMaxTemperature = 1e6f;

absl::Status CheckFinite(absl::string_view field, float v, float lo, float hi,
                         absl::string_view range) {
  if (!std::isfinite(v) || v < lo || v > hi) {
    return Invalid(field, absl::StrFormat("must be %s, got %g", range, v));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::GenerateRequest& request,
                                               const ModelLimits& model) {
  std::vector<int32_t> ids;
  switch (request.input_case()) {
    case v1::GenerateRequest::kPrompt: {
      if (request.prompt().empty()) return Invalid("prompt", "empty");
      EMBER_ASSIGN_OR_RETURN(ids, Encode("prompt", request.prompt(), true, model));
      if (ids.empty()) return Invalid("prompt", "encodes to no tokens");
      break;
    }
    case v1::GenerateRequest::kTokenIds:
      if (request.token_ids().ids().empty()) return Invalid("token_ids.ids", "empty");
      EMBER_RETURN_IF_ERROR(CheckIds("token_ids.ids", request.token_ids().ids(), model.vocab_size));
      ids.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      break;
    case v1::GenerateRequest::kChat:
      EMBER_ASSIGN_OR_RETURN(ids, ChatIds(request.chat(), model));
      break;
    default:
      return Invalid("input", "missing: set one of prompt, token_ids or chat");
  }
  return ids;
}

absl::StatusOr<GenerationRequest> BuildGenerationRequest(const v1::GenerateRequest& request,
                                                         const ModelLimits& model) {
  if (auto problem = v1::Utf8Problem(request); problem.has_value()) {
    return absl::InvalidArgumentError(*problem);
  }
  GenerationRequest out;
  if (request.request_id().size() > kMaxRequestIdBytes) {
    return Invalid("request_id", absl::StrCat("longer than ", kMaxRequestIdBytes, " bytes"));
  }
  absl::BitGen gen;
  out.id = request.request_id().empty()
               ? absl::StrFormat("req-%016x", absl::Uniform<uint64_t>(gen))
               : request.request_id();

  EMBER_ASSIGN_OR_RETURN(out.prompt, PromptIds(request, model));
  const int prompt_len = static_cast<int>(out.prompt.size());

  // Sampling.
  const v1::SamplingParams& s = request.sampling();
  GenerationParams& p = out.params;
  EMBER_RETURN_IF_ERROR(CheckFinite("sampling.temperature", s.temperature(), 0, kMaxTemperature,
                                    "in [0, 1e6]"));
  p.sampling.temperature = s.temperature();
  if (s.top_k() < 0) return Invalid("sampling.top_k", absl::StrCat("must be >= 0, got ", s.top_k()));
  p.sampling.top_k = s.top_k();
  if (s.has_top_p()) {
    if (!(s.top_p() > 0 && s.top_p() <= 1)) {
      return Invalid("sampling.top_p", absl::StrFormat("must be in (0, 1], got %g", s.top_p()));
    }
    p.sampling.top_p = s.top_p();
  }
  EMBER_RETURN_IF_ERROR(CheckFinite("sampling.min_p", s.min_p(), 0, 1, "in [0, 1]"));
  p.sampling.min_p = s.min_p();
  if (s.has_repetition_penalty()) {
    if (!std::isfinite(s.repetition_penalty()) || s.repetition_penalty() <= 0) {
      return Invalid("sampling.repetition_penalty",
                     absl::StrFormat("must be a finite number > 0, got %g", s.repetition_penalty()));
    }
    p.repetition_penalty = s.repetition_penalty();
  }
  EMBER_RETURN_IF_ERROR(CheckFinite("sampling.frequency_penalty", s.frequency_penalty(), -2, 2,
                                    "in [-2, 2]"));
  EMBER_RETURN_IF_ERROR(CheckFinite("sampling.presence_penalty", s.presence_penalty(), -2, 2,
                                    "in [-2, 2]"));
  p.frequency_penalty = s.frequency_penalty();
  p.presence_penalty = s.presence_penalty();
  p.sampling.seed = s.has_seed() ? s.seed() : absl::Uniform<uint64_t>(gen);

  // Stopping.
  const v1::StoppingCriteria& st = request.stopping();
  if (prompt_len >= model.max_context) {
    return Invalid("prompt", absl::StrCat(prompt_len, " tokens leave no room to generate in the "
                                          "model's context length of ", model.max_context));
  }
  if (st.has_max_tokens()) {
    if (st.max_tokens() < 1) {
      return Invalid("stopping.max_tokens", absl::StrCat("must be >= 1, got ", st.max_tokens()));
    }
    if (static_cast<int64_t>(prompt_len) + st.max_tokens() > model.max_context) {
      return Invalid("stopping.max_tokens",
                     absl::StrCat("prompt (", prompt_len, " tokens) + max_tokens (", st.max_tokens(),
                                  ") exceeds the model's context length of ", model.max_context));
    }
    p.max_tokens = st.max_tokens();
  } else {
    p.max_tokens = model.max_context - prompt_len;
    p.max_tokens_is_context = true;
  }
  if (st.min_tokens() < 0 || st.min_tokens() > p.max_tokens) {
    return Invalid("stopping.min_tokens",
                   absl::StrCat("must be in [0, max_tokens = ", p.max_tokens, "], got ",
                                st.min_tokens()));
  }
  p.min_tokens = st.min_tokens();
  if (st.stop_size() > kMaxStopStrings) {
    return Invalid("stopping.stop", absl::StrCat(st.stop_size(), " strings; at most ",
                                                 kMaxStopStrings));
  }
  for (int i = 0; i < st.stop_size(); ++i) {
    const std::string field = absl::StrCat("stopping.stop[", i, "]");
    if (model.tokenizer == nullptr) return NeedsTokenizer(field);
    if (st.stop(i).empty()) return Invalid(field, "empty");
    if (st.stop(i).size() > kMaxStopBytes) {
      return Invalid(field, absl::StrCat("longer than ", kMaxStopBytes, " bytes"));
    }
    p.stop.push_back(st.stop(i));
  }
  EMBER_RETURN_IF_ERROR(CheckIds("stopping.stop_token_ids", st.stop_token_ids(), model.vocab_size));
  p.stop_token_ids.assign(st.stop_token_ids().begin(), st.stop_token_ids().end());
  p.ignore_eos = st.ignore_eos();

  if (request.top_logprobs() < 0 || request.top_logprobs() > kMaxTopLogprobs) {
    return Invalid("top_logprobs", absl::StrCat("must be in [0, ", kMaxTopLogprobs, "], got ",
                                                request.top_logprobs()));
  }
  p.top_logprobs = request.top_logprobs();
  p.stream_text = request.has_stream_text() ? request.stream_text() : true;
  if (p.stream_text && model.tokenizer == nullptr) p.stream_text = false;  // ids only
  return out;
}

absl::StatusOr<std::vector<int32_t>> TokenizeIds(const v1::TokenizeRequest& request,
                                                 const ModelLimits& model) {
  if (auto problem = v1::Utf8Problem(request); problem.has_value()) {
    return absl::InvalidArgumentError(*problem);
  }
  const bool add_special = request.has_add_special_tokens() ? request.add_special_tokens() : true;
  switch (request.input_case()) {
    case v1::TokenizeRequest::kText:
      return Encode("text", request.text(), add_special, model);
    case v1::TokenizeRequest::kChat:
      return ChatIds(request.chat(), model);
    default:
      return Invalid("input", "missing: set one of text or chat");
  }
}

}  // namespace ember::worker
