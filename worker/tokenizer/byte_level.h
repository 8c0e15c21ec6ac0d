// GPT-2's byte-level alphabet: every byte is shown as one printable character (printable
// Latin-1 stands for itself, the other bytes for U+0100 onwards), so a byte-level BPE
// vocabulary is text. Shared by the ByteLevel pre-tokenizer and decoder.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace ember::worker::byte_level {

// Appends the character that stands for each byte of `bytes` to `out`.
void AppendEncoded(absl::string_view bytes, std::string& out);

// The byte a character of the alphabet stands for; nullopt for other characters.
std::optional<uint8_t> ByteOf(char32_t c);

}  // namespace ember::worker::byte_level
