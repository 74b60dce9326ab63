# The architecture's rules (README, "Architecture"), checked on every header:
# run as `cmake -DGONSO_INCLUDE=<include dir> -P layering.cmake`.
#  - public headers declare no detail namespace;
#  - each folder of detail/ includes only the folders below it:
#      sys/  <- ns/  <- fs/
#      thread/ and process/ on top, never including each other;
#  - of the public headers, a detail header includes only the leaves that
#    name the vocabulary (kind, identity, options, error, run_context, fd).
cmake_minimum_required(VERSION 3.25)
set(allowed_sys "sys")
set(allowed_ns "sys;ns")
set(allowed_fs "sys;ns;fs")
set(allowed_thread "sys;ns;thread")
set(allowed_process "sys;ns;fs;process")
set(leaves "kind.hpp;identity.hpp;options.hpp;error.hpp;run_context.hpp;fd.hpp")
set(failures "")

file(GLOB public RELATIVE "${GONSO_INCLUDE}/gonso" "${GONSO_INCLUDE}/gonso/*.hpp")
foreach(header IN LISTS public)
  file(READ "${GONSO_INCLUDE}/gonso/${header}" text)
  if(text MATCHES "namespace (gonso::)?detail")
    list(APPEND failures "gonso/${header} opens a detail namespace: detail code lives under detail/")
  endif()
endforeach()

file(GLOB_RECURSE private RELATIVE "${GONSO_INCLUDE}/gonso/detail" "${GONSO_INCLUDE}/gonso/detail/*.hpp")
foreach(header IN LISTS private)
  get_filename_component(folder "${header}" DIRECTORY)
  file(STRINGS "${GONSO_INCLUDE}/gonso/detail/${header}" includes REGEX "^#include <gonso/")
  foreach(line IN LISTS includes)
    string(REGEX REPLACE "^#include <gonso/([^>]*)>.*" "\\1" target "${line}")
    if(target MATCHES "^detail/([a-z_]+)/")
      set(layer "${CMAKE_MATCH_1}")
      if(folder STREQUAL "")
        continue()  # detail/*.hpp (set_access, fwd) sit beside the layers
      endif()
      if(NOT layer IN_LIST allowed_${folder})
        string(REPLACE ";" ", " may "${allowed_${folder}}")
        list(APPEND failures "detail/${header} includes ${target}: ${folder}/ may use only ${may}")
      endif()
    elseif(target MATCHES "^detail/")
      # set_access.hpp and fwd.hpp: the façade's, not an engine's.
      if(NOT folder STREQUAL "")
        list(APPEND failures "detail/${header} includes ${target}, which belongs to the public façade")
      endif()
    elseif(NOT target IN_LIST leaves)
      string(REPLACE ";" ", " may "${leaves}")
      list(APPEND failures "detail/${header} includes the public ${target}, of which only ${may} may be")
    endif()
  endforeach()
endforeach()

if(failures)
  list(JOIN failures "\n  " text)
  message(FATAL_ERROR "layering broken:\n  ${text}")
endif()
list(LENGTH public npublic)
list(LENGTH private nprivate)
message(STATUS "layering holds: ${npublic} public and ${nprivate} detail headers")
