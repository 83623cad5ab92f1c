# attn_private_object(NAME SOURCE OUT_VAR KEEP pattern... [DEFINITIONS ...]
#                     [OPTIONS ...])
#
# Compiles SOURCE (linking attn::attn) into an object whose only global
# symbols are those matching the KEEP wildcards: the object is linked on its
# own (ld -r), every other symbol it defines made local — the standard
# library's inline functions included, which libstdc++ keeps at default
# visibility whatever -fvisibility says — and the COMDAT groups dropped
# (objcopy). Used for code compiled with other -march flags than
# the program it joins (attn::dispatch's levels, tests/test_dispatch.cpp's
# references): otherwise the linker keeps one copy of each inline function
# for every object, and a baseline caller could run a copy built for
# AVX-512. OUT_VAR receives the path of the object, to add to a target's
# sources.
function(attn_private_object name source out_var)
  cmake_parse_arguments(PARSE_ARGV 3 arg "" "" "KEEP;DEFINITIONS;OPTIONS")
  set(keep)
  foreach(pattern IN LISTS arg_KEEP)
    list(APPEND keep --keep-global-symbol=${pattern})
  endforeach()
  find_program(ATTN_OBJCOPY NAMES objcopy ${CMAKE_OBJCOPY})
  if(NOT ATTN_OBJCOPY OR NOT CMAKE_LINKER)
    message(FATAL_ERROR "attn: ${name} needs ld and objcopy (binutils)")
  endif()
  add_library(${name} OBJECT ${source})
  target_link_libraries(${name} PRIVATE attn::attn)
  target_compile_definitions(${name} PRIVATE ${arg_DEFINITIONS})
  target_compile_options(${name} PRIVATE -fvisibility=hidden -fvisibility-inlines-hidden
                         ${arg_OPTIONS})
  if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
    # Static locals of inline functions are otherwise STB_GNU_UNIQUE, which
    # ignores -fvisibility and stays global.
    target_compile_options(${name} PRIVATE -fno-gnu-unique)
  endif()
  set_target_properties(${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  set(private ${CMAKE_CURRENT_BINARY_DIR}/${name}_private.o)
  add_custom_command(OUTPUT ${private}
    COMMAND ${CMAKE_LINKER} -r -o ${private} $<TARGET_OBJECTS:${name}>
    COMMAND ${ATTN_OBJCOPY} --wildcard ${keep} --remove-section=.group ${private}
    DEPENDS ${name} $<TARGET_OBJECTS:${name}>
    COMMAND_EXPAND_LISTS
    COMMENT "attn: ${name}, private symbols")
  set_source_files_properties(${private} PROPERTIES EXTERNAL_OBJECT ON GENERATED ON)
  set(${out_var} ${private} PARENT_SCOPE)
endfunction()
