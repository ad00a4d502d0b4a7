// JsonReader: strict reading of JSON configs. Every key the program knows is read through it;
// finish() then rejects the rest, naming the JSON path and the closest known key, and a value
// of the wrong type is an error naming its path and both types.
//
//   JsonReader reader(json, "model");
//   reader.read("n_layers", config.n_layers);   // optional: keeps the default when absent
//   reader.require("vocab_size", config.vocab_size);
//   reader.finish();                            // "model.n_layer: unknown key (did you mean n_layers?)"
#pragma once

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "kernels/error.h"

namespace kiln {

class JsonReader {
 public:
  JsonReader(const nlohmann::json& object, std::string path);

  bool has(const std::string& key) const { return object_.contains(key); }
  template <typename T>
  void read(const std::string& key, T& field) {
    known_.insert(key);
    if (object_.contains(key)) field = convert<T>(object_.at(key), key);
  }
  template <typename T>
  void require(const std::string& key, T& field) {
    KILN_CHECK(object_.contains(key), where(key), ": required key is missing");
    read(key, field);
  }
  // A reader for the nested object at `key` (an empty object when absent).
  JsonReader child(const std::string& key);
  // The value at `key`, marked as known, for callers that parse it themselves.
  const nlohmann::json& raw(const std::string& key);
  void finish() const;
  std::string where(const std::string& key) const { return path_.empty() ? key : path_ + "." + key; }

 private:
  template <typename T>
  T convert(const nlohmann::json& value, const std::string& key) const {
    if constexpr (std::is_same_v<T, bool>) {
      check_type(value.is_boolean(), key, "a boolean", value);
    } else if constexpr (std::is_integral_v<T>) {
      check_type(value.is_number_integer(), key, "an integer", value);
    } else if constexpr (std::is_floating_point_v<T>) {
      check_type(value.is_number(), key, "a number", value);
    } else if constexpr (std::is_same_v<T, std::string>) {
      check_type(value.is_string(), key, "a string", value);
    }
    try {
      return value.get<T>();
    } catch (const nlohmann::json::exception& error) {
      KILN_FAIL(where(key), ": ", error.what());
    }
  }
  void check_type(bool ok, const std::string& key, const char* expected, const nlohmann::json& value) const;

  nlohmann::json object_;
  std::string path_;
  std::set<std::string> known_;
};

// The candidate closest to `word` by edit distance (for "did you mean" hints).
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace kiln
