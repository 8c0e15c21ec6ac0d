// The Jinja engine against Python's jinja2: every expected output below was rendered by
// jinja2 3.1 with transformers' environment (ImmutableSandboxedEnvironment, trim_blocks,
// lstrip_blocks, loopcontrols, its tojson), except where a comment says the engine differs.
#include <gtest/gtest.h>

#include <string>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"
#include "worker/tokenizer/jinja/template.h"

namespace ember::jinja {
namespace {

// Renders `source` with a context given as JSON; fails the test on any error.
std::string Render(std::string_view source, std::string_view context_json = "{}",
                   const Limits& limits = {}) {
  absl::StatusOr<Template> t = Template::Parse(source);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return "";
  absl::StatusOr<std::string> out =
      t->Render(FromJson(nlohmann::ordered_json::parse(context_json)), limits);
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? *out : "";
}

// The error of parsing, or else of rendering, `source`.
absl::Status Error(std::string_view source, std::string_view context_json = "{}",
                   const Limits& limits = {}) {
  absl::StatusOr<Template> t = Template::Parse(source);
  if (!t.ok()) return t.status();
  absl::StatusOr<std::string> out =
      t->Render(FromJson(nlohmann::ordered_json::parse(context_json)), limits);
  EXPECT_FALSE(out.ok()) << "rendered: " << *out;
  return out.status();
}

TEST(JinjaWhitespace, TrimBlocksAndLstripBlocksDropTagLines) {
  EXPECT_EQ(Render("a\n  {% if true %}\n  x\n  {% endif %}\n  b\n"), "a\n  x\n  b");
  EXPECT_EQ(Render("<ul>\n  {% for i in items %}\n    <li>{{ i }}</li>\n  {% endfor %}\n</ul>\n",
                   R"({"items": ["a", "b"]})"),
            "<ul>\n    <li>a</li>\n    <li>b</li>\n</ul>");
  // Variable tags are not blocks: neither stripped before nor trimmed after.
  EXPECT_EQ(Render("{{ 'a' }}\n{{ 'b' }}\n"), "a\nb");
  EXPECT_EQ(Render("  {# comment #}\nline\n{% raw %}\n{{ not evaluated }}{% endraw %}\nend"),
            "line\n\n{{ not evaluated }}end");
}

TEST(JinjaWhitespace, MinusStripsAndPlusKeeps) {
  EXPECT_EQ(Render("x  {%- if true -%}  \n  y  {%- endif %}\n\nz"), "xy\nz");
  EXPECT_EQ(Render("[  {{- 'a' -}}  ]  {{ 'b' }}  [  {#- c -#}  ]"), "[a]  b  []");
  EXPECT_EQ(Render("  {%+ if true %}kept indent{% endif +%}\nkept newline"),
            "  kept indent\nkept newline");
}

TEST(JinjaLoop, LoopVariables) {
  EXPECT_EQ(Render("{% for m in msgs %}{{ loop.index0 }}/{{ loop.index }}/{{ loop.revindex }}/"
                   "{{ loop.revindex0 }}/{{ loop.length }} {{ loop.first }} {{ loop.last }} "
                   "{{ loop.previtem is defined }} {{ loop.nextitem is defined }} "
                   "{{ loop.cycle('odd', 'even') }}\n{% endfor %}",
                   R"({"msgs": ["a", "b", "c"]})"),
            "0/1/3/2/3 True False False True odd\n1/2/2/1/3 False False True True even\n"
            "2/3/1/0/3 False True True False odd\n");
  EXPECT_EQ(
      Render("{% for m in msgs %}{{ loop.previtem }}>{{ m }}>{{ loop.nextitem }};{% endfor %}",
             R"({"msgs": ["a", "b", "c"]})"),
      ">a>b;a>b>c;b>c>;");
}

TEST(JinjaLoop, ElseAndFilterAndUnpacking) {
  EXPECT_EQ(
      Render("{% for x in [] %}item{% else %}no items{% endfor %} "
             "{% for x in [1, 2, 3, 4] if x is even %}{{ x }}:{{ loop.length }} {% endfor %}"),
      "no items 2:2 4:2 ");
  EXPECT_EQ(Render("{% for a, b in pairs %}{{ a }}={{ b }};{% endfor %} "
                   "{% for k, v in d.items() %}{{ k }}:{{ v }},{% endfor %}",
                   R"({"pairs": [[1, "x"], [2, "y"]], "d": {"z": 1, "a": 2}})"),
            "1=x;2=y; z:1,a:2,");
}

TEST(JinjaLoop, BreakAndContinue) {
  EXPECT_EQ(Render("{% for i in range(10) %}{% if i is odd %}{% continue %}{% endif %}"
                   "{% if i > 6 %}{% break %}{% endif %}{{ i }}{% endfor %}"),
            "0246");
}

TEST(JinjaScope, NamespaceCarriesStateOutOfLoops) {
  EXPECT_EQ(Render("{% set ns = namespace(last_user=-1, count=0) %}{% for m in messages %}"
                   "{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}"
                   "{% set ns.count = ns.count + 1 %}{% endif %}{% endfor %}"
                   "{{ ns.last_user }} {{ ns.count }}",
                   R"({"messages": [{"role": "user"}, {"role": "assistant"}, {"role": "user"},
                                    {"role": "assistant"}]})"),
            "2 2");
  // A plain set inside a loop is the iteration's own: it never reaches the next iteration
  // or the outside.
  EXPECT_EQ(Render("{% set x = 'outer' %}{% for i in [1, 2] %}{{ x }}{% set x = i %}{{ x }} "
                   "{% endfor %}{{ x }}"),
            "outer1 outer2 outer");
}

TEST(JinjaMacro, DefaultsKeywordsAndRecursion) {
  EXPECT_EQ(Render("{% macro tag(name, value='none', sep=': ') %}<{{ name }}{{ sep }}{{ value }}>"
                   "{% endmacro %}{{ tag('a') }}{{ tag('b', 2) }}{{ tag('c', sep='=', value=3) }}"),
            "<a: none><b: 2><c=3>");
  EXPECT_EQ(Render("{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}"
                   "{% endif %}{% endmacro %}{{ fact(5) }}"),
            "120");
}

TEST(JinjaExpression, SlicingAndIndexing) {
  EXPECT_EQ(Render("{{ xs[1:3] }} {{ xs[::-1] }} {{ xs[-2:] }} {{ xs[:-3] }} {{ xs[::2] }} "
                   "{{ xs[5:] }} {{ s[::-1] }} {{ s[1:-1] }} {{ xs[-1] }} {{ s[0] }}",
                   R"({"xs": [1, 2, 3, 4], "s": "héllo"})"),
            "[2, 3] [4, 3, 2, 1] [3, 4] [1] [1, 3] [] olléh éll 4 h");
}

TEST(JinjaExpression, PythonArithmeticAndPrinting) {
  EXPECT_EQ(Render("{{ 3.0 }} {{ 0.1 + 0.2 }} {{ 1e16 }} {{ 1e-05 }} {{ 7 / 2 }} {{ 7 // 2 }} "
                   "{{ -7 // 2 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 'ab' * 2 }} "
                   "{{ [1] + [2] }} {{ 1 ~ 'x' ~ none ~ true }} "
                   "{{ [1, 'a', none, 2.5, {'k': \"it's\"}] }} {{ (1,) }}"),
            "3.0 0.30000000000000004 1e+16 1e-05 3.5 3 -4 2 1024 0.5 abab [1, 2] 1xNoneTrue "
            "[1, 'a', None, 2.5, {'k': \"it's\"}] (1,)");
  EXPECT_EQ(Render("{% set a, b = 1, 2 %}{% set block %}\n  {{ a + b }}\n{% endset %}[{{ block }}] "
                   "{{ 'yes' if a < b else 'no' }} {{ dict(k=1, j='x') }} {{ range(3)|list }} "
                   "{{ range(1, 10, 4)|list }}"),
            "[  3\n] yes {'k': 1, 'j': 'x'} [0, 1, 2] [1, 5, 9]");
}

TEST(JinjaExpression, Tests) {
  EXPECT_EQ(
      Render("{{ 4 is divisibleby 2 }} {{ 3 is odd }} {{ 'x' is string }} {{ {} is mapping }} "
             "{{ [] is sequence }} {{ 1 is integer }} {{ 1.0 is float }} "
             "{{ true is boolean }} {{ none is none }} {{ 1 is number }} "
             "{{ 'a' is in 'abc' }} {{ 2 is eq 2 }} {{ false is false }}"),
      "True True True True True True True True True True True True True");
}

TEST(JinjaFilter, ToJson) {
  // Key order kept, non-ASCII kept, ints stay ints and floats print as Python does.
  EXPECT_EQ(Render("{{ data|tojson }}\n{{ data|tojson(indent=2) }}\n"
                   "{{ [1, 1.0, 1.5, 1e16, 'ü', none, true]|tojson }}",
                   R"({"data": {"z": [1, {"é": "ñ 😀"}], "a": {"b": 2.5}, "m": null}})"),
            "{\"z\": [1, {\"é\": \"ñ 😀\"}], \"a\": {\"b\": 2.5}, \"m\": null}\n"
            "{\n  \"z\": [\n    1,\n    {\n      \"é\": \"ñ 😀\"\n    }\n  ],\n"
            "  \"a\": {\n    \"b\": 2.5\n  },\n  \"m\": null\n}\n"
            "[1, 1.0, 1.5, 1e+16, \"ü\", null, true]");
  EXPECT_EQ(Render("{{ d|tojson(sort_keys=true) }} {{ d|tojson(separators=(',', ':')) }} "
                   "{{ 'é'|tojson(ensure_ascii=true) }} {{ 'a\"b\\\\c\\n'|tojson }}",
                   R"({"d": {"b": 1, "a": [true, false]}})"),
            "{\"a\": [true, false], \"b\": 1} {\"b\":1,\"a\":[true,false]} \"\\u00e9\" "
            "\"a\\\"b\\\\c\\n\"");
}

TEST(JinjaFilter, SelectattrMapJoin) {
  EXPECT_EQ(Render("{{ msgs|selectattr('role', 'equalto', 'user')|map(attribute='content')"
                   "|join(' | ') }}\n{{ msgs|rejectattr('tool_calls', 'defined')"
                   "|map(attribute='role')|list }}\n{{ msgs|selectattr('tool_calls')|list|length }}"
                   "\n{{ msgs|map(attribute='role')|unique|join(',') }}",
                   R"({"msgs": [{"role": "system", "content": "s"},
                                {"role": "user", "content": "u1"},
                                {"role": "assistant", "content": "a", "tool_calls": [{"name": "f"}]},
                                {"role": "user", "content": "u2"}]})"),
            "u1 | u2\n['system', 'user', 'user']\n1\nsystem,user,assistant");
}

TEST(JinjaFilter, CommonFilters) {
  EXPECT_EQ(Render("{{ missing|default('d') }} {{ ''|default('d') }} {{ ''|default('d', true) }} "
                   "{{ 'ab'|length }} {{ [3, 1, 2]|sort }} "
                   "{{ [{'n': 2}, {'n': 1}]|sort(attribute='n')|map(attribute='n')|list }} "
                   "{{ [3, 1, 2]|first }}{{ [3, 1, 2]|last }} {{ [1, 2, 3]|sum }} "
                   "{{ [1, 2, 3]|min }}{{ [1, 2, 3]|max }} {{ -2.5|abs }} {{ 2.5|round }} "
                   "{{ 2.567|round(2) }} {{ '42'|int + 1 }} {{ '1.5'|float }} {{ 'ab'|upper }} "
                   "{{ 'Hello World'|lower }} {{ 'hello world'|title }} {{ 'hello'|capitalize }} "
                   "{{ '  x '|trim }} {{ 'a b c'|wordcount }} {{ '<a & b>'|e }} "
                   "{{ [1, 2]|reverse|list }} {{ {'a': 1}|items|list }} {{ 'ab'|list }} "
                   "{{ 42|string ~ '!' }}"),
            "d  d 2 [1, 2, 3] [1, 2] 32 6 13 2.5 2.0 2.57 43 1.5 AB hello world Hello World Hello "
            "x 3 &lt;a &amp; b&gt; [2, 1] [('a', 1)] ['a', 'b'] 42!");
  EXPECT_EQ(Render("{{ 'line1\\nline2\\n\\nline4'|indent(2) }}|{{ 'a\\nb'|indent(2, first=true) }}|"
                   "{{ 'a\\n\\nb'|indent(1, blank=true) }}"),
            "line1\n  line2\n\n  line4|  a\n  b|a\n \n b");
}

TEST(JinjaMethod, StringMethods) {
  EXPECT_EQ(Render("[{{ '  x y  '.strip() }}][{{ '--x--'.strip('-') }}][{{ '  x'.lstrip() }}]"
                   "[{{ 'x  '.rstrip() }}]{{ ' a  b '.split() }}{{ 'a,b,,c'.split(',') }}"
                   "{{ 'a b c'.split(' ', 1) }} {{ 'abc'.startswith('ab') }} "
                   "{{ 'abc'.endswith(('x', 'c')) }} {{ 'hello world'.title() }} "
                   "{{ 'hELLO'.capitalize() }} {{ 'aXb'.upper() }}{{ 'aXb'.lower() }} "
                   "{{ 'a-b-c'.replace('-', '+') }} {{ 'banana'.find('n') }} "
                   "{{ 'banana'.count('a') }} {{ ', '.join(['x', 'y']) }}"),
            "[x y][x][x][x]['a', 'b']['a', 'b', '', 'c']['a', 'b c'] True True Hello World Hello "
            "AXBaxb a+b+c 2 3 x, y");
}

TEST(JinjaUndefined, MissingKeysAreUndefinedAndRenderEmpty) {
  EXPECT_EQ(Render("{{ m.name is defined }} {{ m['name'] is defined }} {{ m.role is defined }} "
                   "{{ nothing is defined }} {{ nothing is not defined }} [{{ nothing }}]"
                   "[{{ m.name }}] {{ nothing|length }} {% for x in nothing %}never{% endfor %}"
                   "{{ m.get('name', 'anon') }} {{ nothing is none }} {{ m.name|default('dflt') }}",
                   R"({"m": {"role": "user"}})"),
            "False False True False True [][] 0 anon False dflt");
  // Where the engine is more lenient than jinja2 (which fails on the first lookup): an
  // attribute or item of an undefined value is undefined.
  EXPECT_EQ(Render("[{{ nothing.deeper }}] {{ nothing['x'][0] is defined }}"), "[] False");
  EXPECT_EQ(Error("{{ nothing + 1 }}").message(), "'nothing' is undefined at line 1, column 12");
}

TEST(JinjaError, RaiseExceptionIsTheMessageExactly) {
  const absl::Status s = Error(
      "{{ messages[0]['content'] }}{% if messages[1].role != 'assistant' %}"
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
      "{% endif %}",
      R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "Conversation roles must alternate user/assistant/user/assistant/...");
}

TEST(JinjaError, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(Error("{{ messages[0] }}\n{% if x %}\n  {{ 1 + }}\n{% endif %}").message(),
            "unexpected '}}' at line 3, column 10");
  EXPECT_EQ(Error("Hello\n{% for m in messages %}\n  {{ m }}\n").message(),
            "'for' is never closed (expected 'endfor') at line 2, column 4");
  EXPECT_EQ(Error("{{ 'abc' ").message(), "unterminated variable tag at line 1, column 1");
}

TEST(JinjaError, UnsupportedStatementsAreRefusedAtParse) {
  const absl::StatusOr<Template> include =
      Template::Parse("line one\n\n    {% include 'header.jinja' %}");
  EXPECT_EQ(include.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(include.status().message(), "unsupported statement 'include' at line 3, column 8");
  EXPECT_EQ(Template::Parse("{% extends 'base.jinja' %}").status().message(),
            "unsupported statement 'extends' at line 1, column 4");
  EXPECT_EQ(Template::Parse("{% import 'macros.jinja' as m %}").status().message(),
            "unsupported statement 'import' at line 1, column 4");
}

TEST(JinjaError, TypeErrorsNameTheirPosition) {
  const absl::Status s = Error("{% for m in messages %}\n{{ m.content + 1 }}\n{% endfor %}",
                               R"({"messages": [{"content": "x"}]})");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "unsupported operand type(s) for +: 'str' and 'int' at line 2, column 14");
}

TEST(JinjaLimits, OutputLimit) {
  const absl::Status s = Error("{% for i in range(1000) %}0123456789{% endfor %}", "{}",
                               Limits{.max_output_bytes = 100});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("max_output_bytes (100)"), std::string_view::npos) << s;
  // Strings the template builds are bounded too, before they are allocated.
  EXPECT_EQ(Error("{% set s = 'x' * 1000000000000 %}").code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(JinjaLimits, StepLimitStopsRunawayLoops) {
  const absl::Status s =
      Error("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "{}", Limits{.max_steps = 1'000'000});
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "the template exceeded max_steps (1000000) at line 1, column 32");
}

TEST(JinjaLimits, DepthLimitStopsRunawayRecursion) {
  const absl::Status s = Error("{% macro r(n) %}{{ r(n + 1) }}{% endmacro %}{{ r(0) }}");
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "macro calls nested deeper than max_depth (64) at line 1, column 21");
}

TEST(JinjaLimits, DeepNestingIsRefusedAtParse) {
  // The evaluator recurses as deep as the syntax tree, so the parser bounds it.
  const std::string deep = "{{ " + std::string(300, '(') + "1" + std::string(300, ')') + " }}";
  EXPECT_EQ(Template::Parse(deep).status().code(), absl::StatusCode::kInvalidArgument);
  std::string chain = "{{ 1";
  for (int i = 0; i < 100000; ++i) chain += " + 1";
  const absl::Status s = Template::Parse(chain + " }}").status();
  EXPECT_EQ(s.message(), "expression nested too deeply at line 1, column 1024");
}

TEST(JinjaTemplate, CopiesShareTheParsedTemplate) {
  absl::StatusOr<Template> parsed = Template::Parse("{{ n }} {{ f }}");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  const Template copy = *parsed;  // FromJson keeps 2 an int and 2.0 a float
  EXPECT_EQ(*copy.Render(FromJson(nlohmann::ordered_json::parse(R"({"n": 2, "f": 2.0})"))),
            "2 2.0");
}

// A Qwen2.5-style ChatML template with tools: a default system message, tool calls written
// with tojson, consecutive tool responses grouped into one user turn.
constexpr char kQwenStyleTemplate[] = R"jinja({%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or messages[loop.index0 - 1].role != "tool" %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != "tool" %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
)jinja";

constexpr char kToolConversation[] = R"json({
  "messages": [
    {"role": "user", "content": "What's the weather in Paris and Zürich?"},
    {"role": "assistant", "content": "", "tool_calls": [
      {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}},
      {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": 2}}}]},
    {"role": "tool", "content": "{\"temp\": 21.5}"},
    {"role": "tool", "content": "{\"temp\": 18}"},
    {"role": "assistant", "content": "Paris: 21.5°C, Zürich: 18°C."},
    {"role": "user", "content": "Thanks!"}],
  "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
             "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                            "days": {"type": "integer"}}, "required": ["city"]}}}],
  "add_generation_prompt": true
})json";

TEST(JinjaTemplate, RendersQwenStyleChatWithTools) {
  EXPECT_EQ(
      Render(kQwenStyleTemplate, kToolConversation),
      "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
      "\n\n# Tools\n\n<tools>\n"
      "{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": "
      "\"Current weather\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": "
      "{\"type\": \"string\"}, \"days\": {\"type\": \"integer\"}}, \"required\": [\"city\"]}}}\n"
      "</tools><|im_end|>\n"
      "<|im_start|>user\nWhat's the weather in Paris and Zürich?<|im_end|>\n"
      "<|im_start|>assistant\n"
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 1}}"
      "\n</tool_call>\n"
      "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"days\": 2}}"
      "\n</tool_call><|im_end|>\n"
      "<|im_start|>user\n<tool_response>\n{\"temp\": 21.5}\n</tool_response>\n"
      "<tool_response>\n{\"temp\": 18}\n</tool_response><|im_end|>\n"
      "<|im_start|>assistant\nParis: 21.5°C, Zürich: 18°C.<|im_end|>\n"
      "<|im_start|>user\nThanks!<|im_end|>\n"
      "<|im_start|>assistant\n");
}

TEST(JinjaTemplate, RendersQwenStyleChatWithASystemMessage) {
  EXPECT_EQ(Render(kQwenStyleTemplate,
                   R"({"messages": [{"role": "system", "content": "You are terse."},
                                    {"role": "user", "content": "Hi"}],
                       "add_generation_prompt": false})"),
            "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

}  // namespace
}  // namespace ember::jinja

namespace ember::jinja {
namespace {

TEST(JinjaCorpusFeatures, DictsortFormatFalsySelectAndUnknownFiltersOnUntakenPaths) {
  // Expected output from Python's jinja2 with transformers' settings.
  EXPECT_EQ(Render("{% for k, v in d|dictsort %}{{k}}={{v}};{% endfor %}|"
                   "{{ (none|selectattr('a')|list)|length }}|{{ 'x{}y{}{n}'.format(1, 2, n='z') }}|"
                   "{% if false %}{{ x|nosuch }}{% endif %}ok",
                   R"({"d": {"b": 1, "A": 2, "c": 3}})"),
            "A=2;b=1;c=3;|0|x1y2z|ok");
  EXPECT_NE(Error("{{ x|nosuchfilter }}").message().find("no filter named 'nosuchfilter'"),
            std::string::npos);
}

TEST(JinjaCorpusFeatures, DictKeysAreAnyHashableScalarAsInPython) {
  // ByteDance Seed-OSS keys a lookup table by integers. 1, 1.0 and True are one key (the first
  // spelling stays); json.dumps sorts the keys themselves and then writes them as strings.
  EXPECT_EQ(Render("{% set d = {0: 'zero', 512: 'a', 1.0: 'one', true: 'T', 'k': 'v'} %}"
                   "{{ d[0] }}|{{ d[1] }}|{{ d[512] }}|{{ d|tojson }}|{{ d }}|"
                   "{% for k, v in {16: 1, 2: 2, 8: 3}|dictsort %}{{k}}:{{v}},{% endfor %}|"
                   "{{ 2 in {2: 0} }}|{{ {10: 1, 9: 2}|tojson(sort_keys=true) }}|"
                   "{{ {1: 'x'}.get(1) }}|{{ {none: 1}|tojson }}|{{ {0: 1}.keys()|list }}"),
            "zero|T|a|{\"0\": \"zero\", \"512\": \"a\", \"1.0\": \"T\", \"k\": \"v\"}|"
            "{0: 'zero', 512: 'a', 1.0: 'T', 'k': 'v'}|2:2,8:3,16:1,|True|{\"9\": 2, \"10\": 1}|"
            "x|{\"null\": 1}|[0]");
  EXPECT_NE(Error("{{ {[1]: 2} }}").message().find("unhashable type: 'list'"), std::string::npos);
  EXPECT_NE(Error("{{ {1: 2, 'a': 3}|tojson(sort_keys=true) }}")
                .message()
                .find("'<' not supported between instances of 'str' and 'int'"),
            std::string::npos);
}

TEST(JinjaCorpusFeatures, SafeAndEscapeGiveMarkupThatPlusEscapesAgainst) {
  // functionary-v3.1 writes `'<|python_tag|>'|safe + text`: jinja2's Markup escapes `text`.
  // `~` joins as plain text with autoescaping off, as transformers sets it.
  EXPECT_EQ(Render("{{ '<b>'|safe + '<i>' }}|{{ '<i>' + '&'|safe }}|{{ ('<b>'|safe ~ '<i>') + '<' }}|"
                   "{{ ('a'|safe + '<')|string + '>' }}|{{ '<'|e + '>' }}|{{ ('<'|e)|e }}|"
                   "{{ '<'|safe }}|{{ ('x'|safe + '\"').upper() + '\\'' }}"),
            "<b>&lt;i&gt;|&lt;i&gt;&|<b><i><|a&lt;&gt;|&lt;&gt;|&lt;|<|X&#34;&#39;");
}

}  // namespace
}  // namespace ember::jinja
