// ember-tokenize: Ember's tokenizer alone, for scripts and the reference tests. Encodes
// text to ids, decodes ids to text (whole and streamed), or renders chat messages with the
// model's chat template, from a Hugging Face tokenizer.json (+ tokenizer_config.json).
#include <cstdio>
#include <filesystem>
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
#include "worker/tokenizer/chat_template.h"
#include "worker/tokenizer/tokenizer.h"

ABSL_FLAG(std::string, tokenizer, "", "Path to tokenizer.json (required)");
ABSL_FLAG(std::string, config, "", "Path to tokenizer_config.json (optional)");
ABSL_FLAG(bool, decode, false, "Decode: read a JSON list of ids, print the text");
ABSL_FLAG(bool, chat, false,
          "Render a conversation with the model's chat template (--config's chat_template, or "
          "chat_template.jinja beside --tokenizer): read {\"messages\": [{\"role\": ..., "
          "\"content\": ...}], \"tools\": [...], \"add_generation_prompt\": true, other "
          "template variables...} and print the prompt text and its ids");
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

using ember::worker::ChatTemplate;
using ember::worker::Tokenizer;
using nlohmann::json;

enum class Mode { kEncode, kDecode, kChat };

json Error(absl::string_view message) { return {{"error", std::string(message)}}; }

// `chat` is the model's template as parsed once, or why it cannot be. `text` is one request:
// {"messages": [...], "tools": [...], "add_generation_prompt": ..., kwargs...}, read with its
// key order kept (tojson writes keys in the client's order, as transformers does).
json RenderChat(const Tokenizer& tokenizer, const absl::StatusOr<ChatTemplate>& chat,
                const std::string& text) {
  if (!chat.ok()) return Error(chat.status().message());
  nlohmann::ordered_json request = nlohmann::ordered_json::parse(text, nullptr, false);
  if (request.is_discarded() || !request.is_object()) {
    return Error("a chat request must be a JSON object");
  }
  if (!request.contains("add_generation_prompt")) request["add_generation_prompt"] = true;
  auto rendered = chat->Render(request);
  if (!rendered.ok()) return Error(rendered.status().message());
  auto ids = tokenizer.Encode(*rendered, /*add_special_tokens=*/false);
  if (!ids.ok()) return Error(ids.status().message());
  return {{"text", *rendered}, {"ids", *ids}};
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

// One request: {"text": ...} or {"ids": [...]}; the answer as JSON.
json Answer(const Tokenizer& tokenizer, const json& request, Mode mode) {
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
  // chat_template.jinja beside tokenizer.json wins over the config's, as in transformers.
  std::string template_file;
  ReadFile((std::filesystem::path(path).parent_path() / "chat_template.jinja").string(),
           template_file);
  auto tokenizer = Tokenizer::Load(tokenizer_json, config_json, template_file);
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
    chat = ChatTemplate::Load(tokenizer->chat_template(), tokenizer->template_tokens());
  }
  const auto dump = [](const json& j) {
    return j.dump(-1, ' ', false, json::error_handler_t::strict);
  };
  if (absl::GetFlag(FLAGS_jsonl)) {
    int status = 0;
    for (std::string line; std::getline(std::cin, line);) {
      if (line.empty()) continue;
      json answer;
      if (mode == Mode::kChat) {
        answer = RenderChat(*tokenizer, chat, line);
      } else {
        auto request = ember::loader::ParseJsonStrict(line, "input line");
        answer = request.ok() ? Answer(*tokenizer, *request, mode) : Error(request.status().message());
      }
      if (answer.contains("error")) status = 1;
      std::cout << dump(answer) << "\n";
    }
    return status;
  }
  std::ostringstream input;
  input << std::cin.rdbuf();
  json answer;
  if (mode == Mode::kEncode) {
    answer = Answer(*tokenizer, {{"text", input.str()}}, mode);
  } else if (mode == Mode::kChat) {
    answer = RenderChat(*tokenizer, chat, input.str());
  } else if (auto parsed = ember::loader::ParseJsonStrict(input.str(), "standard input");
             !parsed.ok()) {
    answer = Error(parsed.status().message());
  } else {  // --decode reads the list of ids alone
    answer = Answer(*tokenizer, {{"ids", *parsed}}, mode);
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
