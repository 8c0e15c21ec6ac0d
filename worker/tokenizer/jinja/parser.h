// The syntax tree of a Jinja template and the parser that builds it from the lexer's tokens,
// following Jinja2's grammar and operator precedence. Every node carries its position, so the
// evaluator's errors can say where they happened.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/tokenizer/jinja/lexer.h"
#include "worker/tokenizer/jinja/value.h"

namespace ember::jinja {

// --- Expressions --------------------------------------------------------------------------
struct Expr;
using ExprPtr = std::unique_ptr<const Expr>;

struct Args {
  std::vector<ExprPtr> positional;
  std::vector<std::pair<std::string, ExprPtr>> keyword;
};

struct LiteralExpr {
  Value value;
};
struct NameExpr {
  std::string name;
};
struct ListExpr {  // [a, b] and (a, b)
  std::vector<ExprPtr> items;
  bool tuple;
};
struct DictExpr {
  std::vector<std::pair<ExprPtr, ExprPtr>> items;
};
struct AttributeExpr {  // object.name
  ExprPtr object;
  std::string name;
};
struct SubscriptExpr {  // object[index]
  ExprPtr object, index;
};
struct SliceExpr {  // object[start:stop:step]; omitted parts are null
  ExprPtr object, start, stop, step;
};
struct CallExpr {
  ExprPtr callee;
  Args args;
};
struct FilterExpr {  // operand|name(args)
  ExprPtr operand;
  std::string name;
  Args args;
};
struct TestExpr {  // operand is [not] name(args)
  ExprPtr operand;
  std::string name;
  Args args;
  bool negated;
};
struct UnaryExpr {
  enum class Op { kNot, kMinus, kPlus } op;
  ExprPtr operand;
};
struct BinaryExpr {
  BinaryOp op;
  ExprPtr left, right;
};
struct LogicalExpr {  // 'and' / 'or', which return an operand as Python does
  bool is_and;
  ExprPtr left, right;
};
struct ConditionalExpr {  // then if condition else otherwise; otherwise may be null
  ExprPtr then, condition, otherwise;
};

struct Expr {
  Position pos;
  std::variant<LiteralExpr, NameExpr, ListExpr, DictExpr, AttributeExpr, SubscriptExpr, SliceExpr,
               CallExpr, FilterExpr, TestExpr, UnaryExpr, BinaryExpr, LogicalExpr, ConditionalExpr>
      node;
};

// --- Statements ---------------------------------------------------------------------------
struct Stmt;
using Body = std::vector<Stmt>;

struct TextStmt {
  std::string text;
};
struct OutputStmt {  // {{ expr }}
  ExprPtr expr;
};
struct IfStmt {  // if/elif branches in order, then else
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body otherwise;
};
struct ForStmt {                     // for targets in iterable if filter ... else ... endfor
  std::vector<std::string> targets;  // more than one: each item is unpacked
  ExprPtr iterable, filter;          // filter may be null
  Body body, otherwise;
  bool uses_loop =
      false;  // whether the body may read `loop` (building it costs more than an iteration)
};
struct SetTarget {  // name, or name.attribute on a namespace
  std::string name, attribute;
};
struct SetStmt {  // set a, ns.b = value
  std::vector<SetTarget> targets;
  ExprPtr value;
};
struct SetBlockStmt {  // set name %}body{% endset
  std::string name;
  Body body;
};
struct MacroStmt {
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param; null where it has none
  Body body;
};
struct LoopControlStmt {
  bool is_break;
};

struct Stmt {
  Position pos;
  std::variant<TextStmt, OutputStmt, IfStmt, ForStmt, SetStmt, SetBlockStmt, MacroStmt,
               LoopControlStmt>
      node;
};

// The template's statements. Syntax errors and constructs outside the supported subset
// (include, extends, import, call, recursive loops, ...) are InvalidArgument errors that name
// the construct and its position.
absl::StatusOr<Body> Parse(std::string_view source);

}  // namespace ember::jinja
