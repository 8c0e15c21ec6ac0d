// A recursive-descent parser for the subset of Jinja2 that chat templates use, following
// jinja2/parser.py: its precedence (or < and < not < comparisons < + - < ~ < * / // % < ** <
// unary < postfix and filters) and its quirks ('**' is left-associative, filters bind tighter
// than unary minus's operand but after it: -x|abs is (-x)|abs).
#include "worker/tokenizer/jinja/parser.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "loader/status_macros.h"

namespace ember::jinja {
namespace {

// Nesting of statements and of expressions that the parser recurses into; deeper templates are
// refused rather than risking the stack.
constexpr int kMaxNesting = 256;

// Statements Jinja2 has that this engine does not: a template using them is refused at parse
// time rather than rendered differently.
constexpr std::string_view kUnsupportedStatements[] = {
    "include", "extends", "import",     "from", "block", "call",
    "filter",  "with",    "autoescape", "do",   "trans", "pluralize"};
constexpr std::string_view kEndTags[] = {"elif",   "else",     "endif",         "endfor",
                                         "endset", "endmacro", "endgeneration", "endraw"};

template <typename Node>
ExprPtr MakeExpr(Position pos, Node node) {
  return std::make_unique<const Expr>(Expr{pos, std::move(node)});
}

bool Contains(const std::vector<std::string_view>& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string Describe(const Token& t) {
  switch (t.kind) {
    case TokenKind::kName:
      return absl::StrCat("'", t.text, "'");
    case TokenKind::kOperator:
      return absl::StrCat("'", t.text, "'");
    case TokenKind::kString:
      return "a string";
    case TokenKind::kInteger:
    case TokenKind::kFloat:
      return "a number";
    case TokenKind::kBlockEnd:
      return "'%}'";
    case TokenKind::kVariableEnd:
      return "'}}'";
    case TokenKind::kEnd:
      return "the end of the template";
    default:
      return "a tag";
  }
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  absl::StatusOr<Body> Run() {
    Body body;
    EMBER_RETURN_IF_ERROR(ParseBody({}, nullptr, body));
    return body;
  }

 private:
  // Counts levels of nesting for as long as it lives: `levels` at once, then one per Deeper()
  // (each operator of a chain like a + b + c nests the left side one level deeper, and the
  // evaluator recurses as deep as the tree).
  class Nested {
   public:
    explicit Nested(int& depth, int levels = 1) : depth_(depth), levels_(levels) {
      depth_ += levels;
    }
    ~Nested() { depth_ -= levels_; }
    bool too_deep() const { return depth_ > kMaxNesting; }
    bool Deeper() {
      ++levels_;
      return ++depth_ <= kMaxNesting;
    }

   private:
    int& depth_;
    int levels_;
  };

  absl::Status TooDeep() const { return Error(Peek(), "expression nested too deeply"); }

  const Token& Peek(size_t ahead = 0) const {
    return tokens_[std::min(next_ + ahead, tokens_.size() - 1)];
  }
  const Token& Next() { return tokens_[next_ < tokens_.size() - 1 ? next_++ : next_]; }
  bool IsOp(std::string_view op, size_t ahead = 0) const {
    return Peek(ahead).kind == TokenKind::kOperator && Peek(ahead).text == op;
  }
  bool IsName(std::string_view name, size_t ahead = 0) const {
    return Peek(ahead).kind == TokenKind::kName && Peek(ahead).text == name;
  }
  bool SkipOp(std::string_view op) { return IsOp(op) && (Next(), true); }
  bool SkipName(std::string_view name) { return IsName(name) && (Next(), true); }

  static absl::Status Error(const Token& at, std::string_view what) {
    return absl::InvalidArgumentError(absl::StrFormat("%s at %s", what, FormatPosition(at.pos)));
  }
  absl::Status Expected(std::string_view what) const {
    return Error(Peek(), absl::StrFormat("expected %s, found %s", what, Describe(Peek())));
  }
  absl::Status ExpectOp(std::string_view op) {
    return SkipOp(op) ? absl::OkStatus() : Expected(absl::StrFormat("'%s'", op));
  }
  absl::Status ExpectBlockEnd() {
    if (Peek().kind != TokenKind::kBlockEnd) return Expected("'%}'");
    Next();
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> ExpectName(std::string_view what) {
    if (Peek().kind != TokenKind::kName) return Expected(what);
    return Next().text;
  }

  // --- Statements ---

  // Appends statements to `body` until a block tag named in `ends` (left with only its `{%`
  // consumed) or, when `ends` is empty, the end of the template. `opener` is the tag being
  // closed, for the error when its end never comes.
  absl::Status ParseBody(std::vector<std::string_view> ends, const Token* opener, Body& body) {
    while (true) {
      const Token& t = Next();
      switch (t.kind) {
        case TokenKind::kText:
          body.push_back(Stmt{t.pos, TextStmt{t.text}});
          break;
        case TokenKind::kVariableBegin: {
          ExprPtr expr;
          EMBER_ASSIGN_OR_RETURN(expr, ParseTuple(/*conditional=*/true));
          if (Peek().kind != TokenKind::kVariableEnd) return Expected("'}}'");
          Next();
          body.push_back(Stmt{t.pos, OutputStmt{std::move(expr)}});
          break;
        }
        case TokenKind::kBlockBegin:
          if (Peek().kind == TokenKind::kName && Contains(ends, Peek().text)) {
            return absl::OkStatus();
          }
          EMBER_RETURN_IF_ERROR(ParseStatement(body));
          break;
        default:  // kEnd
          if (ends.empty()) return absl::OkStatus();
          return Error(*opener, absl::StrFormat("'%s' is never closed (expected '%s')",
                                                opener->text, ends.back()));
      }
    }
  }

  absl::Status ParseStatement(Body& body) {
    const Token& name = Next();
    if (name.kind != TokenKind::kName) return Error(name, "expected a statement name");
    Nested nested(depth_);
    if (nested.too_deep()) return Error(name, "template nested too deeply");
    const std::string_view n = name.text;
    if (n == "if") return ParseIf(name, body);
    if (n == "for") return ParseFor(name, body);
    if (n == "set") return ParseSet(name, body);
    if (n == "macro") return ParseMacro(name, body);
    if (n == "break" || n == "continue") {
      if (loop_depth_ == 0) return Error(name, absl::StrFormat("'%s' outside of a loop", n));
      body.push_back(Stmt{name.pos, LoopControlStmt{n == "break"}});
      return ExpectBlockEnd();
    }
    if (n == "generation") {  // transformers' marker for assistant text; renders its body
      EMBER_RETURN_IF_ERROR(ExpectBlockEnd());
      EMBER_RETURN_IF_ERROR(ParseBody({"endgeneration"}, &name, body));
      Next();
      return ExpectBlockEnd();
    }
    if (std::find(std::begin(kUnsupportedStatements), std::end(kUnsupportedStatements), n) !=
        std::end(kUnsupportedStatements)) {
      return Error(name, absl::StrFormat("unsupported statement '%s'", n));
    }
    if (std::find(std::begin(kEndTags), std::end(kEndTags), n) != std::end(kEndTags)) {
      return Error(name, absl::StrFormat("unexpected '%s'", n));
    }
    return Error(name, absl::StrFormat("unknown statement '%s'", n));
  }

  absl::Status ParseIf(const Token& opener, Body& body) {
    IfStmt node;
    while (true) {
      ExprPtr condition;
      EMBER_ASSIGN_OR_RETURN(condition, ParseTuple(/*conditional=*/false));
      EMBER_RETURN_IF_ERROR(ExpectBlockEnd());
      Body branch;
      EMBER_RETURN_IF_ERROR(ParseBody({"elif", "else", "endif"}, &opener, branch));
      node.branches.emplace_back(std::move(condition), std::move(branch));
      const std::string end = Next().text;
      if (end == "elif") continue;
      if (end == "else") {
        EMBER_RETURN_IF_ERROR(ExpectBlockEnd());
        EMBER_RETURN_IF_ERROR(ParseBody({"endif"}, &opener, node.otherwise));
        Next();
      }
      break;
    }
    body.push_back(Stmt{opener.pos, std::move(node)});
    return ExpectBlockEnd();
  }

  absl::Status ParseFor(const Token& opener, Body& body) {
    ForStmt node;
    do {
      std::string target;
      EMBER_ASSIGN_OR_RETURN(target, ExpectName("a loop variable"));
      node.targets.push_back(std::move(target));
    } while (SkipOp(","));
    if (!SkipName("in")) return Expected("'in'");
    EMBER_ASSIGN_OR_RETURN(node.iterable, ParseTuple(/*conditional=*/false));
    if (SkipName("if")) EMBER_ASSIGN_OR_RETURN(node.filter, ParseExpression());
    if (IsName("recursive")) return Error(Peek(), "unsupported recursive loop");
    EMBER_RETURN_IF_ERROR(ExpectBlockEnd());
    ++loop_depth_;
    const bool outer_uses_loop = std::exchange(uses_loop_, false);
    const absl::Status parsed = ParseBody({"else", "endfor"}, &opener, node.body);
    node.uses_loop = uses_loop_;
    uses_loop_ |= outer_uses_loop;
    --loop_depth_;
    EMBER_RETURN_IF_ERROR(parsed);
    if (Next().text == "else") {
      EMBER_RETURN_IF_ERROR(ExpectBlockEnd());
      EMBER_RETURN_IF_ERROR(ParseBody({"endfor"}, &opener, node.otherwise));
      Next();
    }
    body.push_back(Stmt{opener.pos, std::move(node)});
    return ExpectBlockEnd();
  }

  absl::Status ParseSet(const Token& opener, Body& body) {
    std::vector<SetTarget> targets;
    do {
      SetTarget target;
      EMBER_ASSIGN_OR_RETURN(target.name, ExpectName("a variable name"));
      if (SkipOp(".")) EMBER_ASSIGN_OR_RETURN(target.attribute, ExpectName("an attribute name"));
      targets.push_back(std::move(target));
    } while (SkipOp(","));
    if (SkipOp("=")) {
      SetStmt node{std::move(targets), nullptr};
      EMBER_ASSIGN_OR_RETURN(node.value, ParseTuple(/*conditional=*/true));
      body.push_back(Stmt{opener.pos, std::move(node)});
      return ExpectBlockEnd();
    }
    if (targets.size() != 1 || !targets[0].attribute.empty()) {
      return Expected("'=' (a block set assigns one plain name)");
    }
    if (IsOp("|")) return Error(Peek(), "unsupported filter on a block set");
    EMBER_RETURN_IF_ERROR(ExpectBlockEnd());
    SetBlockStmt node{std::move(targets[0].name), {}};
    EMBER_RETURN_IF_ERROR(ParseBody({"endset"}, &opener, node.body));
    Next();
    body.push_back(Stmt{opener.pos, std::move(node)});
    return ExpectBlockEnd();
  }

  // A macro parameter, with its default if it has one.
  absl::Status ParseParam(MacroStmt& node) {
    const Token& param = Peek();
    std::string name;
    EMBER_ASSIGN_OR_RETURN(name, ExpectName("a parameter name"));
    ExprPtr default_value;
    if (SkipOp("=")) {
      EMBER_ASSIGN_OR_RETURN(default_value, ParseExpression());
    } else if (!node.defaults.empty() && node.defaults.back()) {
      return Error(param, "non-default argument follows default argument");
    }
    node.params.push_back(std::move(name));
    node.defaults.push_back(std::move(default_value));
    return absl::OkStatus();
  }

  absl::Status ParseMacro(const Token& opener, Body& body) {
    MacroStmt node;
    EMBER_ASSIGN_OR_RETURN(node.name, ExpectName("a macro name"));
    EMBER_RETURN_IF_ERROR(ExpectOp("("));
    EMBER_RETURN_IF_ERROR(ParseSequence(")", [&] { return ParseParam(node); }).status());
    EMBER_RETURN_IF_ERROR(ExpectBlockEnd());
    // A macro's body is not inside the loop it may be defined in.
    const int loop_depth = std::exchange(loop_depth_, 0);
    const absl::Status parsed = ParseBody({"endmacro"}, &opener, node.body);
    loop_depth_ = loop_depth;
    EMBER_RETURN_IF_ERROR(parsed);
    Next();
    body.push_back(Stmt{opener.pos, std::move(node)});
    return ExpectBlockEnd();
  }

  // --- Expressions ---

  // An expression, or a tuple when commas follow (`{{ a, b }}`, `set x = 1, 2`). Without
  // `conditional`, a top-level `x if c else y` is not parsed (if/for conditions, as Jinja2).
  absl::StatusOr<ExprPtr> ParseTuple(bool conditional) {
    const Position pos = Peek().pos;
    ExprPtr first;
    EMBER_ASSIGN_OR_RETURN(first, conditional ? ParseExpression() : ParseOr());
    if (!IsOp(",")) return first;
    ListExpr tuple{{}, /*tuple=*/true};
    tuple.items.push_back(std::move(first));
    while (SkipOp(",")) {
      const TokenKind k = Peek().kind;
      if (k == TokenKind::kVariableEnd || k == TokenKind::kBlockEnd || IsName("if")) break;
      ExprPtr item;
      EMBER_ASSIGN_OR_RETURN(item, conditional ? ParseExpression() : ParseOr());
      tuple.items.push_back(std::move(item));
    }
    return MakeExpr(pos, std::move(tuple));
  }

  absl::StatusOr<ExprPtr> ParseExpression() {
    Nested nested(depth_);
    if (nested.too_deep()) return TooDeep();
    ExprPtr expr;
    EMBER_ASSIGN_OR_RETURN(expr, ParseOr());
    while (IsName("if")) {
      if (!nested.Deeper()) return TooDeep();
      const Position pos = Next().pos;
      ConditionalExpr node{std::move(expr), nullptr, nullptr};
      EMBER_ASSIGN_OR_RETURN(node.condition, ParseOr());
      if (SkipName("else")) EMBER_ASSIGN_OR_RETURN(node.otherwise, ParseExpression());
      expr = MakeExpr(pos, std::move(node));
    }
    return expr;
  }

  absl::StatusOr<ExprPtr> ParseOr() { return ParseLogical(/*is_and=*/false); }

  absl::StatusOr<ExprPtr> ParseLogical(bool is_and) {
    ExprPtr left;
    EMBER_ASSIGN_OR_RETURN(left, is_and ? ParseNot() : ParseLogical(true));
    Nested chain(depth_, 0);
    while (IsName(is_and ? "and" : "or")) {
      if (!chain.Deeper()) return TooDeep();
      const Position pos = Next().pos;
      ExprPtr right;
      EMBER_ASSIGN_OR_RETURN(right, is_and ? ParseNot() : ParseLogical(true));
      left = MakeExpr(pos, LogicalExpr{is_and, std::move(left), std::move(right)});
    }
    return left;
  }

  absl::StatusOr<ExprPtr> ParseNot() {
    if (!IsName("not")) return ParseCompare();
    const Token& t = Next();
    Nested nested(depth_);
    if (nested.too_deep()) return TooDeep();
    ExprPtr operand;
    EMBER_ASSIGN_OR_RETURN(operand, ParseNot());
    return MakeExpr(t.pos, UnaryExpr{UnaryExpr::Op::kNot, std::move(operand)});
  }

  // The comparison operator at the cursor, consuming it.
  std::optional<BinaryOp> SkipComparison() {
    static constexpr std::pair<std::string_view, BinaryOp> kOps[] = {
        {"==", BinaryOp::kEq}, {"!=", BinaryOp::kNe}, {"<", BinaryOp::kLt},
        {"<=", BinaryOp::kLe}, {">", BinaryOp::kGt},  {">=", BinaryOp::kGe}};
    for (const auto& [symbol, op] : kOps) {
      if (SkipOp(symbol)) return op;
    }
    if (SkipName("in")) return BinaryOp::kIn;
    if (IsName("not") && IsName("in", 1)) {
      Next();
      Next();
      return BinaryOp::kNotIn;
    }
    return std::nullopt;
  }

  absl::StatusOr<ExprPtr> ParseCompare() {
    ExprPtr left;
    EMBER_ASSIGN_OR_RETURN(left, ParseArithmetic(0));
    const Position pos = Peek().pos;
    const std::optional<BinaryOp> op = SkipComparison();
    if (!op) return left;
    ExprPtr right;
    EMBER_ASSIGN_OR_RETURN(right, ParseArithmetic(0));
    if (SkipComparison()) return Error(Peek(), "unsupported chained comparison");
    return MakeExpr(pos, BinaryExpr{*op, std::move(left), std::move(right)});
  }

  // The left-associative binary operators, loosest first: + -, then ~, then * / // %, then **.
  absl::StatusOr<ExprPtr> ParseArithmetic(size_t level) {
    static const std::vector<std::vector<std::pair<std::string_view, BinaryOp>>> kLevels = {
        {{"+", BinaryOp::kAdd}, {"-", BinaryOp::kSub}},
        {{"~", BinaryOp::kConcat}},
        {{"*", BinaryOp::kMul},
         {"/", BinaryOp::kDiv},
         {"//", BinaryOp::kFloorDiv},
         {"%", BinaryOp::kMod}},
        {{"**", BinaryOp::kPow}}};
    if (level == kLevels.size()) return ParseUnary(/*with_filters=*/true);
    ExprPtr left;
    EMBER_ASSIGN_OR_RETURN(left, ParseArithmetic(level + 1));
    Nested chain(depth_, 0);
    while (true) {
      const auto& ops = kLevels[level];
      const auto it =
          std::find_if(ops.begin(), ops.end(), [&](const auto& o) { return IsOp(o.first); });
      if (it == ops.end()) return left;
      if (!chain.Deeper()) return TooDeep();
      const Position pos = Next().pos;
      ExprPtr right;
      EMBER_ASSIGN_OR_RETURN(right, ParseArithmetic(level + 1));
      left = MakeExpr(pos, BinaryExpr{it->second, std::move(left), std::move(right)});
    }
  }

  absl::StatusOr<ExprPtr> ParseUnary(bool with_filters) {
    const Token& t = Peek();
    Nested nested(depth_);
    if (nested.too_deep()) return TooDeep();
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      Next();
      ExprPtr operand;
      EMBER_ASSIGN_OR_RETURN(operand, ParseUnary(/*with_filters=*/false));
      node = MakeExpr(t.pos, UnaryExpr{t.text == "-" ? UnaryExpr::Op::kMinus : UnaryExpr::Op::kPlus,
                                       std::move(operand)});
    } else {
      EMBER_ASSIGN_OR_RETURN(node, ParsePrimary());
    }
    EMBER_ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
    if (!with_filters) return node;
    while (true) {
      const Position pos = Peek().pos;
      if ((IsOp("|") || IsName("is") || IsOp("(")) && !nested.Deeper()) return TooDeep();
      if (SkipOp("|")) {
        EMBER_ASSIGN_OR_RETURN(node, ParseFilter(std::move(node)));
      } else if (SkipName("is")) {
        EMBER_ASSIGN_OR_RETURN(node, ParseTest(pos, std::move(node)));
      } else if (IsOp("(")) {
        EMBER_ASSIGN_OR_RETURN(node, ParsePostfix(std::move(node)));
      } else {
        return node;
      }
    }
  }

  absl::StatusOr<ExprPtr> ParseFilter(ExprPtr operand) {
    const Token& name = Peek();
    FilterExpr node{std::move(operand), "", {}};
    // An unknown filter fails when it is applied, as in Jinja2 3 (whose templates may name
    // filters of other environments on paths they never take).
    EMBER_ASSIGN_OR_RETURN(node.name, ExpectName("a filter name"));
    if (SkipOp("(")) EMBER_ASSIGN_OR_RETURN(node.args, ParseCallArgs());
    return MakeExpr(name.pos, std::move(node));
  }

  absl::StatusOr<ExprPtr> ParseTest(Position pos, ExprPtr operand) {
    TestExpr node{std::move(operand), "", {}, SkipName("not")};
    EMBER_ASSIGN_OR_RETURN(node.name, ExpectName("a test name"));  // checked when applied
    if (SkipOp("(")) {
      EMBER_ASSIGN_OR_RETURN(node.args, ParseCallArgs());
    } else if (StartsArgument()) {  // x is divisibleby 3
      ExprPtr arg;
      EMBER_ASSIGN_OR_RETURN(arg, ParsePrimary());
      EMBER_ASSIGN_OR_RETURN(arg, ParsePostfix(std::move(arg)));
      node.args.positional.push_back(std::move(arg));
    }
    return MakeExpr(pos, std::move(node));
  }

  // Whether a test's single unparenthesized argument starts here.
  bool StartsArgument() const {
    const Token& t = Peek();
    switch (t.kind) {
      case TokenKind::kName:
        return t.text != "else" && t.text != "or" && t.text != "and";
      case TokenKind::kString:
      case TokenKind::kInteger:
      case TokenKind::kFloat:
        return true;
      case TokenKind::kOperator:
        return t.text == "[" || t.text == "{";
      default:
        return false;
    }
  }

  // Attribute access, subscripts, slices and calls after a primary expression.
  absl::StatusOr<ExprPtr> ParsePostfix(ExprPtr node) {
    Nested chain(depth_, 0);
    while (true) {
      const Position pos = Peek().pos;
      if ((IsOp(".") || IsOp("[") || IsOp("(")) && !chain.Deeper()) return TooDeep();
      if (SkipOp(".")) {
        if (Peek().kind == TokenKind::kInteger) {  // x.0 is x[0]
          ExprPtr index = MakeExpr(Peek().pos, LiteralExpr{Value::Int(Next().integer)});
          node = MakeExpr(pos, SubscriptExpr{std::move(node), std::move(index)});
          continue;
        }
        AttributeExpr attribute{std::move(node), ""};
        EMBER_ASSIGN_OR_RETURN(attribute.name, ExpectName("an attribute name"));
        node = MakeExpr(pos, std::move(attribute));
      } else if (SkipOp("[")) {
        EMBER_ASSIGN_OR_RETURN(node, ParseSubscript(pos, std::move(node)));
      } else if (SkipOp("(")) {
        CallExpr call{std::move(node), {}};
        EMBER_ASSIGN_OR_RETURN(call.args, ParseCallArgs());
        node = MakeExpr(pos, std::move(call));
      } else {
        return node;
      }
    }
  }

  // After '[': an index or start:stop:step, then ']'.
  absl::StatusOr<ExprPtr> ParseSubscript(Position pos, ExprPtr object) {
    ExprPtr start, stop, step;
    if (!IsOp(":")) EMBER_ASSIGN_OR_RETURN(start, ParseExpression());
    if (!SkipOp(":")) {
      EMBER_RETURN_IF_ERROR(ExpectOp("]"));
      return MakeExpr(pos, SubscriptExpr{std::move(object), std::move(start)});
    }
    if (!IsOp(":") && !IsOp("]")) EMBER_ASSIGN_OR_RETURN(stop, ParseExpression());
    if (SkipOp(":") && !IsOp("]")) EMBER_ASSIGN_OR_RETURN(step, ParseExpression());
    EMBER_RETURN_IF_ERROR(ExpectOp("]"));
    return MakeExpr(
        pos, SliceExpr{std::move(object), std::move(start), std::move(stop), std::move(step)});
  }

  // Comma-separated items, each parsed by `item`, up to and including `close`; a trailing comma
  // is allowed. Returns whether there was a comma.
  template <typename ParseItem>
  absl::StatusOr<bool> ParseSequence(std::string_view close, ParseItem item) {
    bool comma = false;
    for (bool first = true; !SkipOp(close); first = false) {
      if (!first) {
        EMBER_RETURN_IF_ERROR(ExpectOp(","));
        comma = true;
        if (SkipOp(close)) break;
      }
      EMBER_RETURN_IF_ERROR(item());
    }
    return comma;
  }

  // Parses an expression onto the end of `items`.
  absl::Status ParseInto(std::vector<ExprPtr>& items) {
    ExprPtr item;
    EMBER_ASSIGN_OR_RETURN(item, ParseExpression());
    items.push_back(std::move(item));
    return absl::OkStatus();
  }

  // After '(': positional then keyword arguments, then ')'.
  absl::StatusOr<Args> ParseCallArgs() {
    Args args;
    EMBER_RETURN_IF_ERROR(ParseSequence(")", [&] { return ParseArg(args); }).status());
    return args;
  }

  absl::Status ParseArg(Args& args) {
    if (IsOp("*") || IsOp("**")) return Error(Peek(), "unsupported *args or **kwargs in a call");
    if (Peek().kind == TokenKind::kName && IsOp("=", 1)) {
      std::string key = Next().text;
      Next();
      ExprPtr value;
      EMBER_ASSIGN_OR_RETURN(value, ParseExpression());
      args.keyword.emplace_back(std::move(key), std::move(value));
      return absl::OkStatus();
    }
    if (!args.keyword.empty()) return Error(Peek(), "positional argument follows keyword argument");
    return ParseInto(args.positional);
  }

  absl::StatusOr<ExprPtr> ParsePrimary() {
    const Token& t = Next();
    switch (t.kind) {
      case TokenKind::kName:
        if (t.text == "true" || t.text == "True") {
          return MakeExpr(t.pos, LiteralExpr{Value::Bool(true)});
        }
        if (t.text == "false" || t.text == "False") {
          return MakeExpr(t.pos, LiteralExpr{Value::Bool(false)});
        }
        if (t.text == "none" || t.text == "None") {
          return MakeExpr(t.pos, LiteralExpr{Value::None()});
        }
        uses_loop_ |= t.text == "loop";
        return MakeExpr(t.pos, NameExpr{t.text});
      case TokenKind::kString: {
        std::string text = t.text;  // adjacent literals concatenate: 'a' 'b'
        while (Peek().kind == TokenKind::kString) text += Next().text;
        return MakeExpr(t.pos, LiteralExpr{Value::String(std::move(text))});
      }
      case TokenKind::kInteger:
        return MakeExpr(t.pos, LiteralExpr{Value::Int(t.integer)});
      case TokenKind::kFloat:
        return MakeExpr(t.pos, LiteralExpr{Value::Float(t.number)});
      case TokenKind::kOperator:
        if (t.text == "(") return ParseParenthesized(t);
        if (t.text == "[") return ParseList(t);
        if (t.text == "{") return ParseDict(t);
        break;
      default:
        break;
    }
    return Error(t, absl::StrCat("unexpected ", Describe(t)));
  }

  // After '(': () is an empty tuple, (a) is a, (a,) and (a, b) are tuples.
  absl::StatusOr<ExprPtr> ParseParenthesized(const Token& open) {
    ListExpr tuple{{}, /*tuple=*/true};
    bool comma;
    EMBER_ASSIGN_OR_RETURN(comma, ParseSequence(")", [&] { return ParseInto(tuple.items); }));
    if (tuple.items.size() == 1 && !comma) return std::move(tuple.items[0]);
    return MakeExpr(open.pos, std::move(tuple));
  }

  absl::StatusOr<ExprPtr> ParseList(const Token& open) {
    ListExpr list{{}, /*tuple=*/false};
    EMBER_RETURN_IF_ERROR(ParseSequence("]", [&] { return ParseInto(list.items); }).status());
    return MakeExpr(open.pos, std::move(list));
  }

  absl::StatusOr<ExprPtr> ParseDict(const Token& open) {
    DictExpr dict;
    EMBER_RETURN_IF_ERROR(ParseSequence("}", [&] { return ParseDictItem(dict); }).status());
    return MakeExpr(open.pos, std::move(dict));
  }

  absl::Status ParseDictItem(DictExpr& dict) {
    ExprPtr key, value;
    EMBER_ASSIGN_OR_RETURN(key, ParseExpression());
    EMBER_RETURN_IF_ERROR(ExpectOp(":"));
    EMBER_ASSIGN_OR_RETURN(value, ParseExpression());
    dict.items.emplace_back(std::move(key), std::move(value));
    return absl::OkStatus();
  }

  std::vector<Token> tokens_;
  size_t next_ = 0;
  int depth_ = 0;           // statement and expression nesting
  int loop_depth_ = 0;      // enclosing for loops, for break/continue
  bool uses_loop_ = false;  // whether `loop` was read since the innermost for loop began
};

}  // namespace

absl::StatusOr<Body> Parse(std::string_view source) {
  std::vector<Token> tokens;
  EMBER_ASSIGN_OR_RETURN(tokens, Tokenize(source));
  return Parser(std::move(tokens)).Run();
}

}  // namespace ember::jinja
