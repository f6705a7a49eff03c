# Run with cmake -P (registered as the CTest test "consumer_find_package").
#
# 1. cmake --install <REDKNOT_BUILD_DIR> --prefix <WORK_DIR>/prefix
# 2. configure + build tests/consumer against it (CMAKE_PREFIX_PATH=prefix)
# 3. run both consumers (redknot::core; redknot::headers alone) and check that each prints EXPECTED_VERSION
#
# Inputs (-D): REDKNOT_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR
#   optional: CONFIG GENERATOR CXX_COMPILER CXX_COMPILER_LAUNCHER EXPECTED_VERSION
cmake_minimum_required(VERSION 3.25)

foreach(_var REDKNOT_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${_var}=... is required")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()

set(_prefix "${WORK_DIR}/prefix")
set(_build "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(_step what)
  message(STATUS "consumer: ${what}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    message("${_out}")
    message(FATAL_ERROR "consumer: '${what}' failed (exit ${_rc})")
  endif()
endfunction()

_step("install redknot into ${_prefix}"
  "${CMAKE_COMMAND}" --install "${REDKNOT_BUILD_DIR}" --prefix "${_prefix}" --config "${CONFIG}")

set(_configure_args
  -S "${CONSUMER_SOURCE_DIR}" -B "${_build}"
  "-DCMAKE_PREFIX_PATH=${_prefix}"
  "-DCMAKE_BUILD_TYPE=${CONFIG}")
if(GENERATOR)
  list(APPEND _configure_args -G "${GENERATOR}")
endif()
if(CXX_COMPILER)
  list(APPEND _configure_args "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(CXX_COMPILER_LAUNCHER)
  list(APPEND _configure_args "-DCMAKE_CXX_COMPILER_LAUNCHER=${CXX_COMPILER_LAUNCHER}")
endif()
_step("configure consumer" "${CMAKE_COMMAND}" ${_configure_args})
_step("build consumer" "${CMAKE_COMMAND}" --build "${_build}" --config "${CONFIG}")

# Runs the consumer program <name> and checks that it printed EXPECTED_VERSION.
function(_run_consumer name)
  set(_exe "")
  foreach(_candidate "${_build}/${name}" "${_build}/${CONFIG}/${name}"
                     "${_build}/${name}.exe" "${_build}/${CONFIG}/${name}.exe")
    if(EXISTS "${_candidate}")
      set(_exe "${_candidate}")
      break()
    endif()
  endforeach()
  if(NOT _exe)
    message(FATAL_ERROR "consumer: built, but ${name} was not found under ${_build}")
  endif()

  execute_process(COMMAND "${_exe}" RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  message(STATUS "${name} printed: ${_out}${_err}")
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "consumer: ${name} exited with ${_rc}")
  endif()
  string(FIND "${_out}" "${EXPECTED_VERSION}" _pos)
  if(EXPECTED_VERSION AND _pos EQUAL -1)
    message(FATAL_ERROR "consumer: expected ${name} to print redknot::version_string() containing "
                        "'${EXPECTED_VERSION}' (the CMake project version)")
  endif()
endfunction()

_run_consumer(redknot_consumer)          # redknot::core
_run_consumer(redknot_consumer_headers)  # redknot::headers alone
message(STATUS "consumer: OK")
