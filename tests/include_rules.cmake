# tests/include_rules.cmake: the arrows of docs/design.md section 2.5 that a
# grep can check. A core header includes only other core headers: the core
# knows nothing of the library above it (run with -DROOT=<source dir>).
file(GLOB core_headers ${ROOT}/include/attn/core/*.hpp)
set(violations "")
foreach(header IN LISTS core_headers)
  file(STRINGS ${header} includes REGEX "^#include [\"<]attn/")
  foreach(line IN LISTS includes)
    if(NOT line MATCHES "^#include [\"<]attn/core/")
      file(RELATIVE_PATH rel ${ROOT} ${header})
      string(APPEND violations "\n  ${rel}: ${line}")
    endif()
  endforeach()
endforeach()
if(violations)
  message(FATAL_ERROR "core headers include headers above the core:${violations}")
endif()
