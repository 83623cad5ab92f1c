# ctest consumer_pkg_config: install attn from the build tree into a prefix
# of this test's own, then compile tests/consumer/main.cpp with nothing but
# the compiler and `pkg-config --cflags attn` (no CMake on the consumer's
# side), and run it. Prints "SKIPPED: ..." (ctest reports the test skipped)
# when pkg-config is not installed.
#
# Inputs (-D): ATTN_BUILD_DIR, ATTN_SOURCE_DIR, ATTN_WORK_DIR, ATTN_CXX.
cmake_minimum_required(VERSION 3.16)

foreach(var ATTN_BUILD_DIR ATTN_SOURCE_DIR ATTN_WORK_DIR ATTN_CXX)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "pkg_config.cmake: -D${var}=... is required")
  endif()
endforeach()

find_program(pkg_config NAMES pkg-config pkgconf)
if(NOT pkg_config)
  message("SKIPPED: pkg-config not found (on Debian/Ubuntu: apt-get install pkg-config); "
          "attn.pc was not checked")
  return()
endif()

set(prefix "${ATTN_WORK_DIR}/prefix")
file(REMOVE_RECURSE "${ATTN_WORK_DIR}")
file(MAKE_DIRECTORY "${ATTN_WORK_DIR}")

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGV}")
    message(FATAL_ERROR "failed (${rc}): ${cmd}")
  endif()
endfunction()

run("${CMAKE_COMMAND}" --install "${ATTN_BUILD_DIR}" --prefix "${prefix}")

# attn.pc is found through PKG_CONFIG_PATH (it is in <prefix>/share/pkgconfig)
# and brings Eigen's flags through its Requires: eigen3.
set(ENV{PKG_CONFIG_PATH} "${prefix}/share/pkgconfig")
execute_process(COMMAND "${pkg_config}" --cflags attn
  RESULT_VARIABLE rc OUTPUT_VARIABLE cflags ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "pkg-config --cflags attn failed (${rc}): ${err}")
endif()
message(STATUS "pkg-config --cflags attn: ${cflags}")
separate_arguments(flags UNIX_COMMAND "${cflags}")

# The source is copied out of the source tree so that nothing but the
# installed headers can be found through a relative include.
configure_file("${ATTN_SOURCE_DIR}/tests/consumer/main.cpp" "${ATTN_WORK_DIR}/main.cpp" COPYONLY)
set(exe "${ATTN_WORK_DIR}/consumer_pkg_config")
run("${ATTN_CXX}" -std=c++17 -O1 -Wall -Wextra -Wpedantic -Werror ${flags}
    "${ATTN_WORK_DIR}/main.cpp" -o "${exe}")
run("${exe}")
