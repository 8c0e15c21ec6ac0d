// The chat-template adapter: what a template sees (special tokens, tools and documents as
// None, keyword arguments), how its refusals and the engine's errors read. (The Jinja engine
// itself: jinja_test.cc; agreement with transformers on real templates:
// test_chat_template_reference.py.)
#include "worker/tokenizer/chat_template.h"

#include <gtest/gtest.h>

namespace ember::worker {
namespace {

using json = nlohmann::ordered_json;

constexpr char kQwen2[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
constexpr char kMistral[] =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% endif %}{% endfor %}";

ChatTemplate Load(const char* source, json tokens = json::object()) {
  auto t = ChatTemplate::Load(source, std::move(tokens));
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

json Messages(std::initializer_list<std::pair<const char*, const char*>> turns) {
  json messages = json::array();
  for (const auto& [role, content] : turns) messages.push_back({{"role", role}, {"content", content}});
  return messages;
}

TEST(ChatTemplateTest, RendersWithTheGenerationPromptOnlyWhenAsked) {
  const ChatTemplate t = Load(kQwen2);
  auto with = t.Render({{"messages", Messages({{"user", "Hi"}})}, {"add_generation_prompt", true}});
  ASSERT_TRUE(with.ok()) << with.status();
  EXPECT_EQ(*with,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  auto without = t.Render({{"messages", Messages({{"system", "S"}, {"user", "Hi"}})}});
  ASSERT_TRUE(without.ok()) << without.status();
  EXPECT_EQ(*without, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n")
      << "transformers' default: no generation prompt";
}

TEST(ChatTemplateTest, SpecialTokensToolsAndKeywordArgumentsReachTheTemplate) {
  const ChatTemplate t = Load(
      "{{ bos_token }}|{{ tools is none }}|{{ documents is none }}|{{ enable_thinking }}|"
      "{% if tools %}{{ tools[0] | tojson }}{% endif %}|{{ eos_token }}",
      {{"bos_token", "<s>"}, {"eos_token", "</s>"}});
  auto plain = t.Render({{"messages", json::array()}, {"enable_thinking", false}});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(*plain, "<s>|True|True|False||</s>");
  json tool = json::parse(R"({"type": "function", "function": {"name": "f", "parameters": {"b": 1, "a": 2.5}}})");
  auto with_tools = t.Render({{"messages", json::array()}, {"tools", json::array({tool})}});
  ASSERT_TRUE(with_tools.ok()) << with_tools.status();
  EXPECT_EQ(*with_tools,
            "<s>|False|True||{\"type\": \"function\", \"function\": {\"name\": \"f\", "
            "\"parameters\": {\"b\": 1, \"a\": 2.5}}}|</s>")
      << "tojson keeps the client's key order and integers";
}

TEST(ChatTemplateTest, TheTemplatesOwnRefusalIsInvalidArgumentWithItsMessage) {
  const ChatTemplate t = Load(kMistral, {{"bos_token", "<s>"}, {"eos_token", "</s>"}});
  auto ok = t.Render({{"messages", Messages({{"user", "a"}, {"assistant", "b"}, {"user", "c"}})}});
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, "<s>[INST] a [/INST]b</s>[INST] c [/INST]");
  auto refused = t.Render({{"messages", Messages({{"user", "a"}, {"user", "b"}})}});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find(
                "Conversation roles must alternate user/assistant/user/assistant/..."),
            std::string::npos)
      << refused.status();
}

TEST(ChatTemplateTest, ATemplateTheEngineCannotParseIsRefusedAtLoadNamingTheConstruct) {
  auto t = ChatTemplate::Load("{% for m in messages %}\n  {% include 'x.jinja' %}{% endfor %}",
                              json::object());
  ASSERT_FALSE(t.ok());
  const std::string message(t.status().message());
  EXPECT_NE(message.find("include"), std::string::npos) << message;
  EXPECT_NE(message.find("line 2"), std::string::npos) << message;
  EXPECT_NE(message.find("send a text prompt"), std::string::npos) << message;
}

TEST(ChatTemplateTest, NoTemplateMeansNoChat) {
  auto t = ChatTemplate::Load("", json::object());
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(t.status().message().find("no chat template"), std::string::npos);
}

TEST(ChatTemplateTest, ARunawayTemplateIsStoppedByALimit) {
  const ChatTemplate t = Load(
      "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}");
  auto text = t.Render({{"messages", json::array()}});
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kResourceExhausted) << text.status();
}

}  // namespace
}  // namespace ember::worker
