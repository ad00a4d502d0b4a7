// Strict JSON config reading with path-naming errors.
#include "autograd/json_reader.h"

#include <algorithm>

namespace kiln {

JsonReader::JsonReader(const nlohmann::json& object, std::string path) : object_(object), path_(std::move(path)) {
  KILN_CHECK(object_.is_object(), (path_.empty() ? std::string("config") : path_), ": expected a JSON object, got ",
             object_.dump());
}

JsonReader JsonReader::child(const std::string& key) {
  known_.insert(key);
  if (!object_.contains(key)) return JsonReader(nlohmann::json::object(), where(key));
  return JsonReader(object_.at(key), where(key));
}

const nlohmann::json& JsonReader::raw(const std::string& key) {
  known_.insert(key);
  KILN_CHECK(object_.contains(key), where(key), ": required key is missing");
  return object_.at(key);
}

void JsonReader::check_type(bool ok, const std::string& key, const char* expected, const nlohmann::json& value) const {
  KILN_CHECK(ok, where(key), ": expected ", expected, ", got ", value.type_name(), " ", value.dump());
}

void JsonReader::finish() const {
  std::vector<std::string> candidates(known_.begin(), known_.end());
  for (const auto& [key, value] : object_.items()) {
    if (known_.count(key)) continue;
    std::string hint = closest_match(key, candidates);
    KILN_FAIL(where(key), ": unknown key", hint.empty() ? std::string() : " (did you mean " + hint + "?)");
  }
}

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::max<size_t>(3, word.size() / 2) + 1;
  for (const std::string& candidate : candidates) {
    std::vector<size_t> previous(candidate.size() + 1), current(candidate.size() + 1);
    for (size_t j = 0; j <= candidate.size(); ++j) previous[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      current[0] = i;
      for (size_t j = 1; j <= candidate.size(); ++j) {
        size_t substitute = previous[j - 1] + (word[i - 1] == candidate[j - 1] ? 0 : 1);
        current[j] = std::min({previous[j] + 1, current[j - 1] + 1, substitute});
      }
      std::swap(previous, current);
    }
    if (previous[candidate.size()] < best_distance) {
      best_distance = previous[candidate.size()];
      best = candidate;
    }
  }
  return best;
}

}  // namespace kiln
