// PLACEHOLDER
#include "cli.h"
namespace bik::cli { int cmd_check(const std::vector<std::string>&) { return 2; } }
