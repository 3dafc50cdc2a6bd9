#include "cli.h"

#include <cstdio>
#include <cstdlib>

namespace bik::cli {

Args::Args(const std::vector<std::string>& argv, const std::set<std::string>& flags,
           const std::set<std::string>& options, const std::string& command)
    : command_(command) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a.rfind("--", 0) != 0 || a == "--") {
      positional_.push_back(a);
      continue;
    }
    std::string name = a.substr(2), value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    if (flags.count(name)) {
      BIK_CHECK(!inline_value, command_, ": --", name, " takes no value");
      flags_.insert(name);
    } else if (options.count(name)) {
      if (!inline_value) {
        BIK_CHECK(i + 1 < argv.size(), command_, ": --", name, " needs a value");
        value = argv[++i];
      }
      values_[name] = value;
    } else {
      std::string known;
      for (auto& f : flags) known += " --" + f;
      for (auto& o : options) known += " --" + o;
      throw Error(command_ + ": unknown option --" + name + " (known:" + known + ")");
    }
  }
}

std::string Args::str(const std::string& name, const std::string& def) const {
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

long long Args::integer(const std::string& name, long long def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  char* end = nullptr;
  long long v = std::strtoll(it->second.c_str(), &end, 10);
  BIK_CHECK(end && *end == 0 && !it->second.empty(), command_, ": --", name, " expects an integer, got '", it->second,
            "'");
  return v;
}

double Args::number(const std::string& name, double def) const {
  auto it = values_.find(name);
  if (it == values_.end()) return def;
  char* end = nullptr;
  double v = std::strtod(it->second.c_str(), &end);
  BIK_CHECK(end && *end == 0 && !it->second.empty(), command_, ": --", name, " expects a number, got '", it->second,
            "'");
  return v;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t comma = s.find(',', start);
    if (comma == std::string::npos) comma = s.size();
    if (comma > start) out.push_back(s.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

long long positive_integer(const std::string& text, const std::string& what) {
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  BIK_CHECK(!text.empty() && end && *end == 0 && v > 0, what, " must be a positive integer, got '", text, "'");
  return v;
}

int run_command(const char* command, const char* usage, const std::vector<std::string>& argv,
                int (*body)(const std::vector<std::string>&)) {
  for (const auto& x : argv)
    if (x == "--help" || x == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
  try {
    return body(argv);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    const std::string prefix = std::string("bik ") + command;
    std::fprintf(stderr, "%s%s\n", what.rfind(prefix, 0) == 0 ? "" : (prefix + ": ").c_str(), what.c_str());
    return 2;
  }
}

}  // namespace bik::cli
