# <gonso/child.hpp> pulls in no thread machinery: the headers it includes,
# as the compiler lists them (-M), hold nothing under detail/thread/.
cmake_minimum_required(VERSION 3.25)
# Run by hand with cmake -P, the current binary directory is wherever the
# shell stands, often the source tree: the probe goes where it is told.
if(NOT WORK_DIR)
  message(FATAL_ERROR "pass -DWORK_DIR=<a build directory> for the probe file")
endif()
file(WRITE "${WORK_DIR}/child_alone.cpp" "#include <gonso/child.hpp>\n")
execute_process(
  COMMAND "${CXX}" -std=c++20 -M -I "${GONSO_INCLUDE}" "${WORK_DIR}/child_alone.cpp"
  OUTPUT_VARIABLE deps RESULT_VARIABLE failed)
if(failed)
  message(FATAL_ERROR "cannot list what <gonso/child.hpp> includes")
endif()
if(deps MATCHES "gonso/detail/thread/([a-z_]+\\.hpp)")
  message(FATAL_ERROR "<gonso/child.hpp> includes detail/thread/${CMAKE_MATCH_1}")
endif()
if(NOT deps MATCHES "gonso/detail/process/children\\.hpp")
  message(FATAL_ERROR "the dependency list of <gonso/child.hpp> lacks its own detail headers: the check saw nothing")
endif()
message(STATUS "<gonso/child.hpp> includes no thread machinery")
