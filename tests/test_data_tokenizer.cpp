// UTF-8 decoding, GPT-2 pre-tokenisation (against Python's `re` running GPT-2's pattern) and
// the character-level tokenizer.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "data/char_tokenizer.h"
#include "data/pretokenizer.h"
#include "data/unicode.h"
#include "kernels/error.h"

using namespace kiln::data;
using Catch::Contains;

namespace {

std::string scratch(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("kiln-test-data-" + name)).string();
}

std::string utf8(uint32_t code_point) {
  std::string out;
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else if (code_point < 0x10000) {
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (code_point >> 18));
    out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return out;
}

std::vector<std::string> pieces_of(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view piece : gpt2_pieces(text)) out.emplace_back(piece);
  return out;
}

}  // namespace

TEST_CASE("decode_utf8 accepts RFC 3629 UTF-8 and nothing else", "[data][unicode]") {
  auto decode = [](const std::string& bytes) { return decode_utf8(bytes, 0); };
  DecodedChar euro = decode("\xE2\x82\xAC");  // U+20AC: 1110'0010 10'000010 10'101100
  CHECK(euro.valid);
  CHECK(euro.code_point == 0x20AC);
  CHECK(euro.length == 3);
  DecodedChar emoji = decode("\xF0\x9F\x98\x80");  // U+1F600
  CHECK((emoji.valid && emoji.code_point == 0x1F600 && emoji.length == 4));
  // Each of these is invalid at its first byte, which then stands alone.
  for (const std::string& bad : {std::string("\xC0\x80"),          // overlong NUL
                                 std::string("\xE0\x80\xAF"),      // overlong '/'
                                 std::string("\xED\xA0\x80"),      // surrogate U+D800
                                 std::string("\xF4\x90\x80\x80"),  // U+110000
                                 std::string("\xE2\x82"),          // truncated
                                 std::string("\x80"),              // lone continuation
                                 std::string("\xFF")}) {
    DecodedChar decoded = decode(bad);
    CHECK_FALSE(decoded.valid);
    CHECK(decoded.length == 1);
    CHECK(decoded.code_point == static_cast<unsigned char>(bad[0]));
  }
  CHECK(char_class(0x0416) == CharClass::letter);      // Ж
  CHECK(char_class(0x0663) == CharClass::number);      // Arabic-Indic three (Nd)
  CHECK(char_class(0x216B) == CharClass::number);      // Roman numeral twelve (Nl)
  CHECK(char_class(0x3000) == CharClass::whitespace);  // ideographic space
  CHECK(char_class(0x1C) == CharClass::other);         // not White_Space, though Python's isspace() says so
  CHECK(char_class(0x0301) == CharClass::other);       // combining acute accent (Mn)
}

TEST_CASE("GPT-2 pre-tokenisation on hand-derived examples", "[data][pretokenizer]") {
  // " ?\p{L}+" takes the space before a word; "'s" is a contraction; of the two spaces before
  // "test", "\s+(?!\S)" takes the first and the second prefixes the word.
  CHECK(pieces_of("Hello world's  test") == std::vector<std::string>{"Hello", " world", "'s", " ", " test"});
  // Contractions are case-sensitive and only start a piece: " '" is an "other" run.
  CHECK(pieces_of("it's 'S") == std::vector<std::string>{"it", "'s", " '", "S"});
  // Letters and digits are separate runs; punctuation joins one "other" run.
  CHECK(pieces_of("abc123?!x") == std::vector<std::string>{"abc", "123", "?!", "x"});
  // Trailing whitespace stays whole; "\n\n " before a word leaves its last space to the word.
  CHECK(pieces_of("a\n\n b  ") == std::vector<std::string>{"a", "\n\n", " b", "  "});
  // A lone newline before a word is its own piece ("\s+" after "\s+(?!\S)" fails).
  CHECK(pieces_of("a\nb") == std::vector<std::string>{"a", "\n", "b"});
  // Invalid bytes are "other": they join punctuation runs and never merge into words.
  CHECK(pieces_of("ab\xFF\xFE!c") == std::vector<std::string>{"ab", "\xFF\xFE!", "c"});
  // The 3-byte ideographic space backs off as one character, and only an ASCII space
  // prefixes a word, so the second one stands alone.
  CHECK(pieces_of("\xE3\x80\x80\xE3\x80\x80x") == std::vector<std::string>{"\xE3\x80\x80", "\xE3\x80\x80", "x"});
  CHECK(pieces_of("").empty());
}

TEST_CASE("GPT-2 pre-tokenisation matches Python's re running GPT-2's pattern", "[data][pretokenizer][reference]") {
  // Characters chosen to reach every alternative and class: ASCII letters, digits, spaces,
  // apostrophes and contraction letters, punctuation, Latin-1 and CJK letters, Nd/No/Nl
  // numbers, Unicode spaces, NEL, a non-White_Space control, a combining mark, emoji and a
  // 4-byte letter.
  const std::vector<uint32_t> pool = {'a', 'b', 'Z', 's', 't', 'r', 'e', 'v', 'm', 'l', 'd', '0', '7', ' ', ' ', ' ',
                                      '\n', '\t', '\r', '\'', '\'', '.', ',', '!', '-', 0xE9, 0xDF, 0x436, 0x6F22,
                                      0x663, 0xB2, 0x216B, 0xA0, 0x3000, 0x2009, 0x85, 0x1C, 0x301, 0x1F600, 0x10400};
  std::mt19937 random(1234);
  std::vector<std::string> texts = {"", " ", "  ", "'", "'s", "'re'", " 'll", "a  ", "\n\n\n", "x \n y"};
  for (int i = 0; i < 400; ++i) {
    std::string text;
    const int length = static_cast<int>(random() % 40);
    for (int k = 0; k < length; ++k) text += utf8(pool[random() % pool.size()]);
    texts.push_back(text);
  }
  const std::string in = scratch("pretok-in.json"), out = scratch("pretok-out.json");
  std::ofstream(in) << nlohmann::json(texts).dump();
  const std::string command = std::string(KILN_PYTHON) + " " + KILN_SOURCE_DIR +
                              "/tests/data/gpt2_pretokenize_reference.py " + in + " " + out;
  REQUIRE(std::system(command.c_str()) == 0);
  std::ifstream result(out);
  auto expected = nlohmann::json::parse(result).get<std::vector<std::vector<std::string>>>();
  REQUIRE(expected.size() == texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    INFO("text " << i << ": " << nlohmann::json(texts[i]).dump());
    CHECK(pieces_of(texts[i]) == expected[i]);
  }
  std::filesystem::remove(in);
  std::filesystem::remove(out);
}

TEST_CASE("CharTokenizer: sorted distinct characters, lossless round trip, clear errors", "[data][char]") {
  const std::string corpus = "hello, w\xC3\xB6rld \xE6\xBC\xA2\xE5\xAD\x97\n";  // "hello, wörld 漢字\n"
  CharTokenizer tokenizer = CharTokenizer::train(corpus);
  // By code point: \n (0A) ' ' (20) ',' (2C) d e h l o r w, ö (F6), 字 (5B57), 漢 (6F22).
  const std::vector<std::string> expected = {"\n", " ", ",", "d", "e", "h", "l", "o", "r", "w",
                                             "\xC3\xB6", "\xE5\xAD\x97", "\xE6\xBC\xA2"};
  CHECK(tokenizer.characters() == expected);
  CHECK(tokenizer.vocab_size() == 13);
  CHECK(tokenizer.encode("hello") == std::vector<TokenId>{5, 4, 6, 6, 7});
  CHECK(tokenizer.encode("\xE6\xBC\xA2\xC3\xB6\n") == std::vector<TokenId>{12, 10, 0});
  CHECK(tokenizer.decode(tokenizer.encode(corpus)) == corpus);

  CHECK_THROWS_WITH(tokenizer.encode("hez"), Contains("'z' (U+007A)") && Contains("byte offset 2"));
  CHECK_THROWS_WITH(tokenizer.encode("h\xFF"), Contains("invalid UTF-8 byte 0xff at byte offset 1"));
  CHECK_THROWS_WITH(CharTokenizer::train("ok\xC0\x80"), Contains("invalid UTF-8") && Contains("offset 2"));
  std::vector<TokenId> outside = {1, 13};
  CHECK_THROWS_WITH(tokenizer.decode(outside), Contains("token 13 at index 1"));
  CHECK_THROWS_WITH(CharTokenizer({"b", "a"}), Contains("must be sorted and distinct"));
  CHECK_THROWS_WITH(CharTokenizer({"ab"}), Contains("more than one character"));

  const std::string path = scratch("char.json");
  tokenizer.save(path);
  std::unique_ptr<Tokenizer> loaded = load_tokenizer(path);
  CHECK(loaded->kind() == "char");
  CHECK(loaded->vocab_size() == 13);
  CHECK(loaded->encode(corpus) == tokenizer.encode(corpus));

  std::ofstream(path) << R"({"kind": "char", "version": 1, "characters": ["a"], "charcters": ["b"]})";
  CHECK_THROWS_WITH(load_tokenizer(path), Contains(path) && Contains("charcters: unknown key (did you mean characters?)"));
  std::ofstream(path) << R"({"kind": "char", "version": 2, "characters": ["a"]})";
  CHECK_THROWS_WITH(load_tokenizer(path), Contains(path) && Contains("version: expected 1, got 2"));
  std::ofstream(path) << R"({"kind": "words"})";
  CHECK_THROWS_WITH(load_tokenizer(path), Contains(path) && Contains("\"kind\" must be \"char\" or \"bpe\""));
  std::ofstream(path) << "{\"kind\": ";
  CHECK_THROWS_WITH(load_tokenizer(path), Contains(path) && Contains("not valid JSON"));
  std::filesystem::remove(path);
  CHECK_THROWS_WITH(load_tokenizer(path), Contains("cannot read " + path));
}
