// UTF-8 for the tokenizer: validation that names the offending byte, lossy decoding as
// Rust's String::from_utf8_lossy does it (which Hugging Face tokenizers uses), and the
// Unicode classes the tokenizer needs, from utf8proc (Debian's libutf8proc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace ember::worker::utf8 {

// U+FFFD REPLACEMENT CHARACTER, in UTF-8.
inline constexpr absl::string_view kReplacementChar = "\xEF\xBF\xBD";

// The byte offset of the first byte that does not start a well-formed UTF-8 sequence
// (Unicode Table 3-7), or nullopt when all of `text` is well-formed.
std::optional<size_t> FindInvalid(absl::string_view text);

// Decodes the character at `text[pos]`, which must be well-formed; advances `pos`.
char32_t Next(absl::string_view text, size_t& pos);

// The length of the well-formed sequence starting at `text[pos]` (1 to 4); 0 when the
// bytes there are not one.
size_t SequenceLength(absl::string_view text, size_t pos);

void Append(char32_t c, std::string& out);

// Appends `bytes` to `out` as text, replacing each maximal ill-formed subpart by U+FFFD.
// With `final` false an incomplete sequence at the end is left undecoded; returns how
// many bytes were consumed (the rest must be offered again with more bytes behind it).
size_t AppendLossy(absl::string_view bytes, bool final, std::string& out);

// Unicode White_Space (what Rust's char::is_whitespace and Oniguruma's \s match).
bool IsWhiteSpace(char32_t c);
// General category N* (Rust's char::is_numeric).
bool IsNumeric(char32_t c);
// The Unicode \w of Rust's regex crate: letters (and Nl), marks, decimal digits,
// connector punctuation, ZWNJ/ZWJ. (The few Other_Alphabetic symbols are not included.)
bool IsWordChar(char32_t c);

// The offset where the character ending at `end` (> 0) begins.
size_t PreviousStart(absl::string_view text, size_t end);
// Decodes the character that ends at `pos` (> 0), which must be well-formed; moves `pos`
// back to its start.
char32_t Prev(absl::string_view text, size_t& pos);

// Unicode normalization forms through utf8proc; `text` must be well-formed.
enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };
std::string Normalize(absl::string_view text, NormalForm form);

}  // namespace ember::worker::utf8
