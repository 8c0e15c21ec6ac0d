// Chat-template recognition and rendering: which templates are recognized, what is
// refused and how the errors read. (Agreement with transformers on the real templates:
// test_chat_template_reference.py.)
#include "worker/chat_template.h"

#include <gtest/gtest.h>

namespace ember::worker {
namespace {

constexpr char kQwen2[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
constexpr char kLlama3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
constexpr char kMistral[] =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant "
    "roles are supported!') }}{% endif %}{% endfor %}";

ChatTemplate Recognize(const char* source, std::string bos = "", std::string eos = "") {
  auto t = ChatTemplate::Recognize(source, std::move(bos), std::move(eos));
  EXPECT_TRUE(t.ok()) << t.status();
  return *std::move(t);
}

std::string Render(const ChatTemplate& t, std::vector<ChatMessage> messages,
                   bool generation = true) {
  auto text = t.Render(messages, generation);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

TEST(ChatTemplateTest, ChatMlAddsTheTemplatesDefaultSystemMessage) {
  ChatTemplate t = Recognize(kQwen2);
  EXPECT_EQ(t.family(), ChatTemplate::Family::kChatMl);
  EXPECT_EQ(Render(t, {{"user", "Hi"}}),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(Render(t, {{"system", "S"}, {"user", "Hi"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplateTest, Llama3WritesBosAndTrimsContent) {
  ChatTemplate t = Recognize(kLlama3, "<|begin_of_text|>", "<|eot_id|>");
  EXPECT_EQ(t.family(), ChatTemplate::Family::kLlama3);
  EXPECT_EQ(Render(t, {{"user", "  Hi \n"}}),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, MistralNeedsAlternatingRoles) {
  ChatTemplate t = Recognize(kMistral, "<s>", "</s>");
  EXPECT_EQ(t.family(), ChatTemplate::Family::kMistral);
  EXPECT_EQ(Render(t, {{"user", "a"}, {"assistant", "b"}, {"user", "c"}}),
            "<s>[INST] a [/INST]b</s>[INST] c [/INST]");
  auto twice = t.Render({{"user", "a"}, {"user", "b"}}, true);
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(twice.status().message().find("messages[1].role"), absl::string_view::npos);
  auto system = t.Render({{"system", "s"}, {"user", "b"}}, true);
  ASSERT_FALSE(system.ok());
  EXPECT_NE(system.status().message().find("messages[0].role"), absl::string_view::npos);
}

TEST(ChatTemplateTest, UnknownTemplatesAskForAPrompt) {
  for (const char* source :
       {"", "{% for m in messages %}{{ m.content }}{% endfor %}",
        "{{ '<think>' }}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{{ '<|im_start|>assistant\\n' }}"}) {
    auto t = ChatTemplate::Recognize(source, "", "");
    ASSERT_FALSE(t.ok()) << source;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_NE(t.status().message().find("send a text prompt"), absl::string_view::npos);
  }
}

TEST(ChatTemplateTest, RefusesUnknownRolesAndBadContentNamingTheMessage) {
  ChatTemplate t = Recognize(kQwen2);
  auto tool = t.Render({{"user", "a"}, {"tool", "b"}}, true);
  ASSERT_FALSE(tool.ok());
  EXPECT_NE(tool.status().message().find("messages[1].role"), absl::string_view::npos);
  auto bytes = t.Render({{"user", "ok\xFF"}}, true);
  ASSERT_FALSE(bytes.ok());
  EXPECT_NE(bytes.status().message().find("messages[0].content"), absl::string_view::npos);
  EXPECT_FALSE(t.Render({}, true).ok());
}

}  // namespace
}  // namespace ember::worker
