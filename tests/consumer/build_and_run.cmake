# ctest consumer_add_subdirectory and compiler_*: configure
# tests/consumer/subdirectory (attn through add_subdirectory) with a given
# compiler, language standard and program, build it, run it.
#
# Inputs (-D):
#   ATTN_SOURCE_DIR    attn's source tree
#   ATTN_WORK_DIR      a directory of its own for this test (emptied first)
#   ATTN_CXX           the C++ compiler: a path, or a name looked up on PATH
#                      (clang++, g++); when it is not found the test prints
#                      "SKIPPED: ..." and ctest reports it skipped
#   ATTN_CXX_STANDARD  17, 20, ... (CMAKE_CXX_STANDARD, extensions off)
#   ATTN_PROGRAM       the consumer's one source file
#   ATTN_FLAGS         extra compile options, space-separated (optional)
#   ATTN_GENERATOR, ATTN_BUILD_TYPE, Eigen3_DIR   as the parent build (optional)
cmake_minimum_required(VERSION 3.16)

foreach(var ATTN_SOURCE_DIR ATTN_WORK_DIR ATTN_CXX ATTN_CXX_STANDARD ATTN_PROGRAM)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "build_and_run.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT ATTN_BUILD_TYPE)
  set(ATTN_BUILD_TYPE Release)
endif()

if(IS_ABSOLUTE "${ATTN_CXX}")
  set(cxx "${ATTN_CXX}")
else()
  find_program(cxx NAMES "${ATTN_CXX}")
endif()
if(NOT cxx OR NOT EXISTS "${cxx}")
  # Matched by the test's SKIP_REGULAR_EXPRESSION.
  message("SKIPPED: ${ATTN_CXX} not found on PATH (on Debian/Ubuntu: apt-get install "
          "clang for clang++, g++ for g++); this compiler check did not run")
  return()
endif()

set(build "${ATTN_WORK_DIR}/build")
file(REMOVE_RECURSE "${build}")

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGV}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}")
  endif()
endfunction()

set(args -S "${ATTN_SOURCE_DIR}/tests/consumer/subdirectory" -B "${build}"
  "-DATTN_SOURCE_DIR=${ATTN_SOURCE_DIR}"
  "-DATTN_CONSUMER_SOURCE=${ATTN_PROGRAM}"
  "-DATTN_CONSUMER_FLAGS=${ATTN_FLAGS}"
  "-DCMAKE_CXX_COMPILER=${cxx}"
  "-DCMAKE_CXX_STANDARD=${ATTN_CXX_STANDARD}"
  -DCMAKE_CXX_STANDARD_REQUIRED=ON
  -DCMAKE_CXX_EXTENSIONS=OFF
  "-DCMAKE_BUILD_TYPE=${ATTN_BUILD_TYPE}"
  # These checks are about the compiler, the language standard and the
  # packaging, not the optimiser (the main builds run -O2 and -O3): -O1
  # keeps the flow-based warnings (-Wmaybe-uninitialized) and compiles the
  # whole API faster than CMake's -O3 (all_families.cpp, C++20: g++ 12
  # 38 -> 19 s, clang++ 14 -march=native 50 -> 37 s, Zen 3).
  "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG")
if(ATTN_GENERATOR)
  list(APPEND args -G "${ATTN_GENERATOR}")
endif()
if(Eigen3_DIR)
  list(APPEND args "-DEigen3_DIR=${Eigen3_DIR}")
endif()
message(STATUS "${cxx}, C++${ATTN_CXX_STANDARD} ${ATTN_FLAGS}: ${ATTN_PROGRAM}")
run("${CMAKE_COMMAND}" ${args})
run("${CMAKE_COMMAND}" --build "${build}" --config "${ATTN_BUILD_TYPE}")

find_program(consumer_exe NAMES consumer PATHS "${build}" "${build}/${ATTN_BUILD_TYPE}"
  NO_DEFAULT_PATH)
if(NOT consumer_exe)
  message(FATAL_ERROR "built executable not found under ${build}")
endif()
run("${consumer_exe}")
