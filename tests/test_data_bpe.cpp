// Byte-level BPE: training and encoding against straightforward reference implementations,
// lossless round trips, special tokens, kiln's file format and GPT-2's encoder.json + vocab.bpe.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include "data/bpe_tokenizer.h"
#include "data/pretokenizer.h"
#include "kernels/error.h"

using namespace kiln::data;
using Catch::Contains;
using namespace std::string_literals;

namespace {

std::string scratch(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("kiln-test-data-" + name)).string();
}

// Replaces every non-overlapping (left, right), left to right, by `result`.
std::vector<TokenId> merge_all(const std::vector<TokenId>& word, const BpeMerge& m) {
  std::vector<TokenId> out;
  for (size_t i = 0; i < word.size();) {
    if (i + 1 < word.size() && word[i] == m.left && word[i + 1] == m.right) {
      out.push_back(m.result);
      i += 2;
    } else {
      out.push_back(word[i++]);
    }
  }
  return out;
}

// Textbook BPE training: recount every pair of every word before each merge; the most frequent
// pair wins, ties to the smallest (left, right).
std::vector<BpeMerge> reference_train(const std::string& corpus, int64_t n_merges) {
  std::map<std::string, int64_t> counts;
  for (std::string_view piece : gpt2_pieces(corpus)) ++counts[std::string(piece)];
  std::vector<std::pair<std::vector<TokenId>, int64_t>> words;
  for (const auto& [word, count] : counts) words.push_back({std::vector<TokenId>(word.begin(), word.end()), count});
  for (auto& [word, count] : words) {
    for (TokenId& id : word) id &= 0xFF;  // chars are signed; bytes are 0..255
  }
  std::vector<BpeMerge> merges;
  while (static_cast<int64_t>(merges.size()) < n_merges) {
    std::map<std::pair<TokenId, TokenId>, int64_t> pairs;
    for (const auto& [word, count] : words) {
      for (size_t i = 0; i + 1 < word.size(); ++i) pairs[{word[i], word[i + 1]}] += count;
    }
    if (pairs.empty()) break;
    auto best = pairs.begin();  // map order: the smallest pair wins ties
    for (auto it = pairs.begin(); it != pairs.end(); ++it) {
      if (it->second > best->second) best = it;
    }
    BpeMerge merge{best->first.first, best->first.second, static_cast<TokenId>(256 + merges.size())};
    merges.push_back(merge);
    for (auto& [word, count] : words) word = merge_all(word, merge);
  }
  return merges;
}

// GPT-2's encoder loop: merge all occurrences of the lowest-ranked pair, until none is left.
std::vector<TokenId> reference_encode(const BpeTokenizer& tokenizer, std::string_view text) {
  std::map<std::pair<TokenId, TokenId>, size_t> rank;
  for (size_t r = 0; r < tokenizer.merges().size(); ++r) rank[{tokenizer.merges()[r].left, tokenizer.merges()[r].right}] = r;
  std::vector<TokenId> out;
  for (std::string_view piece : gpt2_pieces(text)) {
    std::vector<TokenId> word;
    for (char c : piece) word.push_back(tokenizer.byte_tokens()[static_cast<unsigned char>(c)]);
    while (true) {
      size_t best = SIZE_MAX;
      for (size_t i = 0; i + 1 < word.size(); ++i) {
        auto found = rank.find({word[i], word[i + 1]});
        if (found != rank.end()) best = std::min(best, found->second);
      }
      if (best == SIZE_MAX) break;
      word = merge_all(word, tokenizer.merges()[best]);
    }
    out.insert(out.end(), word.begin(), word.end());
  }
  return out;
}

// Words from a small syllable set (so that pairs repeat), numbers, punctuation, UTF-8 and now
// and then an invalid byte.
std::string make_corpus(uint32_t seed, int words) {
  const std::vector<std::string> syllables = {"th", "e", "an", "ing", "qu", "ick", "o", "ver", "la", "zy",
                                              "\xC3\xA9t\xC3\xA9", "\xD0\xB4\xD0\xB0", "42", "'s", "!", "\n"};
  std::mt19937 random(seed);
  std::string text;
  for (int w = 0; w < words; ++w) {
    text += random() % 4 ? " " : "";
    for (uint32_t k = 0, n = 1 + random() % 3; k < n; ++k) text += syllables[random() % syllables.size()];
    if (random() % 50 == 0) text += static_cast<char>(0x80 + random() % 0x80);
  }
  return text;
}

std::string random_bytes(std::mt19937& random, size_t length) {
  std::string bytes;
  for (size_t i = 0; i < length; ++i) bytes += static_cast<char>(random() % 256);
  return bytes;
}

}  // namespace

TEST_CASE("BPE training equals textbook BPE and is deterministic", "[data][bpe]") {
  const std::string corpus = make_corpus(7, 3000);
  BpeTokenizer tokenizer = BpeTokenizer::train(corpus, BpeTrainerOptions(256 + 200 + 1));
  CHECK(tokenizer.merges() == reference_train(corpus, 200));
  CHECK(tokenizer.vocab_size() == 457);
  CHECK(tokenizer.special_token_id("<|endoftext|>") == TokenId{456});
  CHECK(BpeTokenizer::train(corpus, BpeTrainerOptions(457)).merges() == tokenizer.merges());
  // A corpus with few distinct pairs runs out of merges before the target.
  BpeTokenizer small = BpeTokenizer::train("abab abab", BpeTrainerOptions(1000).special_tokens({}));
  CHECK(small.merges() == reference_train("abab abab", 1000));
  CHECK(small.vocab_size() < 1000);
  CHECK_THROWS_WITH(BpeTokenizer::train(corpus, BpeTrainerOptions(256)), Contains("vocab_size 256 is smaller"));
}

TEST_CASE("BPE encoding equals GPT-2's merge loop and round-trips every byte string", "[data][bpe]") {
  BpeTokenizer tokenizer = BpeTokenizer::train(make_corpus(11, 4000), BpeTrainerOptions(600));
  std::mt19937 random(99);
  for (int i = 0; i < 50; ++i) {
    const std::string text = i % 2 ? make_corpus(1000 + i, 60) : random_bytes(random, 1 + random() % 300);
    std::vector<TokenId> ids = tokenizer.encode(text);
    CHECK(ids == reference_encode(tokenizer, text));
    CHECK(tokenizer.decode(ids) == text);
    CHECK(tokenizer.encode(tokenizer.decode(ids)) == ids);
  }
  // Equal ranks merge left to right, as GPT-2's loop does. With the merges a+a and aa+a:
  // "aaa" -> aa a -> aaa (257); right to left it would stay a aa (no a+aa merge).
  // "aaaaa" -> aa aa a (the pairs at 0 and 2) -> aa aaa, since no aa+aa merge exists.
  std::array<TokenId, 256> identity;
  for (int b = 0; b < 256; ++b) identity[static_cast<size_t>(b)] = b;
  BpeTokenizer runs(identity, {{'a', 'a', 256}, {256, 'a', 257}}, {});
  CHECK(runs.encode("aaa") == std::vector<TokenId>{257});
  CHECK(runs.encode("aaaaa") == std::vector<TokenId>{256, 257});
  CHECK(runs.encode("aaaaa") == reference_encode(runs, "aaaaa"));
  // Every byte value alone and all 256 in a row.
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  CHECK(tokenizer.decode(tokenizer.encode(all)) == all);
  std::vector<TokenId> outside = {0, 600};
  CHECK_THROWS_WITH(tokenizer.decode(outside), Contains("token 600 at index 1"));
}

TEST_CASE("BPE special tokens: recognised when enabled, never learned or produced by merges", "[data][bpe]") {
  std::string corpus;
  for (int i = 0; i < 300; ++i) corpus += make_corpus(static_cast<uint32_t>(i), 5) + "<|endoftext|>";
  BpeTokenizer tokenizer = BpeTokenizer::train(corpus, BpeTrainerOptions(400));
  const TokenId eot = *tokenizer.special_token_id("<|endoftext|>");
  CHECK(eot == 399);
  // The 300 occurrences were cut out of training, so no token learned their characters.
  for (TokenId id = 256; id < eot; ++id) CHECK(tokenizer.token_bytes(id).find("<|") == std::string::npos);

  const std::string text = "the<|endoftext|>quick <|endoftext|>";
  std::vector<TokenId> ids = tokenizer.encode(text);
  CHECK(std::count(ids.begin(), ids.end(), eot) == 2);
  CHECK(ids.back() == eot);
  CHECK(tokenizer.decode(ids) == text);
  std::vector<TokenId> expected = tokenizer.encode_ordinary("the");
  expected.push_back(eot);
  for (TokenId id : tokenizer.encode_ordinary("quick ")) expected.push_back(id);
  expected.push_back(eot);
  CHECK(ids == expected);

  std::vector<TokenId> ordinary = tokenizer.encode_ordinary(text);
  CHECK(std::count(ordinary.begin(), ordinary.end(), eot) == 0);
  CHECK(tokenizer.decode(ordinary) == text);
  tokenizer.set_special_tokens_enabled(false);
  CHECK(tokenizer.encode(text) == ordinary);
}

TEST_CASE("BPE save/load keeps every id; corrupt files name the file and the field", "[data][bpe]") {
  const std::string corpus = make_corpus(3, 2000);
  BpeTokenizer tokenizer = BpeTokenizer::train(corpus, BpeTrainerOptions(380).special_tokens({"<|endoftext|>", "<|pad|>"}));
  const std::string path = scratch("bpe.json");
  tokenizer.save(path);
  BpeTokenizer loaded = BpeTokenizer::load(path);
  CHECK(loaded.merges() == tokenizer.merges());
  CHECK(loaded.special_tokens() == tokenizer.special_tokens());
  CHECK(loaded.byte_tokens() == tokenizer.byte_tokens());
  CHECK(load_tokenizer(path)->encode(corpus) == tokenizer.encode(corpus));

  auto write = [&](const std::string& merges, int64_t vocab_size) {
    std::string bytes;
    for (int b = 0; b < 256; ++b) bytes += (b ? ", " : "") + std::to_string(b);
    std::ofstream(path) << R"({"kind": "bpe", "version": 1, "pretokenizer": "gpt2", "vocab_size": )" << vocab_size
                        << R"(, "byte_tokens": [)" << bytes << R"(], "merges": )" << merges << R"(, "special_tokens": []})";
  };
  write("[[97, 98, 256]]", 257);
  CHECK(BpeTokenizer::load(path).encode("ab") == std::vector<TokenId>{256});
  write("[[97, 300, 256]]", 257);
  CHECK_THROWS_WITH(BpeTokenizer::load(path), Contains(path) && Contains("merge 0 (97 + 300 -> 256) uses token 300"));
  write("[[97, 98, 256], [97, 98, 257]]", 258);
  CHECK_THROWS_WITH(BpeTokenizer::load(path), Contains("merge 1") && Contains("repeats the pair"));
  write("[[97, 98, 97]]", 257);
  CHECK_THROWS_WITH(BpeTokenizer::load(path), Contains("reuses id 97"));
  write("[[97, 98]]", 257);
  CHECK_THROWS_WITH(BpeTokenizer::load(path), Contains(path) && Contains("merges[0]: expected [left, right, result]"));
  write("[[97, 98, 256]]", 300);
  CHECK_THROWS_WITH(BpeTokenizer::load(path), Contains("vocab_size: the file says 300 but defines 257"));
  std::filesystem::remove(path);
}

// tests/data/gpt2_tiny holds GPT-2-format files written by hand: encoder.json lists the 256
// byte tokens in GPT-2's order, then the results of vocab.bpe's merges (ids 256..264), then
// <|endoftext|> (265). GPT-2's byte ids: bytes '!'..'~' (33..126) are ids 0..93 (id = b - 33),
// 0xA1..0xAC ids 94..105, 0xAE..0xFF ids 106..187, then the 68 unprintable bytes in order:
// 0x00..0x20 ids 188..220 (so ' ' 'Ġ' = 220, '\n' 'Ċ' = 198), 0x7F..0xA0 ids 221..254, 0xAD 255.
// Merges by rank: 0 Ġ+t, 1 h+e, 2 Ġt+he, 3 l+o, 4 lo+w, 5 e+r, 6 Ġ+low, 7 Ġlow+er, 8 Ċ+Ċ.
TEST_CASE("GPT-2 encoder.json + vocab.bpe: ids derived by hand from the fixture's merges", "[data][bpe][gpt2]") {
  const std::string dir = std::string(KILN_SOURCE_DIR) + "/tests/data/gpt2_tiny/";
  BpeTokenizer tokenizer = BpeTokenizer::load_gpt2(dir + "encoder.json", dir + "vocab.bpe");
  CHECK(tokenizer.vocab_size() == 266);
  CHECK(tokenizer.special_token_id("<|endoftext|>") == TokenId{265});

  // "the lower<|endoftext|> lowest !\n\n" pre-tokenises (around the special token) to
  //   "the"     t h e: (t,h) has no merge, (h,e) rank 1 -> t he = [83, 257]
  //   " lower"  Ġ l o w e r: rank 3 (l,o), rank 4 (lo,w), rank 5 (e,r), rank 6 (Ġ,low),
  //             rank 7 (Ġlow,er) -> [263]
  //   <|endoftext|> -> 265
  //   " lowest" Ġ l o w e s t: ranks 3, 4, 6 -> Ġlow e s t = [262, 68, 82, 83]
  //   " !"      Ġ ! (no merge) = [220, 0]
  //   "\n\n"    Ċ Ċ: rank 8 -> [264]
  const std::string text = "the lower<|endoftext|> lowest !\n\n";
  const std::vector<TokenId> expected = {83, 257, 263, 265, 262, 68, 82, 83, 220, 0, 264};
  CHECK(tokenizer.encode(text) == expected);
  CHECK(tokenizer.decode(expected) == text);
  // As ordinary text "<|endoftext|>" is "<|" (27, 91), "endoftext" (e n d o f t e x t, no
  // merges: 68 77 67 78 69 83 68 87 83) and "|>" (91, 29).
  std::vector<TokenId> ordinary = tokenizer.encode_ordinary("the<|endoftext|>");
  CHECK(ordinary == std::vector<TokenId>{83, 257, 27, 91, 68, 77, 67, 78, 69, 83, 68, 87, 83, 91, 29});
  // "é" is C3 A9 (ids 106 + 0xC3 - 0xAE = 127 and 94 + 0xA9 - 0xA1 = 102); 0x00 -> 188,
  // 0x7F -> 221, a lone 0xAD (invalid UTF-8) -> 255.
  CHECK(tokenizer.encode("\xC3\xA9\x00\x7F\xAD"s) == std::vector<TokenId>{127, 102, 188, 221, 255});

  // Saved in kiln's format and loaded back, GPT-2's ids are kept.
  const std::string path = scratch("gpt2-as-kiln.json");
  tokenizer.save(path);
  CHECK(BpeTokenizer::load(path).encode(text) == expected);
  std::filesystem::remove(path);
}

TEST_CASE("GPT-2 format errors name the file and line", "[data][bpe][gpt2]") {
  const std::string dir = std::string(KILN_SOURCE_DIR) + "/tests/data/gpt2_tiny/";
  const std::string vocab = scratch("vocab.bpe");
  std::ofstream(vocab) << "#version: 0.2\nĠ t\nh  e\n";
  CHECK_THROWS_WITH(BpeTokenizer::load_gpt2(dir + "encoder.json", vocab),
                    Contains(vocab + ":3") && Contains("two tokens separated by one space"));
  std::ofstream(vocab) << "#version: 0.2\nq z\n";
  CHECK_THROWS_WITH(BpeTokenizer::load_gpt2(dir + "encoder.json", vocab),
                    Contains(vocab + ":2") && Contains("token \"qz\" is not in " + dir + "encoder.json"));
  const std::string encoder = scratch("encoder.json");
  std::ofstream(encoder) << R"({"!": 0})";
  CHECK_THROWS_WITH(BpeTokenizer::load_gpt2(encoder, dir + "vocab.bpe"), Contains("byte 0") && Contains(encoder));
  std::filesystem::remove(vocab);
  std::filesystem::remove(encoder);
}
