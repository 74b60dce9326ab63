// gonso-lsns: the host's namespaces and how many processes are in each, in
// the columns of util-linux `lsns -o NS,TYPE,NPROCS,PID,USER,COMMAND`.
//
//   gonso-lsns [-n] [-t KIND]... [-o COLUMN,...]
//
// -n leaves out the header, -t lists only the kinds given (all when none),
// -o picks the columns. PID is the lowest pid in the namespace, USER the
// owner of its /proc folder and COMMAND its command line. Processes that
// end while /proc is read, and those the caller may not look at, are left
// out, as lsns leaves them out; --skipped prints them on stderr.
// SPDX-License-Identifier: MIT
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <exception>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <gonso/kind.hpp>
#include <gonso/namespaces.hpp>

namespace {

enum class Column { ns, type, nprocs, pid, user, command };

struct ColumnSpec {
  Column column;
  std::string_view header;
  bool right;             // numbers are right-aligned, as lsns prints them
  std::size_t preferred;  // the width a column gets when its widest cell is at least as wide as its header
};

constexpr std::array<ColumnSpec, 6> columns{{
    {Column::ns, "NS", true, 10},
    {Column::type, "TYPE", false, 5},
    {Column::nprocs, "NPROCS", true, 5},
    {Column::pid, "PID", true, 5},
    {Column::user, "USER", false, 0},
    {Column::command, "COMMAND", false, 0},
}};

std::optional<ColumnSpec> column_named(std::string_view name) {
  for (const ColumnSpec& spec : columns) {
    if (spec.header == name) return spec;
  }
  return std::nullopt;
}

// The process may have ended since the scan: its cells are then empty.
std::string user_of(pid_t pid) {
  struct stat st {};
  if (::stat(fmt::format("/proc/{}", pid).c_str(), &st) != 0) return {};
  std::array<char, 1024> buffer{};
  passwd entry{};
  passwd* found = nullptr;
  if (::getpwuid_r(st.st_uid, &entry, buffer.data(), buffer.size(), &found) == 0 && found != nullptr) {
    return found->pw_name;
  }
  return std::to_string(st.st_uid);
}

std::string read_file(const std::string& path) {
  std::string text;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return text;
  std::array<char, 4096> chunk{};
  for (ssize_t n; (n = ::read(fd, chunk.data(), chunk.size())) > 0;)
    text.append(chunk.data(), static_cast<std::size_t>(n));
  ::close(fd);
  return text;
}

// The command line with its NULs as spaces; a kernel thread has none and
// shows its name.
std::string command_of(pid_t pid) {
  std::string line = read_file(fmt::format("/proc/{}/cmdline", pid));
  while (!line.empty() && line.back() == '\0') line.pop_back();
  std::replace(line.begin(), line.end(), '\0', ' ');
  if (line.empty()) {
    line = read_file(fmt::format("/proc/{}/comm", pid));
    while (!line.empty() && line.back() == '\n') line.pop_back();
  }
  return line;
}

std::string cell(Column column, const gonso::NamespaceInfo& ns) {
  switch (column) {
    case Column::ns:
      return std::to_string(ns.id.inode);
    case Column::type:
      return std::string(gonso::name(ns.kind));
    case Column::nprocs:
      return std::to_string(ns.pids.size());
    case Column::pid:
      return std::to_string(ns.pids.front());
    case Column::user:
      return user_of(ns.pids.front());
    case Column::command:
      return command_of(ns.pids.front());
  }
  return {};
}

constexpr std::string_view usage =
    "usage: gonso-lsns [-n] [-t KIND]... [-o COLUMN,...] [--skipped]\n"
    "  -n, --noheadings   leave out the header line\n"
    "  -t, --type KIND    list only namespaces of KIND (cgroup ipc mnt net pid time user uts)\n"
    "  -o, --output LIST  columns, of NS,TYPE,NPROCS,PID,USER,COMMAND (all by default)\n"
    "      --skipped      print the processes left out, and why, on stderr\n";

struct Options {
  bool headings = true;
  bool skipped = false;
  gonso::Kinds kinds;
  std::vector<ColumnSpec> shown;
};

std::optional<Options> parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "-n" || arg == "--noheadings") {
      options.headings = false;
    } else if (arg == "--skipped") {
      options.skipped = true;
    } else if ((arg == "-t" || arg == "--type") && has_value) {
      const std::optional<gonso::Kind> kind = gonso::kind_from_name(argv[++i]);
      if (!kind) {
        fmt::print(stderr, "gonso-lsns: unknown namespace type '{}'\n", argv[i]);
        return std::nullopt;
      }
      options.kinds |= *kind;
    } else if ((arg == "-o" || arg == "--output") && has_value) {
      std::string_view list = argv[++i];
      while (!list.empty()) {
        const std::size_t comma = std::min(list.find(','), list.size());
        const std::optional<ColumnSpec> spec = column_named(list.substr(0, comma));
        if (!spec) {
          fmt::print(stderr, "gonso-lsns: unknown column '{}'\n", list.substr(0, comma));
          return std::nullopt;
        }
        options.shown.push_back(*spec);
        list.remove_prefix(std::min(comma + 1, list.size()));
      }
    } else {
      return std::nullopt;
    }
  }
  if (options.kinds.empty()) options.kinds = gonso::Kinds::all();
  if (options.shown.empty()) options.shown.assign(columns.begin(), columns.end());
  return options;
}

void print(const Options& options, const gonso::NamespaceScan& scan) {
  std::vector<std::vector<std::string>> rows;
  if (options.headings) {
    std::vector<std::string> header;
    for (const ColumnSpec& spec : options.shown) header.emplace_back(spec.header);
    rows.push_back(std::move(header));
  }
  // By inode, as lsns orders them; the scan sorts by kind first.
  std::vector<const gonso::NamespaceInfo*> order;
  for (const gonso::NamespaceInfo& ns : scan.namespaces) order.push_back(&ns);
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) { return a->id.inode < b->id.inode; });
  for (const gonso::NamespaceInfo* ns : order) {
    std::vector<std::string> row;
    for (const ColumnSpec& spec : options.shown) row.push_back(cell(spec.column, *ns));
    rows.push_back(std::move(row));
  }
  // Widths as lsns sets them, header or not: the widest cell's; the
  // header's when that is wider; else at least the column's preferred width.
  std::vector<std::size_t> widths(options.shown.size(), 0);
  for (std::size_t r = options.headings ? 1 : 0; r < rows.size(); ++r) {
    for (std::size_t c = 0; c < rows[r].size(); ++c) widths[c] = std::max(widths[c], rows[r][c].size());
  }
  for (std::size_t c = 0; c < widths.size(); ++c) {
    const ColumnSpec& spec = options.shown[c];
    widths[c] = widths[c] < spec.header.size() ? spec.header.size() : std::max(widths[c], spec.preferred);
  }
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const bool last = c + 1 == row.size();
      if (c > 0) line += ' ';
      if (options.shown[c].right) {
        line += fmt::format("{:>{}}", row[c], widths[c]);
      } else {
        line += last ? row[c] : fmt::format("{:<{}}", row[c], widths[c]);
      }
    }
    fmt::print("{}\n", line);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::optional<Options> options = parse(argc, argv);
  if (!options) {
    fmt::print(stderr, "{}", usage);
    return 2;
  }
  try {
    // No relations: lsns prints none of ns_id, owner or parent here.
    const gonso::NamespaceScan scan = gonso::scan_namespaces({.kinds = options->kinds, .relations = false});
    print(*options, scan);
    if (options->skipped) {
      for (const gonso::Skipped& s : scan.skipped)
        fmt::print(stderr, "skipped pid {}: {}\n", s.pid, std::strerror(s.error));
    }
  } catch (const std::exception& e) {
    fmt::print(stderr, "gonso-lsns: {}\n", e.what());
    return 1;
  }
  return 0;
}
