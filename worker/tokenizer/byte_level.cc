// The byte-level alphabet as GPT-2's bytes_to_unicode() builds it.
#include "worker/tokenizer/byte_level.h"

#include <array>

#include "common/utf8.h"

namespace ember::worker::byte_level {
namespace {

struct Alphabet {
  std::array<char32_t, 256> char_of_byte;
  std::array<std::string, 256> utf8_of_byte;
  std::array<int16_t, 256 + 68> byte_of_char;  // -1: not in the alphabet
};

const Alphabet& Get() {
  static const Alphabet* alphabet = [] {
    auto* a = new Alphabet;
    a->byte_of_char.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      a->char_of_byte[b] = printable ? static_cast<char32_t>(b) : next++;
      utf8::Append(a->char_of_byte[b], a->utf8_of_byte[b]);
      a->byte_of_char[a->char_of_byte[b]] = static_cast<int16_t>(b);
    }
    return a;
  }();
  return *alphabet;
}

}  // namespace

void AppendEncoded(absl::string_view bytes, std::string& out) {
  const Alphabet& a = Get();
  for (char b : bytes) out.append(a.utf8_of_byte[static_cast<uint8_t>(b)]);
}

std::optional<uint8_t> ByteOf(char32_t c) {
  const Alphabet& a = Get();
  if (c >= a.byte_of_char.size() || a.byte_of_char[c] < 0) return std::nullopt;
  return static_cast<uint8_t>(a.byte_of_char[c]);
}

}  // namespace ember::worker::byte_level
