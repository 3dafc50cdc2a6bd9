// A small command-line parser: --name value / --name=value / --flag, positionals, and a clear error for
// anything unknown or malformed.
#pragma once
#include <map>
#include <set>
#include <string>
#include <vector>

#include "bik/error.h"

namespace bik::cli {

class Args {
 public:
  // `flags` take no value, `options` take one; anything else starting with "--" is an error.
  Args(const std::vector<std::string>& argv, const std::set<std::string>& flags,
       const std::set<std::string>& options, const std::string& command);

  bool flag(const std::string& name) const { return flags_.count(name) > 0; }
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string str(const std::string& name, const std::string& def = "") const;
  long long integer(const std::string& name, long long def) const;  // errors name the option and value
  double number(const std::string& name, double def) const;
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  std::string command_;
  std::set<std::string> flags_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// The frame of a subcommand: prints `usage` for --help/-h (exit 0); otherwise runs `body` and turns an
// exception into "bik <command>: message" on stderr with exit code 2.
int run_command(const char* command, const char* usage, const std::vector<std::string>& argv,
                int (*body)(const std::vector<std::string>&));

// Splits "a,b,c" (empty items dropped).
std::vector<std::string> split_list(const std::string& s);

// `text` as a positive integer; otherwise an error "<what> must be a positive integer, got '<text>'".
long long positive_integer(const std::string& text, const std::string& what);

// Subcommands; each returns the process exit code.
int cmd_check(const std::vector<std::string>& args);
int cmd_bench(const std::vector<std::string>& args);
int cmd_info(const std::vector<std::string>& args);
int cmd_generate(const std::vector<std::string>& args);
int cmd_bisect(const std::vector<std::string>& args);  // tools/bisect_cmd.cpp

}  // namespace bik::cli
