# fuzz.seeds_fresh: runs MAKE_SEEDS into OUT and compares every file with SEEDS (the committed
# tests/fuzz/seeds/). On a difference: regenerate with `int4q_fuzz_make_seeds tests/fuzz/seeds`.
file(REMOVE_RECURSE "${OUT}")
execute_process(COMMAND "${MAKE_SEEDS}" "${OUT}" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${MAKE_SEEDS} ${OUT} failed (${rc})")
endif()
file(GLOB_RECURSE made RELATIVE "${OUT}" "${OUT}/*")
file(GLOB_RECURSE committed RELATIVE "${SEEDS}" "${SEEDS}/*")
list(SORT made)
list(SORT committed)
if(NOT made STREQUAL committed)
  message(FATAL_ERROR "tests/fuzz/seeds/ holds [${committed}] but the generator writes [${made}]: "
                      "regenerate with `int4q_fuzz_make_seeds tests/fuzz/seeds`")
endif()
foreach(f IN LISTS made)
  execute_process(COMMAND "${CMAKE_COMMAND}" -E compare_files "${OUT}/${f}" "${SEEDS}/${f}"
                  RESULT_VARIABLE diff)
  if(NOT diff EQUAL 0)
    message(FATAL_ERROR "tests/fuzz/seeds/${f} is stale: regenerate with "
                        "`int4q_fuzz_make_seeds tests/fuzz/seeds`")
  endif()
endforeach()
message(STATUS "${SEEDS}: ${made}")
