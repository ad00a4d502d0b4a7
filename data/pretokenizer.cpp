// GPT-2's pre-tokenisation pattern as a hand-written scanner (see pretokenizer.h). Each branch
// below names the alternative of the pattern it implements.
#include "data/pretokenizer.h"

#include "data/unicode.h"

namespace kiln::data {

namespace {

// The end of the run of characters of class `kind` that starts at `position`.
size_t run_end(std::string_view text, size_t position, CharClass kind) {
  while (position < text.size()) {
    DecodedChar next = decode_utf8(text, position);
    if (char_class(next) != kind) break;
    position += static_cast<size_t>(next.length);
  }
  return position;
}

// 's|'t|'re|'ve|'m|'ll|'d (case-sensitive, as in GPT-2): the contraction's length, or 0.
size_t contraction_length(std::string_view text, size_t start) {
  if (text[start] != '\'' || start + 1 >= text.size()) return 0;
  char first = text[start + 1];
  if (first == 's' || first == 't' || first == 'm' || first == 'd') return 2;
  if (start + 2 >= text.size()) return 0;
  char second = text[start + 2];
  bool two_letters = (first == 'r' && second == 'e') || (first == 'v' && second == 'e') || (first == 'l' && second == 'l');
  return two_letters ? 3 : 0;
}

}  // namespace

size_t gpt2_piece_end(std::string_view text, size_t start) {
  if (size_t length = contraction_length(text, start)) return start + length;

  // " ?\p{L}+", " ?\p{N}+", " ?[^\s\p{L}\p{N}]+": an optional ASCII space, then a run of one
  // class. The space belongs to the run only when a non-whitespace character follows it.
  size_t body = start;
  if (text[start] == ' ' && start + 1 < text.size() &&
      char_class(decode_utf8(text, start + 1)) != CharClass::whitespace) {
    body = start + 1;
  }
  DecodedChar first = decode_utf8(text, body);
  CharClass kind = char_class(first);
  if (kind != CharClass::whitespace) return run_end(text, body + static_cast<size_t>(first.length), kind);

  // "\s+(?!\S)": the whitespace run, minus its last character when a non-whitespace character
  // follows (that last character then prefixes the next piece); "\s+": a lone whitespace
  // character followed by non-whitespace.
  size_t end = start, last_start = start;
  while (end < text.size()) {
    DecodedChar next = decode_utf8(text, end);
    if (char_class(next) != CharClass::whitespace) break;
    last_start = end;
    end += static_cast<size_t>(next.length);
  }
  if (end < text.size() && last_start > start) return last_start;
  return end;
}

std::vector<std::string_view> gpt2_pieces(std::string_view text) {
  std::vector<std::string_view> pieces;
  for_each_gpt2_piece(text, [&](std::string_view piece) { pieces.push_back(piece); });
  return pieces;
}

}  // namespace kiln::data
