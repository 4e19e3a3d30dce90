# CTest package.find_package, run with cmake -P:
#   1. cmake --install the int4q build tree into INT4Q_PREFIX (emptied first);
#   2. configure and build tests/consumer against that prefix with find_package(int4q);
#   3. run the consumer and check that it prints EXPECTED_VERSION;
#   4. with WITH_ONNX=ON: run consumer_onnx (int4q::onnx: quantize, save, reload, execute) and check
#      that it prints "int4q::onnx ok MatMulNBits ...".
# Inputs (-D): INT4Q_BINARY_DIR INT4Q_PREFIX CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR
#              EXPECTED_VERSION, optional CONSUMER_GENERATOR CONSUMER_CXX_COMPILER CONSUMER_CONFIG
#              WITH_ONNX.
cmake_minimum_required(VERSION 3.18)

foreach(_var INT4Q_BINARY_DIR INT4Q_PREFIX CONSUMER_SOURCE_DIR CONSUMER_BINARY_DIR
             EXPECTED_VERSION)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer_test.cmake: -D${_var}=... is required")
  endif()
endforeach()

# Runs one step; stops the test with the step's output when it fails.
function(run_step name)
  message(STATUS "consumer test: ${name}")
  execute_process(COMMAND ${ARGN}
    RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "consumer test: ${name} failed (${_rc})\n${_out}\n${_err}")
  endif()
  set(step_output "${_out}" PARENT_SCOPE)
endfunction()

set(_config_args)
if(CONSUMER_CONFIG)
  set(_config_args --config "${CONSUMER_CONFIG}")
endif()

file(REMOVE_RECURSE "${INT4Q_PREFIX}" "${CONSUMER_BINARY_DIR}")
run_step("install into ${INT4Q_PREFIX}"
  "${CMAKE_COMMAND}" --install "${INT4Q_BINARY_DIR}" --prefix "${INT4Q_PREFIX}" ${_config_args})
if(NOT EXISTS "${INT4Q_PREFIX}/include/int4q/quant.hpp")
  message(FATAL_ERROR "consumer test: ${INT4Q_PREFIX}/include/int4q/quant.hpp was not installed")
endif()

set(_configure_args
  -S "${CONSUMER_SOURCE_DIR}" -B "${CONSUMER_BINARY_DIR}"
  "-DCMAKE_PREFIX_PATH=${INT4Q_PREFIX}"
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  "-DINT4Q_EXPECTED_VERSION=${EXPECTED_VERSION}"
  "-DINT4Q_EXPECTED_PREFIX=${INT4Q_PREFIX}")
if(WITH_ONNX)
  list(APPEND _configure_args -DWITH_ONNX=ON)
endif()
if(CONSUMER_GENERATOR)
  list(APPEND _configure_args -G "${CONSUMER_GENERATOR}")
endif()
if(CONSUMER_CXX_COMPILER)
  list(APPEND _configure_args "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}")
endif()
if(CONSUMER_CONFIG)
  list(APPEND _configure_args "-DCMAKE_BUILD_TYPE=${CONSUMER_CONFIG}")
endif()
run_step("configure the consumer" "${CMAKE_COMMAND}" ${_configure_args})
run_step("build the consumer" "${CMAKE_COMMAND}" --build "${CONSUMER_BINARY_DIR}" ${_config_args})

# The path of consumer executable `name` (multi-config generators: in a folder per config).
function(consumer_exe name out)
  set(_exe "${CONSUMER_BINARY_DIR}/${name}")
  if(NOT EXISTS "${_exe}" AND CONSUMER_CONFIG)
    set(_exe "${CONSUMER_BINARY_DIR}/${CONSUMER_CONFIG}/${name}")
  endif()
  set(${out} "${_exe}" PARENT_SCOPE)
endfunction()

consumer_exe(consumer _exe)
run_step("run the consumer" "${_exe}")
string(STRIP "${step_output}" _printed)
if(NOT _printed STREQUAL EXPECTED_VERSION)
  message(FATAL_ERROR "consumer test: printed '${_printed}', expected '${EXPECTED_VERSION}'")
endif()
message(STATUS "consumer test: find_package(int4q) works, version ${_printed}")

if(WITH_ONNX)
  consumer_exe(consumer_onnx _exe)
  run_step("run consumer_onnx" "${_exe}" "${CONSUMER_BINARY_DIR}/onnx-out")
  string(STRIP "${step_output}" _printed)
  if(NOT _printed MATCHES "^int4q::onnx ok MatMulNBits ")
    message(FATAL_ERROR "consumer test: consumer_onnx printed '${_printed}', expected "
                        "'int4q::onnx ok MatMulNBits <error>'")
  endif()
  message(STATUS "consumer test: find_package(int4q COMPONENTS onnx) works: ${_printed}")
endif()
