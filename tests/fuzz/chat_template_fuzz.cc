// libFuzzer target: any text given as a chat template either fails to parse with an error
// or renders (a small conversation) within the limits: no crash, no hang, no unbounded output.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "nlohmann/json.hpp"
#include "worker/tokenizer/jinja/template.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source(reinterpret_cast<const char*>(data), size);
  auto parsed = ember::jinja::Template::Parse(source);
  if (!parsed.ok()) return 0;
  static const ember::jinja::Value context = ember::jinja::FromJson(nlohmann::ordered_json::parse(
      R"({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"},
          {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
           "function": {"name": "f", "arguments": {"a": 1}}}]}],
          "tools": [{"type": "function", "function": {"name": "f"}}], "documents": null,
          "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>"})"));
  ember::jinja::Limits limits;
  limits.max_output_bytes = 1 << 16;
  limits.max_steps = 200000;
  auto text = parsed->Render(context, limits);
  if (text.ok() && text->size() > limits.max_output_bytes) std::abort();
  return 0;
}
