// What an engine folder holds, as printable lines (runtime/cli.py inspect_lines); loads no engine.
#pragma once

#include <string>
#include <vector>

namespace gligen {

std::vector<std::string> inspect_lines(const std::string& engine_dir);

}  // namespace gligen
