# compile-time: how long a consumer's TU takes to compile and link with
# gonso, next to a baseline TU of what such a program includes anyway
# (<thread>, <string>, <vector>, fmt). Prints a table; fails only when a TU
# does not build, never on a time (these machines are shared and noisy).
# Usage: cmake -DCXX=g++ -DGONSO_INCLUDE=include -DFMT_INCLUDE=dir
#              -DFMT_LIBRARY=libfmt.so -DWORK_DIR=build/dir [-DROUNDS=3]
#              -P compile_time.cmake
cmake_minimum_required(VERSION 3.25)
foreach(var CXX GONSO_INCLUDE FMT_LIBRARY WORK_DIR)
  if(NOT ${var})
    message(FATAL_ERROR "pass -D${var}=...")
  endif()
endforeach()
if(NOT ROUNDS)
  set(ROUNDS 3)
endif()
set(dir "${WORK_DIR}/compile-time")
file(MAKE_DIRECTORY "${dir}")

file(WRITE "${dir}/baseline.cpp" [=[
#include <string>
#include <thread>
#include <vector>
#include <fmt/format.h>
int main() {
  std::vector<std::string> lines;
  std::jthread t([&] { lines.push_back(fmt::format("{} {}", 1, "x")); });
  t.join();
  return static_cast<int>(lines.size()) - 1;
}
]=])
file(WRITE "${dir}/set_run.cpp" [=[
#include <gonso/set.hpp>
int main() { return gonso::Set::current().run(true, [] { return 0; }); }
]=])
file(WRITE "${dir}/spawn.cpp" [=[
#include <gonso/spawn.hpp>
int main() { return gonso::spawn(gonso::Set::current(), {"/bin/true"}).wait().success() ? 0 : 1; }
]=])

set(flags -std=c++20 -O2 -I "${GONSO_INCLUDE}")
if(FMT_INCLUDE)
  list(APPEND flags -I "${FMT_INCLUDE}")
endif()
find_program(GNU_TIME /usr/bin/time)

# The median of ROUNDS compile+link times of one TU, in ms; the peak memory
# of the compiler (kB) where GNU time is installed, else empty.
function(time_tu name out_ms out_kb)
  set(times)
  set(peak "")
  foreach(round RANGE 1 ${ROUNDS})
    string(TIMESTAMP start "%s%f" UTC)
    if(GNU_TIME)
      execute_process(COMMAND "${GNU_TIME}" -f "%M" -o "${dir}/${name}.mem"
                              "${CXX}" ${flags} "${dir}/${name}.cpp" "${FMT_LIBRARY}" -pthread -o "${dir}/${name}"
                      RESULT_VARIABLE failed ERROR_VARIABLE err)
    else()
      execute_process(COMMAND "${CXX}" ${flags} "${dir}/${name}.cpp" "${FMT_LIBRARY}" -pthread -o "${dir}/${name}"
                      RESULT_VARIABLE failed ERROR_VARIABLE err)
    endif()
    string(TIMESTAMP end "%s%f" UTC)
    if(failed)
      message(FATAL_ERROR "${name}.cpp does not build:\n${err}")
    endif()
    math(EXPR ms "(${end} - ${start}) / 1000")
    list(APPEND times ${ms})
    if(GNU_TIME)
      file(READ "${dir}/${name}.mem" peak)
      string(STRIP "${peak}" peak)
    endif()
  endforeach()
  list(SORT times COMPARE NATURAL)
  math(EXPR middle "${ROUNDS} / 2")
  list(GET times ${middle} median)
  set(${out_ms} ${median} PARENT_SCOPE)
  set(${out_kb} "${peak}" PARENT_SCOPE)
endfunction()

time_tu(baseline base_ms base_kb)
set(report "compile and link, ${CXX} -O2, median of ${ROUNDS}:\n")
string(APPEND report "  TU                                          time  × baseline  peak memory\n")
foreach(tu baseline set_run spawn)
  if(tu STREQUAL "baseline")
    set(ms ${base_ms})
    set(kb "${base_kb}")
  else()
    time_tu(${tu} ms kb)
  endif()
  math(EXPR tenths "${ms} * 100 / ${base_ms}")
  math(EXPR whole "${tenths} / 100")
  math(EXPR frac "${tenths} % 100")
  if(frac LESS 10)
    set(frac "0${frac}")
  endif()
  if(tu STREQUAL "baseline")
    set(what "baseline: <thread> <string> <vector> fmt")
  elseif(tu STREQUAL "set_run")
    set(what "<gonso/set.hpp> + one run(true)")
  else()
    set(what "<gonso/spawn.hpp> + one spawn")
  endif()
  if(kb)
    math(EXPR mb "${kb} / 1024")
    set(mem "${mb} MB")
  else()
    set(mem "n/a (no /usr/bin/time)")
  endif()
  string(LENGTH "${what}" len)
  math(EXPR pad "44 - ${len}")
  string(REPEAT " " ${pad} spaces)
  string(APPEND report "  ${what}${spaces}${ms} ms  ${whole}.${frac}×  ${mem}\n")
endforeach()
string(APPEND report "  targets: set.hpp + run ≤ 2×, spawn.hpp + spawn ≤ 2.5× (reported, never checked)")
message(STATUS "${report}")
