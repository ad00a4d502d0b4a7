// GPT-2's pre-tokenisation, written by hand: splits text into the pieces that byte-level BPE
// merges within, so that no merge crosses a word boundary. It is exactly the pattern
//
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//
// applied by Python's `regex` findall (first alternative that matches wins, each greedy),
// extended to arbitrary bytes: an invalid UTF-8 byte is a character of class "other". Every byte
// of the text belongs to exactly one piece, so concatenating the pieces gives the text back.
#pragma once

#include <string_view>
#include <vector>

namespace kiln::data {

// The end (exclusive byte offset) of the piece that starts at `start` (< text.size()).
size_t gpt2_piece_end(std::string_view text, size_t start);

// Calls visit(piece) for each piece of `text`, in order.
template <typename Visit>
void for_each_gpt2_piece(std::string_view text, Visit&& visit) {
  for (size_t start = 0; start < text.size();) {
    size_t end = gpt2_piece_end(text, start);
    visit(text.substr(start, end - start));
    start = end;
  }
}

// All pieces of `text` (views into it).
std::vector<std::string_view> gpt2_pieces(std::string_view text);

}  // namespace kiln::data
