# Tests of gligen_bits (tokenizer, noise) against the Python runtime; included after bits.cmake.
# The Python generators import gligen_rt from this checkout, so Python3_EXECUTABLE must be an
# interpreter with the project's dependencies (e.g. -DPython3_EXECUTABLE=$(which python)).
find_package(Python3 COMPONENTS Interpreter)
if(NOT Python3_Interpreter_FOUND)
  message(STATUS "gligen_bits: tokenizer/noise parity tests OFF (no Python interpreter)")
  return()
endif()
set(GLIGEN_BITS_TESTS_DIR ${CMAKE_CURRENT_LIST_DIR})
get_filename_component(GLIGEN_REPO_ROOT ${CMAKE_CURRENT_LIST_DIR}/../../.. ABSOLUTE)

add_executable(gligen_noise_test ${GLIGEN_BITS_TESTS_DIR}/noise_test.cc)
target_link_libraries(gligen_noise_test PRIVATE gligen_bits)
add_test(NAME native_noise_matches_numpy
  COMMAND ${Python3_EXECUTABLE} ${GLIGEN_BITS_TESTS_DIR}/gen_noise_reference.py
          --check $<TARGET_FILE:gligen_noise_test>)

add_executable(gligen_tokenizer_test ${GLIGEN_BITS_TESTS_DIR}/tokenizer_test.cc)
target_link_libraries(gligen_tokenizer_test PRIVATE gligen_bits)
add_test(NAME native_tokenizer_matches_python
  COMMAND ${Python3_EXECUTABLE} ${GLIGEN_BITS_TESTS_DIR}/gen_tokenizer_reference.py
          --check $<TARGET_FILE:gligen_tokenizer_test>)

set_tests_properties(native_noise_matches_numpy native_tokenizer_matches_python PROPERTIES
  ENVIRONMENT "PYTHONPATH=${GLIGEN_REPO_ROOT}"
  SKIP_RETURN_CODE 77)
