// The one way the tests run an external tool (ip, nsenter, unshare, lsns,
// readlink...): popen(3) through /bin/sh, never through gonso, so that gonso
// is checked against what the real tools do and see. Also the plain reading
// of a file and the splitting of text into words that their checks share.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace test {

/// What a command printed on stdout, and its wait status. Run by popen(3)
/// (mode "re") through /bin/sh, never through gonso.
struct ToolResult {
  std::string out;
  int status = -1;
  [[nodiscard]] bool ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
};
inline ToolResult run_tool(const std::string& command) {
  ToolResult result;
  FILE* pipe = ::popen(command.c_str(), "re");
  if (pipe == nullptr) return result;
  char buf[512];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) result.out.append(buf, n);
  result.status = ::pclose(pipe);
  return result;
}
/// What `command` printed on stdout, whatever its status.
inline std::string tool_output(const std::string& command) { return run_tool(command).out; }

/// The whole content of the file at `path`; empty when it cannot be read.
inline std::string file_text(const std::filesystem::path& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// The lines of `text`, each split into words at white space.
inline std::vector<std::vector<std::string>> words_by_line(const std::string& text) {
  std::vector<std::vector<std::string>> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    std::vector<std::string> words;
    for (std::string w; fields >> w;) words.push_back(w);
    lines.push_back(std::move(words));
  }
  return lines;
}

}  // namespace test
