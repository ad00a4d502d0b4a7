// BPE training with incremental pair counts (BpeTokenizer::train, see bpe_tokenizer.h).
//
// The corpus is cut into pre-tokenisation pieces and reduced to its distinct words with their
// counts. Pair counts are kept in a hash map and a lazy max-heap; an index pair -> words lists
// where each pair occurs. A merge revisits only the words that contain its pair: their old pairs
// are subtracted, the merge applied in place, their new pairs added; pairs whose count rose (they
// contain the new token) are pushed onto the heap, and heap entries whose count went stale are
// refreshed when popped. So a merge costs time in proportion to the words it touches, not to the
// corpus.
#include <algorithm>
#include <queue>

#include "data/bpe_tokenizer.h"
#include "data/pretokenizer.h"
#include "kernels/error.h"

namespace kiln::data {

namespace {

uint64_t pair_key(TokenId left, TokenId right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}
TokenId left_of(uint64_t key) { return static_cast<TokenId>(key >> 32); }
TokenId right_of(uint64_t key) { return static_cast<TokenId>(key & 0xFFFFFFFFu); }

struct Candidate {
  int64_t count;
  uint64_t pair;
  // Max-heap order: the highest count first; among equal counts the smallest (left, right).
  bool operator<(const Candidate& other) const { return count != other.count ? count < other.count : pair > other.pair; }
};

// The distinct words: word w is symbols[begin[w] .. begin[w] + length[w]) and occurs count[w]
// times. Merging shrinks a word in place.
struct Words {
  std::vector<TokenId> symbols;
  std::vector<size_t> begin, length;
  std::vector<int64_t> count;
};

Words count_words(std::string_view corpus, const std::vector<std::string>& specials) {
  std::unordered_map<std::string_view, int64_t> counts;
  auto add_text = [&](std::string_view segment) { for_each_gpt2_piece(segment, [&](std::string_view piece) { ++counts[piece]; }); };
  split_on_special_tokens(corpus, specials, add_text, [](size_t) {});
  // Sorted, so that the result does not depend on the hash map's iteration order.
  std::vector<std::pair<std::string_view, int64_t>> sorted(counts.begin(), counts.end());
  std::sort(sorted.begin(), sorted.end());
  Words words;
  for (const auto& [word, count] : sorted) {
    words.begin.push_back(words.symbols.size());
    words.length.push_back(word.size());
    words.count.push_back(count);
    for (char c : word) words.symbols.push_back(static_cast<unsigned char>(c));
  }
  return words;
}

}  // namespace

BpeTokenizer BpeTokenizer::train(std::string_view corpus, const BpeTrainerOptions& options) {
  const auto& specials = options.special_tokens();
  const int64_t target_merges = options.vocab_size() - 256 - static_cast<int64_t>(specials.size());
  KILN_CHECK(target_merges >= 0, "BpeTokenizer::train: vocab_size ", options.vocab_size(), " is smaller than 256 byte tokens + ",
             specials.size(), " special tokens");
  KILN_CHECK(options.vocab_size() <= INT32_MAX, "BpeTokenizer::train: vocab_size ", options.vocab_size(), " does not fit int32 ids");
  for (const std::string& special : specials) {
    KILN_CHECK(!special.empty(), "BpeTokenizer::train: a special token is empty");
  }
  Words words = count_words(corpus, specials);
  const size_t n_words = words.count.size();

  std::unordered_map<uint64_t, int64_t> pair_counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  // Adds sign * count[w] for every adjacent pair of word w, noting w under pairs that contain
  // `indexed` (every pair when indexed < 0). deltas collects (pair, change).
  std::vector<std::pair<uint64_t, int64_t>> deltas;
  auto visit_pairs = [&](size_t w, int64_t sign, TokenId indexed) {
    const TokenId* s = words.symbols.data() + words.begin[w];
    for (size_t i = 0; i + 1 < words.length[w]; ++i) {
      uint64_t key = pair_key(s[i], s[i + 1]);
      deltas.emplace_back(key, sign * words.count[w]);
      if (sign > 0 && (indexed < 0 || s[i] == indexed || s[i + 1] == indexed)) {
        auto& list = pair_words[key];
        if (list.empty() || list.back() != static_cast<int32_t>(w)) list.push_back(static_cast<int32_t>(w));
      }
    }
  };
  for (size_t w = 0; w < n_words; ++w) visit_pairs(w, +1, -1);
  for (const auto& [key, delta] : deltas) pair_counts[key] += delta;
  deltas.clear();
  std::priority_queue<Candidate> heap;
  for (const auto& [key, count] : pair_counts) heap.push({count, key});

  std::vector<BpeMerge> merges;
  std::vector<int64_t> visited(n_words, -1);  // the merge that last rewrote each word
  while (static_cast<int64_t>(merges.size()) < target_merges && !heap.empty()) {
    Candidate top = heap.top();
    heap.pop();
    auto found = pair_counts.find(top.pair);
    if (found == pair_counts.end()) continue;
    if (found->second != top.count) {  // stale: requeue with the current count
      heap.push({found->second, top.pair});
      continue;
    }
    const TokenId left = left_of(top.pair), right = right_of(top.pair);
    const auto merged = static_cast<TokenId>(256 + merges.size());
    merges.push_back({left, right, merged});

    std::vector<int32_t> affected = std::move(pair_words[top.pair]);
    pair_words.erase(top.pair);
    for (int32_t w32 : affected) {
      const auto w = static_cast<size_t>(w32);
      if (visited[w] == static_cast<int64_t>(merges.size())) continue;
      visited[w] = static_cast<int64_t>(merges.size());
      TokenId* s = words.symbols.data() + words.begin[w];
      const size_t length = words.length[w];
      visit_pairs(w, -1, -1);
      size_t out = 0;
      for (size_t i = 0; i < length;) {
        if (i + 1 < length && s[i] == left && s[i + 1] == right) {
          s[out++] = merged;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      words.length[w] = out;
      visit_pairs(w, +1, merged);
    }
    std::sort(deltas.begin(), deltas.end());
    for (size_t i = 0; i < deltas.size();) {
      uint64_t key = deltas[i].first;
      int64_t delta = 0;
      for (; i < deltas.size() && deltas[i].first == key; ++i) delta += deltas[i].second;
      if (delta == 0) continue;
      int64_t& count = pair_counts[key];
      count += delta;
      if (count == 0) {
        pair_counts.erase(key);
      } else if (delta > 0) {
        heap.push({count, key});
      }
    }
    deltas.clear();
  }

  std::array<TokenId, 256> byte_tokens;
  for (int b = 0; b < 256; ++b) byte_tokens[static_cast<size_t>(b)] = b;
  std::vector<SpecialToken> special_tokens;
  for (const std::string& text : specials) {
    special_tokens.push_back({text, static_cast<TokenId>(256 + merges.size() + special_tokens.size())});
  }
  return BpeTokenizer(byte_tokens, std::move(merges), std::move(special_tokens), "BpeTokenizer::train");
}

}  // namespace kiln::data
