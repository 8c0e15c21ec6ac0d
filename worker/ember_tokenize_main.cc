// ember-tokenize: Ember's tokenizer alone, for scripts and the reference tests. Encodes
// text to ids, decodes ids to text (whole and streamed), or renders chat messages with the
// model's chat template, from a Hugging Face tokenizer.json (+ tokenizer_config.json).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "loader/cli_args.h"
#include "loader/json_strict.h"
#include "nlohmann/json.hpp"
#include "worker/chat_template.h"
#include "worker/tokenizer.h"

ABSL_FLAG(std::string, tokenizer, "", "Path to tokenizer.json (required)");
ABSL_FLAG(std::string, config, "", "Path to tokenizer_config.json (optional)");
ABSL_FLAG(bool, decode, false, "Decode: read a JSON list of ids, print the text");
ABSL_FLAG(bool, chat, false,
          "Render chat messages with the chat template of --config: read {\"messages\": "
          "[{\"role\": ..., \"content\": ...}], \"add_generation_prompt\": true}, print the "
          "prompt text and its ids");
ABSL_FLAG(bool, jsonl, false,
          "Read JSON lines: {\"text\": ...} to encode, or {\"ids\": [...]} with --decode; "
          "print one JSON object per line");
ABSL_FLAG(bool, add_special_tokens, false, "Encode: add the post-processor's special tokens");
ABSL_FLAG(bool, skip_special_tokens, false, "Decode: leave special tokens out");

namespace {

constexpr char kUsage[] =
    "ember-tokenize --tokenizer tokenizer.json [--config tokenizer_config.json] [flags] < input\n\n"
    "Encodes the text on standard input and prints its ids as a JSON list, or with --decode\n"
    "reads a JSON list of ids and prints the text. With --jsonl every input line is one\n"
    "request and every output line one JSON object: {\"ids\": [...]} for encoding,\n"
    "{\"text\": ..., \"stream\": [...]} for decoding (\"stream\": the deltas of Ember's\n"
    "streaming decoder, one per id, then the end), {\"text\": ..., \"ids\": [...]} for --chat;\n"
    "a failed line gives {\"error\": ...}.\n\n"
    "Exit status: 0 on success; 1 when loading or a request failed; 2 for bad usage.";

bool ReadFile(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream s;
  s << in.rdbuf();
  out = s.str();
  return true;
}

using ember::worker::ChatMessage;
using ember::worker::ChatTemplate;
using ember::worker::Tokenizer;
using nlohmann::json;

enum class Mode { kEncode, kDecode, kChat };

json Error(absl::string_view message) { return {{"error", std::string(message)}}; }

// `chat` is the model's template as recognized once, or why it was not.
json RenderChat(const Tokenizer& tokenizer, const absl::StatusOr<ChatTemplate>& chat,
                const json& request) {
  if (!chat.ok()) return Error(chat.status().message());
  if (!request.contains("messages") || !request["messages"].is_array()) {
    return Error("needs \"messages\"");
  }
  std::vector<ChatMessage> messages;
  for (const json& m : request["messages"]) {
    if (!m.is_object() || !m.value("role", json()).is_string() ||
        !m.value("content", json()).is_string()) {
      return Error("a message needs string \"role\" and \"content\"");
    }
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  bool add_generation_prompt = true;
  if (auto it = request.find("add_generation_prompt"); it != request.end()) {
    if (!it->is_boolean()) return Error("\"add_generation_prompt\" must be true or false");
    add_generation_prompt = it->get<bool>();
  }
  auto text = chat->Render(messages, add_generation_prompt);
  if (!text.ok()) return Error(text.status().message());
  auto ids = tokenizer.Encode(*text, /*add_special_tokens=*/false);
  if (!ids.ok()) return Error(ids.status().message());
  return {{"text", *text}, {"ids", *ids}};
}

// {"ids": [...]}: the text, and the deltas of the streaming decoder.
json Decode(const Tokenizer& tokenizer, const json& request) {
  if (!request.contains("ids") || !request["ids"].is_array()) return Error("needs \"ids\"");
  std::vector<int32_t> ids;
  for (const json& id : request["ids"]) {
    const bool fits = id.is_number_unsigned()
                          ? std::in_range<int32_t>(id.get<uint64_t>())
                          : id.is_number_integer() && std::in_range<int32_t>(id.get<int64_t>());
    if (!fits) return Error("\"ids\" must be a list of 32-bit integers");
    ids.push_back(id.get<int32_t>());
  }
  const bool skip = absl::GetFlag(FLAGS_skip_special_tokens);
  ember::worker::TokenStreamDecoder stream(tokenizer, skip);
  json deltas = json::array();
  for (int32_t id : ids) deltas.push_back(stream.Push(id));
  deltas.push_back(stream.Finish());
  return {{"text", tokenizer.Decode(ids, skip)}, {"stream", deltas}};
}

// One request: {"text": ...}, {"ids": [...]} or {"messages": [...]}; the answer as JSON.
json Answer(const Tokenizer& tokenizer, const absl::StatusOr<ChatTemplate>& chat,
            const json& request, Mode mode) {
  if (mode == Mode::kChat) return RenderChat(tokenizer, chat, request);
  if (mode == Mode::kDecode) return Decode(tokenizer, request);
  if (!request.contains("text") || !request["text"].is_string()) return Error("needs \"text\"");
  auto ids =
      tokenizer.Encode(request["text"].get<std::string>(), absl::GetFlag(FLAGS_add_special_tokens));
  if (!ids.ok()) return Error(ids.status().message());
  return {{"ids", *ids}};
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args = ember::ParseCli(argc, argv, kUsage, "ember_tokenize_main");
  if (args.size() != 1) {
    std::fprintf(stderr, "ember-tokenize: unexpected positional argument (see --help)\n");
    return 2;
  }
  std::string tokenizer_json, config_json;
  const std::string path = absl::GetFlag(FLAGS_tokenizer);
  if (path.empty() || !ReadFile(path, tokenizer_json)) {
    std::fprintf(stderr, "ember-tokenize: cannot read --tokenizer '%s' (see --help)\n",
                 path.c_str());
    return 2;
  }
  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (!config_path.empty() && !ReadFile(config_path, config_json)) {
    std::fprintf(stderr, "ember-tokenize: cannot read --config '%s'\n", config_path.c_str());
    return 2;
  }
  auto tokenizer = Tokenizer::Load(tokenizer_json, config_json);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "ember-tokenize: %s\n", std::string(tokenizer.status().message()).c_str());
    return 1;
  }
  if (absl::GetFlag(FLAGS_decode) && absl::GetFlag(FLAGS_chat)) {
    std::fprintf(stderr, "ember-tokenize: --decode and --chat exclude each other\n");
    return 2;
  }
  const Mode mode = absl::GetFlag(FLAGS_decode) ? Mode::kDecode
                    : absl::GetFlag(FLAGS_chat) ? Mode::kChat
                                                : Mode::kEncode;
  absl::StatusOr<ChatTemplate> chat = absl::FailedPreconditionError("not in --chat mode");
  if (mode == Mode::kChat) {
    chat = ChatTemplate::Recognize(tokenizer->chat_template(), tokenizer->bos_token(),
                                   tokenizer->eos_token());
  }
  const auto dump = [](const json& j) {
    return j.dump(-1, ' ', false, json::error_handler_t::strict);
  };
  if (absl::GetFlag(FLAGS_jsonl)) {
    int status = 0;
    for (std::string line; std::getline(std::cin, line);) {
      if (line.empty()) continue;
      auto request = ember::loader::ParseJsonStrict(line, "input line");
      json answer = request.ok() ? Answer(*tokenizer, chat, *request, mode)
                                 : Error(request.status().message());
      if (answer.contains("error")) status = 1;
      std::cout << dump(answer) << "\n";
    }
    return status;
  }
  std::ostringstream input;
  input << std::cin.rdbuf();
  json answer;
  if (mode == Mode::kEncode) {
    answer = Answer(*tokenizer, chat, {{"text", input.str()}}, mode);
  } else if (auto parsed = ember::loader::ParseJsonStrict(input.str(), "standard input");
             !parsed.ok()) {
    answer = Error(parsed.status().message());
  } else {  // --decode reads the list of ids alone
    answer =
        Answer(*tokenizer, chat, mode == Mode::kDecode ? json{{"ids", *parsed}} : *parsed, mode);
  }
  if (answer.contains("error")) {
    std::fprintf(stderr, "ember-tokenize: %s\n", answer["error"].get<std::string>().c_str());
    return 1;
  }
  if (mode == Mode::kDecode) {
    std::cout << answer["text"].get<std::string>();
  } else if (mode == Mode::kChat) {
    std::cout << dump(answer) << "\n";
  } else {
    std::cout << dump(answer["ids"]) << "\n";
  }
  return 0;
}
