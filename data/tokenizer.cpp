// The tokenizer factory and the small file helpers the data layer shares.
#include "data/tokenizer.h"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "data/bpe_tokenizer.h"
#include "data/char_tokenizer.h"
#include "kernels/error.h"

namespace kiln::data {

std::string read_file(const std::string& path, const std::string& who) {
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in.good(), who, ": cannot read ", path, ": ", std::strerror(errno));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  KILN_CHECK(!in.bad(), who, ": error while reading ", path);
  return buffer.str();
}

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write, const std::string& who) {
  std::string temporary = path + ".tmp" + std::to_string(::getpid());
  try {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    KILN_CHECK(out.good(), who, ": cannot write ", temporary, ": ", std::strerror(errno));
    write(out);
    out.flush();
    KILN_CHECK(out.good(), who, ": error while writing ", temporary, " (disk full?)");
  } catch (...) {
    std::filesystem::remove(temporary);
    throw;
  }
  std::error_code error;
  std::filesystem::rename(temporary, path, error);
  if (error) {
    std::filesystem::remove(temporary);
    KILN_FAIL(who, ": cannot rename ", temporary, " to ", path, ": ", error.message());
  }
}

void write_file_atomically(const std::string& path, std::string_view contents, const std::string& who) {
  write_file_atomically(
      path, [&](std::ostream& out) { out.write(contents.data(), static_cast<std::streamsize>(contents.size())); }, who);
}

nlohmann::json read_tokenizer_json(const std::string& path) {
  std::string text = read_file(path, "tokenizer");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    KILN_FAIL("tokenizer: ", path, " is not valid JSON: ", error.what());
  }
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  nlohmann::json json = read_tokenizer_json(path);
  std::string kind = json.is_object() && json.contains("kind") && json["kind"].is_string() ? json["kind"].get<std::string>() : "";
  if (kind == "char") return std::make_unique<CharTokenizer>(CharTokenizer::from_json(json, path));
  if (kind == "bpe") return std::make_unique<BpeTokenizer>(BpeTokenizer::from_json(json, path));
  KILN_FAIL("tokenizer: ", path, ": \"kind\" must be \"char\" or \"bpe\", got ",
            json.is_object() && json.contains("kind") ? json["kind"].dump() : std::string("nothing"));
}

}  // namespace kiln::data
