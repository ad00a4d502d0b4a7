// kiln::Error and the KILN_CHECK macro: the one way library code reports bad input.
//
// Every public entry point validates its arguments and throws kiln::Error with a message that
// names the op (or file), the offending values and what was expected. Nothing in the library
// calls abort() or exit().
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace kiln {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
template <typename... Parts>
std::string concat(Parts&&... parts) {
  std::ostringstream stream;
  (stream << ... << std::forward<Parts>(parts));
  return stream.str();
}
}  // namespace detail

}  // namespace kiln

// KILN_CHECK(cond, "matmul: shapes ", a, " and ", b, " do not match") throws kiln::Error.
#define KILN_CHECK(condition, ...)                                  \
  do {                                                              \
    if (!(condition)) throw ::kiln::Error(::kiln::detail::concat(__VA_ARGS__)); \
  } while (0)

#define KILN_FAIL(...) throw ::kiln::Error(::kiln::detail::concat(__VA_ARGS__))
