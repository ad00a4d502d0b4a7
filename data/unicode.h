// UTF-8 decoding and the character classes that GPT-2's pre-tokenisation pattern uses.
//
// Byte-level tokenizers must accept every byte string, so decoding never fails: a byte that
// does not start a valid UTF-8 sequence (RFC 3629: no overlong forms, no surrogates, nothing
// above U+10FFFF) decodes as a one-byte "invalid" character of class `other`.
#pragma once

#include <cstdint>
#include <string_view>

namespace kiln::data {

// The classes of the GPT-2 pattern: \p{L} (letters), \p{N} (numbers), \s (the Unicode
// White_Space property, as in Python's `regex` module) and everything else.
enum class CharClass : uint8_t { letter, number, whitespace, other };

struct DecodedChar {
  uint32_t code_point = 0;  // the byte value itself when !valid
  int length = 1;           // bytes consumed, 1..4
  bool valid = false;
};

// Decodes the character starting at text[position] (position < text.size()).
DecodedChar decode_utf8(std::string_view text, size_t position);

// The class of a code point (Unicode 14.0 general categories L* and N*).
CharClass char_class(uint32_t code_point);

// The class of a decoded character: invalid bytes are `other`.
inline CharClass char_class(const DecodedChar& decoded) {
  return decoded.valid ? char_class(decoded.code_point) : CharClass::other;
}

}  // namespace kiln::data
