// Byte-level BPE: construction checks, encoding and decoding (training is in bpe_trainer.cpp,
// the file formats in bpe_files.cpp).
//
// Encoding a piece is GPT-2's "merge the lowest-ranked adjacent pair until none is left",
// done in O(n log n) per piece: the piece's symbols form a linked list and the candidate pairs
// sit in a min-heap keyed by (rank, position), so equal-rank pairs merge left to right just as
// in GPT-2's loop. Stale heap entries (a side already merged away) are skipped when popped.
// Pieces repeat a lot in natural text, so each encode() call caches the tokens of the pieces it
// has seen (as a range of its own output).
#include "data/bpe_tokenizer.h"

#include <algorithm>

#include "data/pretokenizer.h"
#include "kernels/error.h"

namespace kiln::data {

namespace {

uint64_t pair_key(TokenId left, TokenId right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct HeapEntry {
  int32_t rank, position;
  TokenId left, right;
  // std heaps are max-heaps: "greater" puts the lowest (rank, position) on top.
  bool operator<(const HeapEntry& other) const {
    return rank != other.rank ? rank > other.rank : position > other.position;
  }
};

}  // namespace

struct BpeTokenizer::Scratch {
  std::vector<TokenId> symbols;  // -1 once merged into the symbol on its left
  std::vector<int32_t> previous, next;
  std::vector<HeapEntry> heap;
  std::unordered_map<std::string_view, std::pair<size_t, size_t>> cache;  // piece -> (first, count) in out
};

BpeTokenizer::BpeTokenizer(const std::array<TokenId, 256>& byte_tokens, std::vector<BpeMerge> merges,
                           std::vector<SpecialToken> special_tokens, const std::string& source)
    : byte_tokens_(byte_tokens), merges_(std::move(merges)), special_tokens_(std::move(special_tokens)) {
  const int64_t size = 256 + static_cast<int64_t>(merges_.size()) + static_cast<int64_t>(special_tokens_.size());
  KILN_CHECK(size <= INT32_MAX, source, ": ", size, " tokens do not fit int32 ids");
  enum Kind : uint8_t { undefined, byte, merge, special };
  std::vector<Kind> kind(static_cast<size_t>(size), undefined);
  token_bytes_.resize(static_cast<size_t>(size));
  auto define = [&](TokenId id, Kind what, const std::string& by) {
    KILN_CHECK(id >= 0 && id < size, source, ": ", by, " has id ", id, ", outside [0, ", size, ") (256 bytes + ",
               merges_.size(), " merges + ", special_tokens_.size(), " special tokens)");
    KILN_CHECK(kind[static_cast<size_t>(id)] == undefined, source, ": ", by, " reuses id ", id, ", already defined");
    kind[static_cast<size_t>(id)] = what;
  };
  for (int b = 0; b < 256; ++b) {
    define(byte_tokens_[static_cast<size_t>(b)], byte, "byte " + std::to_string(b));
    token_bytes_[static_cast<size_t>(byte_tokens_[static_cast<size_t>(b)])] = std::string(1, static_cast<char>(b));
  }
  for (size_t i = 0; i < special_tokens_.size(); ++i) {
    const SpecialToken& token = special_tokens_[i];
    KILN_CHECK(!token.text.empty(), source, ": special token ", i, " has empty text");
    for (size_t j = 0; j < i; ++j) {
      KILN_CHECK(special_tokens_[j].text != token.text, source, ": special token \"", token.text, "\" is listed twice");
    }
    define(token.id, special, "special token \"" + token.text + "\"");
    token_bytes_[static_cast<size_t>(token.id)] = token.text;
  }
  merge_ranks_.reserve(merges_.size());
  for (size_t rank = 0; rank < merges_.size(); ++rank) {
    const BpeMerge& m = merges_[rank];
    std::string name = "merge " + std::to_string(rank) + " (" + std::to_string(m.left) + " + " + std::to_string(m.right) +
                       " -> " + std::to_string(m.result) + ")";
    for (TokenId operand : {m.left, m.right}) {
      bool usable = operand >= 0 && operand < size &&
                    (kind[static_cast<size_t>(operand)] == byte || kind[static_cast<size_t>(operand)] == merge);
      KILN_CHECK(usable, source, ": ", name, " uses token ", operand, ", which is not a byte or an earlier merge's result");
    }
    define(m.result, merge, name);
    token_bytes_[static_cast<size_t>(m.result)] = token_bytes_[static_cast<size_t>(m.left)] + token_bytes_[static_cast<size_t>(m.right)];
    bool fresh = merge_ranks_.emplace(pair_key(m.left, m.right), RankedMerge{static_cast<int32_t>(rank), m.result}).second;
    KILN_CHECK(fresh, source, ": ", name, " repeats the pair of an earlier merge");
  }
}

const std::string& BpeTokenizer::token_bytes(TokenId id) const {
  KILN_CHECK(id >= 0 && id < vocab_size(), "BpeTokenizer: token ", id, " is outside the vocabulary [0, ", vocab_size(), ")");
  return token_bytes_[static_cast<size_t>(id)];
}

std::optional<TokenId> BpeTokenizer::special_token_id(std::string_view text) const {
  for (const SpecialToken& token : special_tokens_) {
    if (token.text == text) return token.id;
  }
  return std::nullopt;
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<TokenId>& out, Scratch& scratch) const {
  const auto n = static_cast<int32_t>(piece.size());
  if (n == 1) {
    out.push_back(byte_tokens_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  auto& symbols = scratch.symbols;
  auto& previous = scratch.previous;
  auto& next = scratch.next;
  auto& heap = scratch.heap;
  symbols.resize(static_cast<size_t>(n));
  previous.resize(static_cast<size_t>(n));
  next.resize(static_cast<size_t>(n));
  heap.clear();
  for (int32_t i = 0; i < n; ++i) {
    symbols[static_cast<size_t>(i)] = byte_tokens_[static_cast<unsigned char>(piece[static_cast<size_t>(i)])];
    previous[static_cast<size_t>(i)] = i - 1;
    next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
  }
  auto push_pair = [&](int32_t i) {
    int32_t j = next[static_cast<size_t>(i)];
    if (j < 0) return;
    TokenId left = symbols[static_cast<size_t>(i)], right = symbols[static_cast<size_t>(j)];
    auto found = merge_ranks_.find(pair_key(left, right));
    if (found == merge_ranks_.end()) return;
    heap.push_back({found->second.rank, i, left, right});
    std::push_heap(heap.begin(), heap.end());
  };
  for (int32_t i = 0; i + 1 < n; ++i) push_pair(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    HeapEntry top = heap.back();
    heap.pop_back();
    const auto i = static_cast<size_t>(top.position);
    int32_t j = next[i];
    if (j < 0 || symbols[i] != top.left || symbols[static_cast<size_t>(j)] != top.right) continue;  // stale
    symbols[i] = merges_[static_cast<size_t>(top.rank)].result;
    symbols[static_cast<size_t>(j)] = -1;
    next[i] = next[static_cast<size_t>(j)];
    if (next[i] >= 0) previous[static_cast<size_t>(next[i])] = top.position;
    if (previous[i] >= 0) push_pair(previous[i]);
    push_pair(top.position);
  }
  for (int32_t i = 0; i >= 0; i = next[static_cast<size_t>(i)]) out.push_back(symbols[static_cast<size_t>(i)]);
}

void BpeTokenizer::encode_text(std::string_view text, std::vector<TokenId>& out, Scratch& scratch) const {
  for_each_gpt2_piece(text, [&](std::string_view piece) {
    auto [entry, inserted] = scratch.cache.try_emplace(piece, out.size(), 0);
    if (inserted) {
      encode_piece(piece, out, scratch);
      entry->second.second = out.size() - entry->second.first;
      return;
    }
    auto [first, count] = entry->second;
    out.reserve(out.size() + count);
    for (size_t k = 0; k < count; ++k) out.push_back(out[first + k]);
  });
}

std::vector<TokenId> BpeTokenizer::encode_ordinary(std::string_view text) const {
  std::vector<TokenId> out;
  out.reserve(text.size() / 3);
  Scratch scratch;
  encode_text(text, out, scratch);
  return out;
}

std::vector<TokenId> BpeTokenizer::encode(std::string_view text) const {
  if (!special_tokens_enabled_ || special_tokens_.empty()) return encode_ordinary(text);
  std::vector<std::string> texts;
  for (const SpecialToken& token : special_tokens_) texts.push_back(token.text);
  std::vector<TokenId> out;
  out.reserve(text.size() / 3);
  Scratch scratch;
  split_on_special_tokens(
      text, texts, [&](std::string_view segment) { encode_text(segment, out, scratch); },
      [&](size_t index) { out.push_back(special_tokens_[index].id); });
  return out;
}

std::string BpeTokenizer::decode(std::span<const TokenId> tokens) const {
  std::string text;
  text.reserve(tokens.size() * 4);
  for (size_t i = 0; i < tokens.size(); ++i) {
    KILN_CHECK(tokens[i] >= 0 && tokens[i] < vocab_size(), "BpeTokenizer::decode: token ", tokens[i], " at index ", i,
               " is outside the vocabulary [0, ", vocab_size(), ")");
    text += token_bytes_[static_cast<size_t>(tokens[i])];
  }
  return text;
}

}  // namespace kiln::data
