# Runs watchdog_helper under mpirun and expects the watchdog to end the job: a failing exit
# status (86) and, on stderr, the report naming the world rank, the collective and its group.
#   cmake -DLAUNCH="mpirun -np 2 --oversubscribe" -DHELPER=... -DMODE=world|group -P check_watchdog.cmake
separate_arguments(launch UNIX_COMMAND "${LAUNCH}")
execute_process(COMMAND ${launch} ${HELPER} ${MODE} 1000
  RESULT_VARIABLE status OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 120)
message(STATUS "exit status: ${status}\nstdout:\n${out}\nstderr:\n${err}")
# mpirun exits with the code the aborting rank gave MPI_Abort: kWatchdogExitCode (watchdog.h).
if(NOT status EQUAL 86)
  message(FATAL_ERROR "expected the watchdog's exit status 86, got ${status}")
endif()
if(MODE STREQUAL "world")
  set(expected "kiln watchdog: world rank 0: all_reduce #1 (sum, 1024 x f32) on group 'world' (rank 0 of 2, mpi) did not finish within 1000 ms")
else()
  set(expected "kiln watchdog: world rank 0: all_gather #1 (256 x f32) on group 'pipeline' (rank 1 of 2, mpi) did not finish within 1000 ms")
endif()
string(FIND "${err}" "${expected}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "the watchdog's report is missing from stderr; expected:\n${expected}")
endif()
string(FIND "${err}${out}" "was not stopped by the watchdog" survived)
if(NOT survived EQUAL -1)
  message(FATAL_ERROR "a rank ran past the hung collective")
endif()
