// PLACEHOLDER
#include "cli.h"
namespace bik::cli { int cmd_bench(const std::vector<std::string>&) { return 2; } }
