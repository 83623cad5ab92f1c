# Runs PROGRAM with ARG and passes when it fails (it aborts) after printing
# MESSAGE: ctest itself counts a signal as a failure whatever the output.
execute_process(COMMAND ${PROGRAM} ${ARG} RESULT_VARIABLE status OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
if(status EQUAL 0)
  message(FATAL_ERROR "expected ${PROGRAM} ${ARG} to abort; it exited 0")
endif()
string(FIND "${out}${err}" "${MESSAGE}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "the output lacks \"${MESSAGE}\":\n${out}${err}")
endif()
message(STATUS "aborted (${status}) with: ${err}")
