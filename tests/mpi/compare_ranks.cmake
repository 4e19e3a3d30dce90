# ctest mpi.*: `int4q quantize` alone and under `mpiexec -np NP` with the same arguments must
# write byte-identical models (the .onnx and, when there is one, its .data), and under mpiexec
# only rank 0 writes (no other file appears in WORK).
#
#   cmake -D INT4Q=... -D MPIEXEC=... -D NP=2 -D WORK=DIR -D "ARGS=IN.onnx;--calib;...;--method;gptq"
#         [-D "GEN=generator;args..."] -P compare_ranks.cmake
#
# GEN (optional) runs first, in WORK (it makes the model and its calibration data).
file(REMOVE_RECURSE "${WORK}")
file(MAKE_DIRECTORY "${WORK}/one" "${WORK}/ranks")
if(GEN)
  execute_process(COMMAND ${GEN} WORKING_DIRECTORY "${WORK}" RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "generator failed (${rc}): ${GEN}")
  endif()
endif()
execute_process(COMMAND "${INT4Q}" quantize ${ARGS} -o "${WORK}/one/out.onnx" -q
                WORKING_DIRECTORY "${WORK}" RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "int4q alone failed (${rc}): ${err}")
endif()
# --oversubscribe: more ranks than cores; --allow-run-as-root: CI runs as root (OpenMPI refuses
# root without it).
execute_process(COMMAND "${MPIEXEC}" --allow-run-as-root --oversubscribe -np ${NP} "${INT4Q}"
                        quantize ${ARGS} -o "${WORK}/ranks/out.onnx" -q
                WORKING_DIRECTORY "${WORK}" RESULT_VARIABLE rc OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mpiexec -np ${NP} int4q failed (${rc}): ${out} ${err}")
endif()
file(GLOB one RELATIVE "${WORK}/one" "${WORK}/one/*")
file(GLOB ranks RELATIVE "${WORK}/ranks" "${WORK}/ranks/*")
if(NOT one STREQUAL ranks)
  message(FATAL_ERROR "files differ: alone '${one}', ${NP} ranks '${ranks}'")
endif()
foreach(f IN LISTS one)
  file(SHA256 "${WORK}/one/${f}" a)
  file(SHA256 "${WORK}/ranks/${f}" b)
  if(NOT a STREQUAL b)
    message(FATAL_ERROR "${f}: ${NP} ranks wrote other bytes than one process")
  endif()
  message(STATUS "${f}: identical (${a})")
endforeach()
file(REMOVE_RECURSE "${WORK}")
