# Runtime tests: the C API in C, and Python-driven checks of the CLI against the Python runtime on
# tiny-random engine folders (exported once into the gligen-rt cache, $GLIGEN_RT_CACHE or
# ~/.cache/gligen-rt, the same folders the Python suite uses).
set(GLIGEN_RT_TESTS_DIR ${CMAKE_CURRENT_LIST_DIR})
get_filename_component(GLIGEN_REPO_ROOT ${CMAKE_CURRENT_LIST_DIR}/../../.. ABSOLUTE)
set(GLIGEN_TEST_ENV "PYTHONPATH=${GLIGEN_REPO_ROOT}")
if(GLIGEN_SANITIZE)
  # The Python interpreter is not instrumented: preload nothing into it; only the CLI and the C
  # test are sanitized, leak checking included.
  # TBB_ENABLE_SANITIZERS=1: OpenVINO's TBB loads its hwloc binding (libtbbbind) without
  # RTLD_DEEPBIND, which AddressSanitizer refuses (oneTBB's runtime switch for sanitizer builds).
  # lsan.supp: leaks inside oneTBB itself (see the file), never our code.
  list(APPEND GLIGEN_TEST_ENV "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1" "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1"
       "LSAN_OPTIONS=suppressions=${GLIGEN_RT_TESTS_DIR}/lsan.supp"
       "TBB_ENABLE_SANITIZERS=1"
       "GLIGEN_NATIVE_PARITY_BACKENDS=openvino")  # the Release run covers BF16 and ORT; this one checks memory
endif()

add_executable(gligen_c_api_test ${GLIGEN_RT_TESTS_DIR}/c_api_test.c)
target_link_libraries(gligen_c_api_test PRIVATE gligen_rt)
set_target_properties(gligen_c_api_test PROPERTIES LINKER_LANGUAGE CXX)

add_executable(gligen_unit_test ${GLIGEN_RT_TESTS_DIR}/unit_test.cc ${CMAKE_CURRENT_SOURCE_DIR}/src/pages.cc
  $<TARGET_OBJECTS:gligen_host>)
target_include_directories(gligen_unit_test PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
target_compile_options(gligen_unit_test PRIVATE ${GLIGEN_STRICT_FP})
target_link_libraries(gligen_unit_test PRIVATE nlohmann_json::nlohmann_json PNG::PNG OpenSSL::Crypto Threads::Threads)

if(NOT Python3_Interpreter_FOUND)
  message(STATUS "gligen_rt: Python-driven native tests skipped (no Python interpreter)")
  return()
endif()

# Numerics of the host-side code against the Python modules (schedulers, gates, images, specs).
add_test(NAME native_host_math_matches_python
  COMMAND ${Python3_EXECUTABLE} ${GLIGEN_RT_TESTS_DIR}/host_parity.py --unit $<TARGET_FILE:gligen_unit_test>)

if(NOT OpenVINO_FOUND)
  message(STATUS "gligen_rt: end-to-end native tests skipped (no OpenVINO)")
  set_tests_properties(native_host_math_matches_python PROPERTIES ENVIRONMENT "${GLIGEN_TEST_ENV}")
  return()
endif()

add_test(NAME native_engine_folders
  COMMAND ${Python3_EXECUTABLE} ${GLIGEN_RT_TESTS_DIR}/parity.py --export-only)
set_tests_properties(native_engine_folders PROPERTIES FIXTURES_SETUP tiny_engines TIMEOUT 3600)  # exports what the cache lacks

add_test(NAME native_c_api
  COMMAND ${Python3_EXECUTABLE} ${GLIGEN_RT_TESTS_DIR}/parity.py --c-api $<TARGET_FILE:gligen_c_api_test>)
add_test(NAME native_bad_input
  COMMAND ${Python3_EXECUTABLE} ${GLIGEN_RT_TESTS_DIR}/bad_input.py --cli $<TARGET_FILE:gligen-rt-native>)
set(_native_tests native_host_math_matches_python native_c_api native_bad_input)

# Every backend (OpenVINO FP32 and BF16, ORT) on text-box, inpaint-text-image-box (every grounding
# and inpainting input at once) and the shipped tiny model; the backends run the same graphs by
# input name whatever the modality, so the other modalities and the samplers (host code) run on
# OpenVINO FP32 only.
foreach(case text-box inpaint-text-image-box tiny feature-cache)
  add_test(NAME native_parity_${case}
    COMMAND ${Python3_EXECUTABLE} ${GLIGEN_RT_TESTS_DIR}/parity.py --case ${case} --cli $<TARGET_FILE:gligen-rt-native>)
  list(APPEND _native_tests native_parity_${case})
endforeach()
foreach(case text-image-box keypoint hed canny depth normal sem inpaint-text-box inpaint-feature-cache)
  add_test(NAME native_parity_${case}
    COMMAND ${Python3_EXECUTABLE} ${GLIGEN_RT_TESTS_DIR}/parity.py --case ${case} --backends openvino --cli $<TARGET_FILE:gligen-rt-native>)
  list(APPEND _native_tests native_parity_${case})
endforeach()
# The same model built by `gligen-rt build` for every OpenVINO kind: both runtimes load the IR.
add_test(NAME native_parity_built
  COMMAND ${Python3_EXECUTABLE} ${GLIGEN_RT_TESTS_DIR}/parity.py --built --cli $<TARGET_FILE:gligen-rt-native>)
list(APPEND _native_tests native_parity_built)
add_test(NAME native_parity_samplers
  COMMAND ${Python3_EXECUTABLE} ${GLIGEN_RT_TESTS_DIR}/parity.py --case samplers --backends openvino --cli $<TARGET_FILE:gligen-rt-native>)
list(APPEND _native_tests native_parity_samplers)

# Each test compiles an exported graph once and reads the blob at its later loads, Python's and the
# CLI's alike ($GLIGEN_RT_OPENVINO_CACHE; blobs do not depend on the precision hint). One folder per
# test: OpenVINO writes a blob in place, so two processes must never share a folder at once.
foreach(t ${_native_tests})
  set_tests_properties(${t} PROPERTIES ENVIRONMENT
    "${GLIGEN_TEST_ENV};GLIGEN_RT_OPENVINO_CACHE=${CMAKE_BINARY_DIR}/openvino-blobs/${t}")
endforeach()
foreach(t native_c_api native_bad_input native_parity_samplers native_parity_built)
  set_tests_properties(${t} PROPERTIES FIXTURES_REQUIRED tiny_engines)
endforeach()
foreach(case text-box text-image-box keypoint hed canny depth normal sem inpaint-text-box inpaint-text-image-box tiny
             feature-cache inpaint-feature-cache)
  set_tests_properties(native_parity_${case} PROPERTIES FIXTURES_REQUIRED tiny_engines)
endforeach()
