// UTF-8 decoding by Unicode Table 3-7 (well-formed byte sequences) and the few Unicode
// properties the tokenizer needs.
#include "common/utf8.h"

#include <utf8proc.h>

#include <cassert>
#include <cstdio>
#include <cstdlib>

namespace ember::worker::utf8 {
namespace {

// For a lead byte: the sequence length and the allowed range of the second byte (later
// bytes are always 80..BF). Length 0 marks a byte that cannot start a sequence.
struct Lead {
  int length;
  uint8_t lo, hi;
};

Lead LeadOf(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};  // no surrogates
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};  // nothing past U+10FFFF
  return {0, 0, 0};
}

// How many bytes from `pos` form a well-formed prefix of a sequence: `length` when the
// sequence is complete, fewer when it is cut off by the end of `text` or by a bad byte.
struct Prefix {
  size_t valid;  // bytes that belong to the (possibly incomplete) sequence
  int length;    // the full length the lead byte announced (0: not a lead byte)
  bool at_end;   // the prefix was cut off by the end of `text`, not by a bad byte
};

Prefix PrefixAt(absl::string_view text, size_t pos) {
  const Lead lead = LeadOf(static_cast<uint8_t>(text[pos]));
  if (lead.length <= 1) return {static_cast<size_t>(lead.length), lead.length, false};
  size_t n = 1;
  for (; n < static_cast<size_t>(lead.length); ++n) {
    if (pos + n >= text.size()) return {n, lead.length, true};
    const uint8_t b = static_cast<uint8_t>(text[pos + n]);
    const uint8_t lo = n == 1 ? lead.lo : 0x80;
    const uint8_t hi = n == 1 ? lead.hi : 0xBF;
    if (b < lo || b > hi) return {n, lead.length, false};
  }
  return {n, lead.length, false};
}

}  // namespace

size_t SequenceLength(absl::string_view text, size_t pos) {
  const Prefix p = PrefixAt(text, pos);
  return p.length > 0 && p.valid == static_cast<size_t>(p.length) ? p.valid : 0;
}

std::optional<size_t> FindInvalid(absl::string_view text) {
  for (size_t pos = 0; pos < text.size();) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t n = SequenceLength(text, pos);
    if (n == 0) return pos;
    pos += n;
  }
  return std::nullopt;
}

char32_t Next(absl::string_view text, size_t& pos) {
  const uint8_t b = static_cast<uint8_t>(text[pos]);
  const int n = LeadOf(b).length;
  assert(n > 0);
  char32_t c = n == 1 ? b : b & (0x7F >> n);
  for (int i = 1; i < n; ++i) c = (c << 6) | (static_cast<uint8_t>(text[pos + i]) & 0x3F);
  pos += n;
  return c;
}

void Append(char32_t c, std::string& out) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

size_t AppendLossy(absl::string_view bytes, bool final, std::string& out) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    const Prefix p = PrefixAt(bytes, pos);
    if (p.length > 0 && p.valid == static_cast<size_t>(p.length)) {
      out.append(bytes.data() + pos, p.valid);
      pos += p.valid;
    } else if (p.at_end && !final) {
      break;  // may still be completed by the bytes that follow
    } else {
      // A maximal ill-formed subpart: the bad lead byte alone, or the valid prefix
      // before the byte that broke it.
      out.append(kReplacementChar.data(), kReplacementChar.size());
      pos += p.valid == 0 ? 1 : p.valid;
    }
  }
  return pos;
}

bool IsWhiteSpace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

bool IsNumeric(char32_t c) {
  const utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

bool IsWordChar(char32_t c) {
  if (c == 0x200C || c == 0x200D) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

size_t PreviousStart(absl::string_view text, size_t end) {
  size_t pos = end - 1;
  while (pos > 0 && (static_cast<uint8_t>(text[pos]) & 0xC0) == 0x80) --pos;
  return pos;
}

char32_t Prev(absl::string_view text, size_t& pos) {
  pos = PreviousStart(text, pos);
  size_t next = pos;
  return Next(text, next);
}

std::string Normalize(absl::string_view text, NormalForm form) {
  int options = UTF8PROC_STABLE;
  switch (form) {
    case NormalForm::kNfc:
      options |= UTF8PROC_COMPOSE;
      break;
    case NormalForm::kNfd:
      options |= UTF8PROC_DECOMPOSE;
      break;
    case NormalForm::kNfkc:
      options |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
      break;
    case NormalForm::kNfkd:
      options |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
      break;
  }
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &result,
                                          static_cast<utf8proc_option_t>(options));
  // utf8proc fails only on ill-formed input (callers validate first) or out of memory.
  if (n < 0) {
    std::fprintf(stderr, "%s:%d: utf8proc_map: %s\n", __FILE__, __LINE__, utf8proc_errmsg(n));
    std::abort();
  }
  std::string out(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
  std::free(result);
  return out;
}

}  // namespace ember::worker::utf8
