# bench-smoke: `gonso-bench --quick --json` must exit 0 and print one JSON
# object, and nothing else, holding every figure as a number and every
# target with whether it was met. No timing is checked. Usage: cmake -DBENCH=path/to/gonso-bench -P smoke.cmake
execute_process(COMMAND "${BENCH}" --quick --json
  OUTPUT_VARIABLE out
  ERROR_VARIABLE err
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "gonso-bench --quick --json failed (${rc}):\n${err}${out}")
endif()
if(NOT out MATCHES "^{.*}\n$")
  message(FATAL_ERROR "gonso-bench --json printed more than one JSON object:\n${out}")
endif()

set(keys
  floor_setns_net floor_thread floor_fork_net floor_spawn_true floor_unshare_net
  floor_thread_setns_net floor_setns_mnt run_restore_mnt run_norestore_mnt
  floor_setns_net_2threads floor_setns_net_2threads_wall run_restore_net_2callers run_restore_net_2callers_wall
  floor_setns_net_4threads floor_setns_net_4threads_wall run_restore_net_4callers run_restore_net_4callers_wall
  floor_setns_net_8threads floor_setns_net_8threads_wall run_restore_net_8callers run_restore_net_8callers_wall
  run_restore_net run_norestore_net run_restore_net_uts_ipc copy_set
  process_run_net spawn_true_net nsenter_true_net unshare_net
  run_restore_net_1set run_restore_net_10sets run_restore_net_1000sets
  fds_at_1000_sets threads_at_1000_sets idle_cpu_ticks executor_net executor_net_unverified pool_get_net
  scan_namespaces_10000_procs lsns_json_10000_procs)

foreach(key IN LISTS keys)
  string(JSON type ERROR_VARIABLE error TYPE "${out}" "${key}")
  if(error)
    message(FATAL_ERROR "gonso-bench --json: ${error}\n${out}")
  endif()
  if(NOT type STREQUAL "NUMBER")
    message(FATAL_ERROR "gonso-bench --json: ${key} is a ${type}, not a number\n${out}")
  endif()
endforeach()
list(LENGTH keys count)

string(JSON targets ERROR_VARIABLE error LENGTH "${out}" targets)
if(error OR targets EQUAL 0)
  message(FATAL_ERROR "gonso-bench --json: no targets ${error}\n${out}")
endif()
math(EXPR last "${targets} - 1")
foreach(i RANGE ${last})
  string(JSON met_type ERROR_VARIABLE error TYPE "${out}" targets ${i} met)
  if(error OR NOT met_type STREQUAL "BOOLEAN")
    message(FATAL_ERROR "gonso-bench --json: target ${i} has no met flag ${error}\n${out}")
  endif()
endforeach()
message(STATUS "gonso-bench reported all ${count} figures and ${targets} targets")
