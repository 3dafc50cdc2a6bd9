// Errors carry the context needed to fix the call: which op, which argument, which shape.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace bik {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace bik

// BIK_CHECK(cond, "matmul: a has ", a.ndim, " dims"): throws bik::Error with the message when cond fails.
#define BIK_CHECK(cond, ...)                                                 \
  do {                                                                       \
    if (!(cond)) throw ::bik::Error(::bik::detail::concat(__VA_ARGS__));     \
  } while (0)
