# ctest consumer_find_package: install attn from the build tree into a
# prefix inside it, then configure, build and run tests/consumer against that
# prefix with find_package(attn CONFIG REQUIRED). Also checks attn.pc when
# pkg-config is available.
#
# Inputs (-D): ATTN_BUILD_DIR, ATTN_CONSUMER_SOURCE, ATTN_WORK_DIR,
#              ATTN_GENERATOR, ATTN_CXX_COMPILER, ATTN_BUILD_TYPE, Eigen3_DIR.
cmake_minimum_required(VERSION 3.16)

foreach(var ATTN_BUILD_DIR ATTN_CONSUMER_SOURCE ATTN_WORK_DIR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT ATTN_BUILD_TYPE)
  set(ATTN_BUILD_TYPE Release)
endif()

set(prefix "${ATTN_WORK_DIR}/prefix")
set(build "${ATTN_WORK_DIR}/build")
file(REMOVE_RECURSE "${prefix}" "${build}")

function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " cmd "${ARGV}")
    message(FATAL_ERROR "consumer check failed (${rc}): ${cmd}")
  endif()
endfunction()

# 1. Install (headers + CMake package + attn.pc; nothing is compiled).
run("${CMAKE_COMMAND}" --install "${ATTN_BUILD_DIR}" --prefix "${prefix}")

# 2. Configure the consumer against the prefix only.
set(args -S "${ATTN_CONSUMER_SOURCE}" -B "${build}"
  "-DCMAKE_PREFIX_PATH=${prefix}"
  "-DCMAKE_BUILD_TYPE=${ATTN_BUILD_TYPE}")
if(ATTN_GENERATOR)
  list(APPEND args -G "${ATTN_GENERATOR}")
endif()
if(ATTN_CXX_COMPILER)
  list(APPEND args "-DCMAKE_CXX_COMPILER=${ATTN_CXX_COMPILER}")
endif()
if(Eigen3_DIR)
  list(APPEND args "-DEigen3_DIR=${Eigen3_DIR}")
endif()
run("${CMAKE_COMMAND}" ${args})

# 3. Build and run.
run("${CMAKE_COMMAND}" --build "${build}" --config "${ATTN_BUILD_TYPE}")
find_program(consumer_exe NAMES consumer PATHS "${build}" "${build}/${ATTN_BUILD_TYPE}"
  NO_DEFAULT_PATH)
if(NOT consumer_exe)
  message(FATAL_ERROR "consumer check: built executable not found under ${build}")
endif()
run("${consumer_exe}")

# 4. pkg-config file, when pkg-config exists: must name the installed headers.
find_program(PKG_CONFIG_EXECUTABLE NAMES pkg-config pkgconf)
if(PKG_CONFIG_EXECUTABLE)
  set(ENV{PKG_CONFIG_PATH} "${prefix}/share/pkgconfig")
  execute_process(COMMAND "${PKG_CONFIG_EXECUTABLE}" --cflags attn
    RESULT_VARIABLE rc OUTPUT_VARIABLE cflags ERROR_VARIABLE err
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  get_filename_component(want "${prefix}/include" REALPATH)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "pkg-config --cflags attn failed: ${err}")
  endif()
  set(found FALSE)
  separate_arguments(flags UNIX_COMMAND "${cflags}")
  foreach(f IN LISTS flags)
    if(f MATCHES "^-I(.*)$")
      get_filename_component(dir "${CMAKE_MATCH_1}" REALPATH)
      if(dir STREQUAL want AND EXISTS "${dir}/attn/attn.hpp")
        set(found TRUE)
      endif()
    endif()
  endforeach()
  if(NOT found)
    message(FATAL_ERROR "pkg-config --cflags attn = '${cflags}' does not name ${want}")
  endif()
  message(STATUS "pkg-config --cflags attn: ${cflags}")
else()
  message(STATUS "pkg-config not found; attn.pc not checked")
endif()
